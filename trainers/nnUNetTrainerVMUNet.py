"""VM-UNet trainers: one name for 2d and 3d_fullres, the plan decides."""
from nnunet_mamba.training import MambaTrainerBase, PaperProtocol, QuickCPURun


class nnUNetTrainerVMUNet(MambaTrainerBase):
    """nnU-Net protocol (loss, deep supervision, augmentation) with VM-UNet's AdamW 1e-3; ours: cosine to 1e-5."""

    network_name = "vm_unet"


class nnUNetTrainerVMUNetQuick(QuickCPURun, nnUNetTrainerVMUNet):
    """Ours: a minutes-long CPU run for the demo and tests (C = 32, 6 epochs of 25 iterations, no mirroring)."""


class nnUNetTrainerVMUNetPaper(PaperProtocol, nnUNetTrainerVMUNet):
    """Official protocol of VM-UNet's code: BceDice, no deep supervision, no clipping, CosineAnnealingLR T_max 50."""


class nnUNetTrainerVMUNetNoMamba(nnUNetTrainerVMUNet):
    """Ours (ablation): VM-UNet without its selective scan, all else equal; takes VM-UNet's plans."""

    network_name = "vm_unet_no_mamba"


class nnUNetTrainerVMUNetNoMambaQuick(QuickCPURun, nnUNetTrainerVMUNetNoMamba):
    """Ours: the minutes-long CPU run of nnUNetTrainerVMUNetQuick, without the selective scan."""
