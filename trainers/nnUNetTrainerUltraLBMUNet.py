"""UltraLBM-UNet trainers: the teacher, the -T student alone and the -T student with hybrid distillation.

One name each for 2d and 3d_fullres, the plan decides. The optimisation is the official code's (UltraLBMProtocol in
nnunet_mamba.training.protocols: AdamW, periodic cosine, 300 epochs, float32); loss, augmentation and epochs
are nnU-Net's. The distillation and the teacher lookup live in nnunet_mamba.training.hybrid_distillation. Train
the teacher first, then the student of the same fold:

    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerUltraLBMUNet
    NNUNET_MAMBA_TEACHER=$nnUNet_results/DatasetXXX_Name/nnUNetTrainerUltraLBMUNet__nnUNetPlans__2d \\
        nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerUltraLBMUNetT

Two reversed passes of GLMBP's shared Mamba: the default trainers flip the token sequence (the paper's Eq. 3,
bidirectional); the ``...ChannelFlip`` trainers flip the channel axis, forward-only, as the official code does
(the registered variants ``ultralbm_unet_channel_flip`` and ``ultralbm_unet_t_channel_flip``).
"""
from nnunet_mamba.training import HybridDistillationTrainer, MambaTrainerBase, QuickCPURun, UltraLBMProtocol


class nnUNetTrainerUltraLBMUNet(UltraLBMProtocol, MambaTrainerBase):
    """Official optimisation in float32, nnU-Net loss/data: UltraLBM-UNet with the paper's token flip; a teacher."""

    network_name = "ultralbm_unet"


class nnUNetTrainerUltraLBMUNetChannelFlip(nnUNetTrainerUltraLBMUNet):
    """Official optimisation and network: UltraLBM-UNet with the code's channel flip; teacher of ...TChannelFlip."""

    network_name = "ultralbm_unet_channel_flip"


class nnUNetTrainerUltraLBMUNetAMP(nnUNetTrainerUltraLBMUNet):
    """Ours: UltraLBM-UNet (token flip) under nnU-Net's mixed precision (the scan stays float32)."""

    autocast_network = True


class nnUNetTrainerUltraLBMUNetTNoKD(UltraLBMProtocol, MambaTrainerBase):
    """Official optimisation, float32: UltraLBM-UNet-T (token flip) alone, the paper's "w/o Distill" ablation."""

    network_name = "ultralbm_unet_t"


class nnUNetTrainerUltraLBMUNetTNoKDChannelFlip(nnUNetTrainerUltraLBMUNetTNoKD):
    """Official optimisation and network: UltraLBM-UNet-T alone with the code's forward-only channel flip."""

    network_name = "ultralbm_unet_t_channel_flip"


class nnUNetTrainerUltraLBMUNetTNoKDAMP(nnUNetTrainerUltraLBMUNetTNoKD):
    """Ours: UltraLBM-UNet-T (token flip) trained alone under nnU-Net's mixed precision."""

    autocast_network = True


class nnUNetTrainerUltraLBMUNetT(UltraLBMProtocol, HybridDistillationTrainer):
    """Official distillation terms and clamp, float32: UltraLBM-UNet-T (token flip) from NNUNET_MAMBA_TEACHER."""

    network_name = "ultralbm_unet_t"


class nnUNetTrainerUltraLBMUNetTChannelFlip(nnUNetTrainerUltraLBMUNetT):
    """Official distillation and network: UltraLBM-UNet-T, channel flip (teacher: ...UltraLBMUNetChannelFlip)."""

    network_name = "ultralbm_unet_t_channel_flip"


class nnUNetTrainerUltraLBMUNetTAMP(nnUNetTrainerUltraLBMUNetT):
    """Ours: the distilled UltraLBM-UNet-T under nnU-Net's mixed precision (the teacher's forward too)."""

    autocast_network = True


class nnUNetTrainerUltraLBMUNetNoMamba(nnUNetTrainerUltraLBMUNet):
    """Ours (ablation): UltraLBM-UNet without the selective scan of its GLMBP blocks; takes UltraLBM-UNet's plans."""

    network_name = "ultralbm_unet_no_mamba"


class nnUNetTrainerUltraLBMUNetTNoKDNoMamba(nnUNetTrainerUltraLBMUNetTNoKD):
    """Ours (ablation): UltraLBM-UNet-T alone, without the selective scan of its GLMBP blocks."""

    network_name = "ultralbm_unet_t_no_mamba"


class nnUNetTrainerUltraLBMUNetQuick(QuickCPURun, nnUNetTrainerUltraLBMUNet):
    """Ours: a minutes-long CPU run of the teacher (6 epochs of 25 iterations, lr 2e-3)."""


class nnUNetTrainerUltraLBMUNetTNoKDQuick(QuickCPURun, nnUNetTrainerUltraLBMUNetTNoKD):
    """Ours: a minutes-long CPU run of the student alone."""


class nnUNetTrainerUltraLBMUNetTQuick(QuickCPURun, nnUNetTrainerUltraLBMUNetT):
    """Ours: a minutes-long CPU run of the distilled student (the teacher: a Quick teacher run of the same fold)."""


class nnUNetTrainerUltraLBMUNetNoMambaQuick(QuickCPURun, nnUNetTrainerUltraLBMUNetNoMamba):
    """Ours: a minutes-long CPU run of the teacher without the selective scan."""
