"""Training support shared by the nnU-Net trainers in the ``trainers/`` folder (which only declare leaves)."""
from nnunet_mamba.training.encoder_freeze import EncoderFreeze
from nnunet_mamba.training.hybrid_distillation import HybridDistillationTrainer
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler
from nnunet_mamba.training.protocols import (
    LightMUNetProtocol,
    PaperProtocol,
    PaperSchedule,
    SwinUMambaFromScratch,
    SwinUMambaProtocol,
    UltraLBMProtocol,
)
from nnunet_mamba.training.quick import QuickCPURun
from nnunet_mamba.training.self_distillation import DualSelfDistillationTrainer
from nnunet_mamba.training.trainer_base import MambaTrainerBase

__all__ = ["CosineAnnealingLRScheduler", "DualSelfDistillationTrainer", "EncoderFreeze", "HybridDistillationTrainer",
           "LightMUNetProtocol", "MambaTrainerBase", "PaperProtocol", "PaperSchedule", "QuickCPURun",
           "SwinUMambaFromScratch", "SwinUMambaProtocol", "UltraLBMProtocol"]
