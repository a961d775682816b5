"""Freezing a pretrained encoder for the first epochs of a training (Swin-UMamba's protocol).

A mixin placed before :class:`~nnunet_mamba.training.trainer_base.MambaTrainerBase` in a trainer's bases. When the
network was initialised from ``NNUNET_MAMBA_PRETRAINED`` in this training, the modules the network names in
``pretrained_encoder_modules()`` are frozen for epochs ``0 .. encoder_freeze_epochs - 1`` and trained afterwards;
a network trained from scratch is never frozen (freezing random weights would only slow it down).

* Frozen parameters get ``requires_grad = False``: they receive no gradient, so AdamW neither updates nor decays
  them (it skips parameters without a gradient) and gradient clipping ignores them; the one optimiser built over
  all parameters keeps working when they thaw, as in the official trainers.
* ``--c``: whether the run started from pretrained weights is saved in every checkpoint, so a run resumed inside
  the freeze is frozen again and one resumed after it is not.
* DDP: a DDP wrapper reduces the gradients of the parameters that required them when it was built, so the network
  is wrapped again whenever the set changes (twice per training, on every rank at the same epoch).
"""
from __future__ import annotations

import torch
from torch import nn

FREEZE_STATE_KEY = "encoder_freeze"


class EncoderFreeze:
    """Mixin: freeze ``network.pretrained_encoder_modules()`` for the first ``encoder_freeze_epochs`` epochs."""

    #: epochs trained with the pretrained encoder frozen (the paper: 10)
    encoder_freeze_epochs: int = 10

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.encoder_pretrained = False
        self._encoder_frozen = False

    def maybe_initialise_from_pretrained(self):
        report = super().maybe_initialise_from_pretrained()
        if report is not None:
            self.encoder_pretrained = True
        return report

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(),
                FREEZE_STATE_KEY: {"encoder_pretrained": self.encoder_pretrained,
                                   "freeze_epochs": self.encoder_freeze_epochs}}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().restore_extra_checkpoint_state(checkpoint)
        self.encoder_pretrained = bool(checkpoint.get(FREEZE_STATE_KEY, {}).get("encoder_pretrained", False))

    def frozen_encoder_parameters(self) -> list[nn.Parameter]:
        network = self.bare_network
        if not hasattr(network, "pretrained_encoder_modules"):
            raise TypeError(f"{type(self).__name__} freezes a pretrained encoder, but {type(network).__name__} does "
                            f"not name one (pretrained_encoder_modules)")
        return [p for module in network.pretrained_encoder_modules() for p in module.parameters()]

    def encoder_should_be_frozen(self, epoch: int) -> bool:
        return self.encoder_pretrained and epoch < self.encoder_freeze_epochs

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze or thaw the pretrained encoder (and rewrap the network under DDP when that changes anything)."""
        if frozen == self._encoder_frozen:
            return
        parameters = self.frozen_encoder_parameters()
        for parameter in parameters:
            parameter.requires_grad_(not frozen)
            parameter.grad = None
        self._encoder_frozen = frozen
        if self.is_ddp:
            self.rewrap_network_for_ddp()
        count = sum(p.numel() for p in parameters)
        self.print_to_log_file(
            f"pretrained encoder frozen ({count} parameters) until epoch {self.encoder_freeze_epochs}" if frozen else
            f"pretrained encoder trainable again ({count} parameters) from epoch {self.current_epoch}")

    def on_train_epoch_start(self):
        self.set_encoder_frozen(self.encoder_should_be_frozen(self.current_epoch))
        super().on_train_epoch_start()
