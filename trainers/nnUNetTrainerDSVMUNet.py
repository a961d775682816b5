"""DSVM-UNet trainers: VM-UNet trained with dual self-distillation; one name for 2d and 3d_fullres.

Inference is plain VM-UNet: nnUNetv2_predict builds the same network as for nnUNetTrainerVMUNet.
"""
from nnunet_mamba.training import DualSelfDistillationTrainer, PaperProtocol, QuickCPURun


class nnUNetTrainerDSVMUNet(DualSelfDistillationTrainer):
    """Segmentation loss + 1.0 * projection + 0.5 * progressive self-distillation (the paper's setting)."""

    network_name = "vm_unet"


class nnUNetTrainerDSVMUNetProjOnly(nnUNetTrainerDSVMUNet):
    """Ablation (Table 3): projection self-distillation only."""

    distillation_beta = 0.0


class nnUNetTrainerDSVMUNetProgOnly(nnUNetTrainerDSVMUNet):
    """Ablation (Table 3): progressive self-distillation only."""

    distillation_alpha = 0.0


class nnUNetTrainerDSVMUNetQuick(QuickCPURun, nnUNetTrainerDSVMUNet):
    """The minutes-long CPU run of nnUNetTrainerVMUNetQuick, with dual self-distillation."""


class nnUNetTrainerDSVMUNetPaper(PaperProtocol, nnUNetTrainerDSVMUNet):
    """DSVM-UNet with the papers' protocol (see nnUNetTrainerVMUNetPaper) plus alpha 1, beta 0.5."""
