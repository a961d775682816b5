"""Swin-UMamba and Swin-UMamba-dagger trainers: one name each for 2d and 3d_fullres, the plan decides.

ImageNet initialisation (2D): ``NNUNET_MAMBA_PRETRAINED=/path/vssmtiny_dp01_ckpt_epoch_292.pth`` (VMamba-T v0),
read for fresh trainings only; the initialised encoder is then frozen for the first 10 epochs.

The official runs train a 1000-epoch cosine and the paper reports ``checkpoint_99`` (AbdomenMR), ``checkpoint_249``
(Endoscopy) and ``checkpoint_349`` (Microscopy) of it: the ``..._100of1000`` / ``_250of1000`` / ``_350of1000``
trainers stop there, on that epoch's learning rate of the 1000-epoch schedule, keeping ``checkpoint_{epoch}.pth``
every 50 epochs as the official trainer does. The protocols: nnunet_mamba.training.protocols.
"""
from nnunet_mamba.training import MambaTrainerBase, QuickCPURun, SwinUMambaFromScratch, SwinUMambaProtocol
from nnunet_mamba.training.protocols import SWIN_UMAMBA_EPOCH_CHECKPOINT_EVERY


class nnUNetTrainerSwinUMamba(SwinUMambaProtocol, MambaTrainerBase):
    """Official protocol: Swin-UMamba, AdamW 1e-4, cosine to 1e-6, AMP, deep supervision, all 1000 epochs."""

    network_name = "swin_umamba"


class nnUNetTrainerSwinUMamba_100of1000(nnUNetTrainerSwinUMamba):
    """Official protocol as the paper evaluated AbdomenMR: Swin-UMamba, epochs 0-99 of the 1000-epoch cosine."""

    evaluated_epochs = 100
    epoch_checkpoint_every = SWIN_UMAMBA_EPOCH_CHECKPOINT_EVERY


class nnUNetTrainerSwinUMamba_250of1000(nnUNetTrainerSwinUMamba_100of1000):
    """Official protocol as the paper evaluated Endoscopy: Swin-UMamba, epochs 0-249 of the 1000-epoch cosine."""

    evaluated_epochs = 250


class nnUNetTrainerSwinUMamba_350of1000(nnUNetTrainerSwinUMamba_100of1000):
    """Official protocol as the paper evaluated Microscopy: Swin-UMamba, epochs 0-349 of the 1000-epoch cosine."""

    evaluated_epochs = 350


class nnUNetTrainerSwinUMambaD(nnUNetTrainerSwinUMamba):
    """Official protocol and loader: Swin-UMamba-dagger (no ImageNet patch embedding unless RGB), 1000 epochs."""

    network_name = "swin_umamba_d"


class nnUNetTrainerSwinUMambaD_100of1000(nnUNetTrainerSwinUMambaD):
    """Official protocol as the paper evaluated AbdomenMR: Swin-UMamba-dagger, epochs 0-99 of the 1000."""

    evaluated_epochs = 100
    epoch_checkpoint_every = SWIN_UMAMBA_EPOCH_CHECKPOINT_EVERY


class nnUNetTrainerSwinUMambaD_250of1000(nnUNetTrainerSwinUMambaD_100of1000):
    """Official protocol as the paper evaluated Endoscopy: Swin-UMamba-dagger, epochs 0-249 of the 1000."""

    evaluated_epochs = 250


class nnUNetTrainerSwinUMambaD_350of1000(nnUNetTrainerSwinUMambaD_100of1000):
    """Official protocol as the paper evaluated Microscopy: Swin-UMamba-dagger, epochs 0-349 of the 1000."""

    evaluated_epochs = 350


class nnUNetTrainerSwinUMambaDScratch(SwinUMambaFromScratch, nnUNetTrainerSwinUMambaD):
    """Official protocol of the dagger-from-scratch trainer: no ImageNet, no deep supervision, checkpoint_{epoch}."""


class nnUNetTrainerSwinUMambaDAdaptedEmbedding(nnUNetTrainerSwinUMambaD):
    """Ours: Swin-UMamba-dagger whose non-RGB input starts from VMamba's RGB embedding kernel, adapted."""

    network_name = "swin_umamba_d_adapted_embedding"


class nnUNetTrainerSwinUMambaNoMamba(nnUNetTrainerSwinUMamba):
    """Ours (ablation): Swin-UMamba without its selective scan, all else equal; takes Swin-UMamba's plans."""

    network_name = "swin_umamba_no_mamba"


class nnUNetTrainerSwinUMambaDNoMamba(nnUNetTrainerSwinUMambaD):
    """Ours (ablation): Swin-UMamba-dagger without its selective scan; takes Swin-UMamba-dagger's plans."""

    network_name = "swin_umamba_d_no_mamba"


class nnUNetTrainerSwinUMambaQuick(QuickCPURun, nnUNetTrainerSwinUMamba):
    """Ours: a minutes-long CPU run (the registered small instance); a pretrained encoder frozen for 2 epochs."""

    encoder_freeze_epochs = 2


class nnUNetTrainerSwinUMambaDQuick(QuickCPURun, nnUNetTrainerSwinUMambaD):
    """Ours: a minutes-long CPU run of Swin-UMamba-dagger (the registered small instance); 2 frozen epochs."""

    encoder_freeze_epochs = 2


class nnUNetTrainerSwinUMambaNoMambaQuick(QuickCPURun, nnUNetTrainerSwinUMambaNoMamba):
    """Ours: the minutes-long CPU run of nnUNetTrainerSwinUMambaQuick, without the selective scan."""

    encoder_freeze_epochs = 2


class nnUNetTrainerSwinUMambaDNoMambaQuick(QuickCPURun, nnUNetTrainerSwinUMambaDNoMamba):
    """Ours: the minutes-long CPU run of nnUNetTrainerSwinUMambaDQuick, without the selective scan."""

    encoder_freeze_epochs = 2
