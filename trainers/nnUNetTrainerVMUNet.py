"""VM-UNet trainers: one name for 2d and 3d_fullres, the plan decides."""
from nnunet_mamba.training import MambaTrainerBase, PaperProtocol, QuickCPURun


class nnUNetTrainerVMUNet(MambaTrainerBase):
    """VM-UNet with nnU-Net's loss, deep supervision and augmentation; AdamW 1e-3, cosine to 1e-5."""

    network_name = "vm_unet"


class nnUNetTrainerVMUNetQuick(QuickCPURun, nnUNetTrainerVMUNet):
    """A minutes-long CPU run for the demo and tests (C = 32, 6 epochs of 25 iterations, no mirroring)."""


class nnUNetTrainerVMUNetPaper(PaperProtocol, nnUNetTrainerVMUNet):
    """VM-UNet's own protocol: BceDice, no deep supervision, no clipping, CosineAnnealingLR T_max 50."""
