"""Swin-UMamba and Swin-UMamba-dagger trainers: one name each for 2d and 3d_fullres, the plan decides.

ImageNet initialisation (2D): ``NNUNET_MAMBA_PRETRAINED=/path/vssmtiny_dp01_ckpt_epoch_292.pth`` (VMamba-T v0),
read for fresh trainings only; the initialised encoder is then frozen for the first 10 epochs.
"""
import torch

from nnunet_mamba.training import EncoderFreeze, MambaTrainerBase, QuickCPURun


class nnUNetTrainerSwinUMamba(EncoderFreeze, MambaTrainerBase):
    """The official protocol: AdamW lr 1e-4, weight decay 0.05, eps 1e-5; cosine to 1e-6 over nnU-Net's epochs
    (no warmup); nnU-Net's loss, deep supervision, augmentation, AMP (scan in float32) and clipping at 12."""

    network_name = "swin_umamba"
    adamw_eps = 1e-5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-4
        self.weight_decay = 0.05
        self.min_lr = 1e-6


class nnUNetTrainerSwinUMambaD(nnUNetTrainerSwinUMamba):
    """Swin-UMamba-dagger (VMamba-T encoder with its 4x4 patch embedding, VSS decoder), the same protocol."""

    network_name = "swin_umamba_d"


class nnUNetTrainerSwinUMambaQuick(QuickCPURun, nnUNetTrainerSwinUMamba):
    """A minutes-long CPU run (the registered small instance); a pretrained encoder is frozen for 2 epochs."""

    encoder_freeze_epochs = 2


class nnUNetTrainerSwinUMambaDQuick(QuickCPURun, nnUNetTrainerSwinUMambaD):
    """A minutes-long CPU run of Swin-UMamba-dagger (the registered small instance); 2 frozen epochs."""

    encoder_freeze_epochs = 2
