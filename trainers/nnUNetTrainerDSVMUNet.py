"""DSVM-UNet trainers: VM-UNet trained with dual self-distillation; one name for 2d and 3d_fullres.

Inference is plain VM-UNet: nnUNetv2_predict builds the same network as for nnUNetTrainerVMUNet.
"""
from nnunet_mamba.distillation.dual_self_distillation import ENCODER_PROGRESSIVE_STUDENT_SIDE
from nnunet_mamba.training import DualSelfDistillationTrainer, PaperProtocol, QuickCPURun


class nnUNetTrainerDSVMUNet(DualSelfDistillationTrainer):
    """nnU-Net protocol + the paper's 1.0 projection + 0.5 progressive self-distillation (its encoder direction)."""

    network_name = "vm_unet"


class nnUNetTrainerDSVMUNetProjOnly(nnUNetTrainerDSVMUNet):
    """The paper's Table 3 ablation: projection self-distillation only (nnU-Net protocol)."""

    distillation_beta = 0.0


class nnUNetTrainerDSVMUNetProgOnly(nnUNetTrainerDSVMUNet):
    """The paper's Table 3 ablation: progressive self-distillation only (nnU-Net protocol)."""

    distillation_alpha = 0.0


class nnUNetTrainerDSVMUNetNoMamba(nnUNetTrainerDSVMUNet):
    """Ours (ablation): DSVM-UNet's training of VM-UNet without its selective scan; takes VM-UNet's plans."""

    network_name = "vm_unet_no_mamba"


class nnUNetTrainerDSVMUNetQuick(QuickCPURun, nnUNetTrainerDSVMUNet):
    """Ours: the minutes-long CPU run of nnUNetTrainerVMUNetQuick, with dual self-distillation."""


class nnUNetTrainerDSVMUNetPaper(PaperProtocol, nnUNetTrainerDSVMUNet):
    """VM-UNet's official protocol (see nnUNetTrainerVMUNetPaper) + the paper's distillation, alpha 1, beta 0.5."""


class nnUNetTrainerDSVMUNetStudentSideProgressive(nnUNetTrainerDSVMUNet):
    """Ours: the encoder progressive term with a learned head on the shallower student (our earlier default)."""

    encoder_progressive = ENCODER_PROGRESSIVE_STUDENT_SIDE


class nnUNetTrainerDSVMUNetAttachedTeachers(nnUNetTrainerDSVMUNet):
    """Ours (ablation; the paper is silent): teacher features not detached, so the terms also move the teachers."""

    detach_distillation_teachers = False
