"""Training support shared by the nnU-Net trainers in the ``trainers/`` folder."""
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler
from nnunet_mamba.training.self_distillation import DualSelfDistillationTrainer
from nnunet_mamba.training.trainer_base import MambaTrainerBase

__all__ = ["CosineAnnealingLRScheduler", "DualSelfDistillationTrainer", "MambaTrainerBase"]
