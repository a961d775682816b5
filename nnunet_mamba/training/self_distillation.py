"""nnU-Net training with DSVM-UNet's dual self-distillation on top of a level-feature network (VM-UNet).

The distillation heads are a module of the trainer, not of the network: ``self.network`` stays exactly the
network that ``nnUNetv2_predict`` builds (same state-dict keys, parameters and FLOPs), so nnU-Net's
validation, prediction, ``-pretrained_weights`` and ensembling see plain VM-UNet. The heads

* are optimised together with the network (one AdamW, one gradient clipping),
* are saved in every checkpoint under ``distillation_heads`` and restored by ``--c`` (with the
  optimiser state, which covers them),
* get their own DDP wrapper under multi-GPU training, so their gradients are averaged like the network's.

Loss per step: nnU-Net's segmentation loss (Dice + CE over the deep-supervision outputs) +
``distillation_alpha`` * L_proj + ``distillation_beta`` * L_prog. A weight of 0 removes that term and its
heads altogether (the ablations of the paper's Table 3). nnU-Net's ``train_losses`` stays the segmentation
loss, comparable with its ``val_losses``; the unweighted distillation terms are logged per epoch as
``train_projection_losses`` / ``train_progressive_losses``, printed in the training log and drawn in
``progress_distillation.png``.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunet_mamba.distillation import PROGRESSIVE, PROJECTION, DualSelfDistillation, LevelFeatureTap
from nnunet_mamba.training.trainer_base import MambaTrainerBase

CHECKPOINT_KEY = "distillation_heads"
LOG_KEYS = {PROJECTION: "train_projection_losses", PROGRESSIVE: "train_progressive_losses"}
PLOT_NAME = "progress_distillation.png"


class DualSelfDistillationTrainer(MambaTrainerBase):
    """Adds projection (weight ``distillation_alpha``) and progressive (``distillation_beta``) self-distillation."""

    distillation_alpha: float = 1.0
    distillation_beta: float = 0.5
    #: stop gradients at the teachers' backbone features (see nnunet_mamba.distillation)
    detach_distillation_teachers: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.distillation_alpha < 0 or self.distillation_beta < 0:
            raise ValueError(f"{type(self).__name__}: distillation weights must be >= 0, got alpha "
                             f"{self.distillation_alpha}, beta {self.distillation_beta}")
        if self.distillation_alpha == 0 and self.distillation_beta == 0:
            raise ValueError(f"{type(self).__name__}: alpha and beta are both 0, which is plain VM-UNet training: "
                             "use nnUNetTrainerVMUNet instead")
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.distillation: torch.nn.Module | None = None
        # nnU-Net's logger takes only keys it knows and restores them all with --c
        for name in self.distillation_weights:
            self.logger.local_logger.my_fantastic_logging.setdefault(LOG_KEYS[name], [])

    @property
    def distillation_weights(self) -> dict[str, float]:
        weights = {PROJECTION: float(self.distillation_alpha), PROGRESSIVE: float(self.distillation_beta)}
        return {name: weight for name, weight in weights.items() if weight > 0}

    @property
    def bare_distillation(self) -> DualSelfDistillation:
        heads = self.distillation
        return heads.module if isinstance(heads, DistributedDataParallel) else heads

    def _build_distillation_heads(self) -> None:
        self.distillation = DualSelfDistillation.for_network(
            self.bare_network, projection=PROJECTION in self.distillation_weights,
            progressive=PROGRESSIVE in self.distillation_weights,
            detach_teachers=self.detach_distillation_teachers).to(self.device)
        trainable = sum(p.numel() for p in self.distillation.parameters())
        self.print_to_log_file(
            f"Dual self-distillation: {', '.join(f'{n} x{w}' for n, w in self.distillation_weights.items())}; "
            f"training-only heads with {trainable / 1e6:.3f}M parameters (not part of the inference network); "
            f"teachers {'detached' if self.detach_distillation_teachers else 'not detached'}")

    def configure_optimizers(self):
        # nnU-Net builds the optimiser inside initialize(), right after the network: the heads must exist by then
        self._build_distillation_heads()
        return super().configure_optimizers()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return super().trainable_parameters() + list(self.distillation.parameters())

    def initialize(self):
        super().initialize()
        if self.is_ddp:
            self.distillation = DistributedDataParallel(self.distillation, device_ids=self.ddp_device_ids)

    def extra_checkpoint_state(self) -> dict:
        return {CHECKPOINT_KEY: self.bare_distillation.state_dict(),
                "distillation_weights": self.distillation_weights}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise RuntimeError(
                f"{type(self).__name__} cannot continue from this checkpoint: it has no '{CHECKPOINT_KEY}' (it was "
                f"written by {checkpoint.get('trainer_name', 'an unknown trainer')}). Resume with the trainer that "
                f"wrote it, or start a new training (optionally from its weights with -pretrained_weights).")
        try:
            self.bare_distillation.load_state_dict(checkpoint[CHECKPOINT_KEY])
        except RuntimeError as error:
            raise RuntimeError(
                f"the distillation heads in this checkpoint (weights {checkpoint.get('distillation_weights')}) do not "
                f"match {type(self).__name__} (weights {self.distillation_weights}): {error}") from error

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train step with the distillation terms added to the loss."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            with LevelFeatureTap(*self.bare_network.level_feature_modules()) as levels:
                output = self.network(data)
            segmentation_loss = self.loss(output, target)
            terms = self.distillation(levels.encoder, levels.decoder)
            total = segmentation_loss + sum(self.distillation_weights[name] * value for name, value in terms.items())

        parameters = self.trainable_parameters()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 12)
            self.optimizer.step()
        return {"loss": segmentation_loss.detach().cpu().numpy(),
                **{LOG_KEYS[name]: value.detach().cpu().numpy() for name, value in terms.items()}}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        means = {LOG_KEYS[name]: float(np.mean(outputs[LOG_KEYS[name]])) for name in self.distillation_weights}
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
            means = {key: float(np.mean([rank[key] for rank in gathered])) for key in means}
        for key, value in means.items():
            self.logger.log(key, value, self.current_epoch)

    def on_epoch_end(self):
        epoch = self.current_epoch
        for name, weight in self.distillation_weights.items():
            value = self.logger.get_value(LOG_KEYS[name], step=epoch)
            self.print_to_log_file(f"train_{name}_distillation", np.round(value, decimals=4), f"(weight {weight})")
        super().on_epoch_end()
        if self.local_rank == 0:
            self.plot_distillation_progress()

    def plot_distillation_progress(self) -> None:
        import matplotlib.pyplot as plt  # nnU-Net's logger has already selected the non-interactive backend

        logged = self.logger.local_logger.my_fantastic_logging
        epochs = min(len(logged["train_losses"]), *(len(logged[LOG_KEYS[n]]) for n in self.distillation_weights))
        x = list(range(epochs))
        symbols = {PROJECTION: "alpha * L_proj", PROGRESSIVE: "beta * L_prog"}
        # nnU-Net's progress plot leaves seaborn's enlarged fonts in the global style
        with plt.style.context("default"):
            figure, axis = plt.subplots(figsize=(12, 6))
            axis.plot(x, logged["train_losses"][:epochs], label="segmentation loss (train)", linewidth=2)
            axis.plot(x, logged["val_losses"][:epochs], label="segmentation loss (val)", linewidth=2)
            for name, weight in self.distillation_weights.items():
                axis.plot(x, [weight * v for v in logged[LOG_KEYS[name]][:epochs]], label=symbols[name],
                          linewidth=2, ls="--")
            axis.set_xlabel("epoch")
            axis.set_ylabel("loss")
            axis.set_title(f"{type(self).__name__}: dual self-distillation")
            axis.legend()
            figure.tight_layout()
            figure.savefig(f"{self.output_folder}/{PLOT_NAME}")
        plt.close(figure)
