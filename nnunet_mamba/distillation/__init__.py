"""Training-time feature distillation: heads and losses that never enter the inference network."""
from nnunet_mamba.distillation.dual_self_distillation import (
    PROGRESSIVE,
    PROJECTION,
    DualSelfDistillation,
    ProgressiveHead,
    ProjectionHead,
    feature_mse,
)
from nnunet_mamba.distillation.features import LevelFeatureTap
from nnunet_mamba.distillation.hybrid import (
    HybridDistillationConfig,
    decoupled_kd,
    edge_kd,
    hybrid_distillation_terms,
    sobel_magnitude,
    spatial_attention_kd,
)

__all__ = ["PROGRESSIVE", "PROJECTION", "DualSelfDistillation", "LevelFeatureTap", "ProgressiveHead",
           "ProjectionHead", "feature_mse",
           "HybridDistillationConfig", "decoupled_kd", "edge_kd", "hybrid_distillation_terms", "sobel_magnitude",
           "spatial_attention_kd"]
