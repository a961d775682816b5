"""nnU-Net training with DSVM-UNet's dual self-distillation on top of a level-feature network (VM-UNet).

A thin user of the trainer base's training-only modules: the distillation heads are the module
``"distillation"``, so ``self.network`` stays exactly the network ``nnUNetv2_predict`` builds, the heads are
optimised, clipped, DDP-wrapped, saved and restored with the run, and the two terms are logged and plotted.

Loss per step: nnU-Net's segmentation loss + ``distillation_alpha`` * L_proj + ``distillation_beta`` * L_prog.
A weight of 0 removes that term and its heads altogether (the ablations of the paper's Table 3).
"""
from __future__ import annotations

import torch

from nnunet_mamba.architectures import LevelFeatureNetwork
from nnunet_mamba.distillation import PROGRESSIVE, PROJECTION, DualSelfDistillation, LevelFeatureTap
from nnunet_mamba.distillation.dual_self_distillation import (
    ENCODER_PROGRESSIVE_PAPER,
    ENCODER_PROGRESSIVE_STUDENT_SIDE,
)
from nnunet_mamba.training.trainer_base import MambaTrainerBase
from nnunet_mamba.training.training_modules import saved_training_module_states

MODULE_NAME = "distillation"
#: the heads' loss names -> the trainer's logged term names
TERM_NAMES = {PROJECTION: "projection_distillation", PROGRESSIVE: "progressive_distillation"}


class DualSelfDistillationTrainer(MambaTrainerBase):
    """Adds projection (weight ``distillation_alpha``) and progressive (``distillation_beta``) self-distillation."""

    distillation_alpha: float = 1.0
    distillation_beta: float = 0.5
    #: stop gradients at the teachers' backbone features (see nnunet_mamba.distillation)
    detach_distillation_teachers: bool = True
    #: the encoder's progressive term: "paper" (the deeper teacher convolved down) or "student_side"
    encoder_progressive: str = ENCODER_PROGRESSIVE_PAPER

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.distillation_alpha < 0 or self.distillation_beta < 0:
            raise ValueError(f"{type(self).__name__}: distillation weights must be >= 0, got alpha "
                             f"{self.distillation_alpha}, beta {self.distillation_beta}")
        if self.distillation_alpha == 0 and self.distillation_beta == 0:
            raise ValueError(f"{type(self).__name__}: alpha and beta are both 0, which is plain VM-UNet training: "
                             "use nnUNetTrainerVMUNet instead")
        super().__init__(plans, configuration, fold, dataset_json, device)

    @property
    def loss_term_weights(self) -> dict[str, float]:
        weights = {TERM_NAMES[PROJECTION]: float(self.distillation_alpha),
                   TERM_NAMES[PROGRESSIVE]: float(self.distillation_beta)}
        return {name: weight for name, weight in weights.items() if weight > 0}

    @property
    def bare_distillation(self) -> DualSelfDistillation:
        return self.training_modules[MODULE_NAME]

    def build_training_modules(self) -> dict[str, torch.nn.Module]:
        network = self.bare_network
        if not isinstance(network, LevelFeatureNetwork):
            raise TypeError(f"{type(self).__name__} distils level features, which {type(network).__name__} does not "
                            f"offer (see LevelFeatureNetwork in nnunet_mamba.architectures.base)")
        heads = DualSelfDistillation.for_network(
            network, projection=self.distillation_alpha > 0, progressive=self.distillation_beta > 0,
            detach_teachers=self.detach_distillation_teachers, encoder_progressive=self.encoder_progressive)
        trainable = sum(p.numel() for p in heads.parameters() if p.requires_grad)
        self.print_to_log_file(
            f"Dual self-distillation: {', '.join(f'{n} x{w}' for n, w in self.loss_term_weights.items())}; "
            f"training-only heads with {trainable / 1e6:.3f}M trained parameters (not part of the inference "
            f"network); teachers {'detached' if self.detach_distillation_teachers else 'not detached'}; encoder "
            f"progressive term: {self.encoder_progressive}")
        return {MODULE_NAME: heads}

    def adapt_to_checkpoint(self, checkpoint: dict) -> None:
        """A run whose checkpoint holds the learned student-side encoder progressive heads (every run written
        before the paper's direction became the default) continues with those heads."""
        saved = (saved_training_module_states(checkpoint) or {}).get(MODULE_NAME)
        if (self.encoder_progressive == ENCODER_PROGRESSIVE_PAPER and saved is not None
                and "encoder_progressive.0.channel.bias" in saved):
            self.print_to_log_file("the checkpoint was trained with the student-side encoder progressive heads "
                                   "(encoder_progressive='student_side'): continuing with them")
            self.encoder_progressive = ENCODER_PROGRESSIVE_STUDENT_SIDE
            self.training_modules = None
            self.optimizer, self.lr_scheduler = self.configure_optimizers()
            if self.is_ddp:
                self._training_module_wrappers = {}
                self._wrap_training_modules_for_ddp()

    def compute_loss(self, data: torch.Tensor, target):
        with LevelFeatureTap(*self.bare_network.level_feature_modules()) as levels:
            output = self.network(data)
        terms = self.training_module(MODULE_NAME)(levels.encoder, levels.decoder)
        return self.loss(output, target), {TERM_NAMES[name]: value for name, value in terms.items()}
