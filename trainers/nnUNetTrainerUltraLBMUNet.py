"""UltraLBM-UNet trainers: the teacher, the -T student alone and the -T student with hybrid distillation.

One name each for 2d and 3d_fullres, the plan decides. The optimisation is the paper's (UltraLBMProtocol in
nnunet_mamba.training.paper_protocol); the distillation and the teacher lookup live in
nnunet_mamba.training.hybrid_distillation. Train the teacher first, then the student of the same fold:

    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerUltraLBMUNet
    NNUNET_MAMBA_TEACHER=$nnUNet_results/DatasetXXX_Name/nnUNetTrainerUltraLBMUNet__nnUNetPlans__2d \\
        nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerUltraLBMUNetT
"""
from nnunet_mamba.training import HybridDistillationTrainer, MambaTrainerBase, QuickCPURun, UltraLBMProtocol


class nnUNetTrainerUltraLBMUNet(UltraLBMProtocol, MambaTrainerBase):
    """UltraLBM-UNet (34,175 parameters with two classes), trained alone: the teacher of the -T student."""

    network_name = "ultralbm_unet"


class nnUNetTrainerUltraLBMUNetTNoKD(UltraLBMProtocol, MambaTrainerBase):
    """UltraLBM-UNet-T (half the widths) trained alone: the paper's "w/o Distill" ablation."""

    network_name = "ultralbm_unet_t"


class nnUNetTrainerUltraLBMUNetT(UltraLBMProtocol, HybridDistillationTrainer):
    """UltraLBM-UNet-T distilled from the teacher in NNUNET_MAMBA_TEACHER (0.5 DKD + 0.2 AT + 0.3 grad)."""

    network_name = "ultralbm_unet_t"


class nnUNetTrainerUltraLBMUNetQuick(QuickCPURun, nnUNetTrainerUltraLBMUNet):
    """A minutes-long CPU run of the teacher (6 epochs of 25 iterations, lr 2e-3)."""


class nnUNetTrainerUltraLBMUNetTNoKDQuick(QuickCPURun, nnUNetTrainerUltraLBMUNetTNoKD):
    """A minutes-long CPU run of the student alone."""


class nnUNetTrainerUltraLBMUNetTQuick(QuickCPURun, nnUNetTrainerUltraLBMUNetT):
    """A minutes-long CPU run of the distilled student (the teacher: a Quick teacher run of the same fold)."""
