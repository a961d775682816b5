"""Training checkpoints: nnU-Net's layout plus the training-only modules and loss terms, written atomically, and
``--c`` that checks everything before it changes anything.

The layout is a promise to users: ``network_weights``, ``optimizer_state``, ``grad_scaler_state``, ``logging``,
``_best_ema``, ``current_epoch``, ``init_args``, ``trainer_name`` and ``inference_allowed_mirroring_axes`` as
nnU-Net writes them (so ``nnUNetv2_predict`` and ``-pretrained_weights`` read ours), then the training-only modules
(:data:`~nnunet_mamba.training.training_modules.TRAINING_MODULES_KEY`), the loss-term log and weights, and the
entries a trainer variant adds (``extra_checkpoint_state``). Checkpoints of earlier releases keep loading: network
keys through the network's ``upgrade_legacy_keys``, training-only modules through
:func:`~nnunet_mamba.training.training_modules.saved_training_module_states`.
"""
from __future__ import annotations

import functools

import torch

from nnunet_mamba.architectures import SegmentationNetwork
from nnunet_mamba.files import write_atomically
from nnunet_mamba.pretrained.checkpoint_io import CheckpointReadError, load_training_checkpoint, strip_wrapper_prefixes
from nnunet_mamba.training.training_modules import TRAINING_MODULES_KEY

LOSS_TERMS_KEY = "loss_term_logging"
#: what a checkpoint must hold for --c
REQUIRED_CHECKPOINT_KEYS = ("network_weights", "optimizer_state", "current_epoch", "init_args", "logging")


def epoch_checkpoint_name(epoch: int) -> str:
    """The periodic checkpoint written at the end of ``epoch`` (counted from 0), the official trainers' name."""
    return f"checkpoint_{epoch}.pth"


class TrainingCheckpoints:
    """Mixin of :class:`~nnunet_mamba.training.trainer_base.MambaTrainerBase`: saving and continuing (``--c``)."""

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the training modules and loss terms, written atomically and durably.

        nnU-Net writes in place, so an interrupted save leaves a truncated file that ``--c`` then fails on;
        here the file appears only once complete.
        """
        self._write_checkpoint(filename, self.current_epoch + 1)

    def _write_checkpoint(self, filename: str, epochs_done: int) -> None:
        """The checkpoint of the state after ``epochs_done`` epochs (``--c`` continues with the next one)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self.bare_network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": epochs_done,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            TRAINING_MODULES_KEY: self.training_module_states(),
            LOSS_TERMS_KEY: self.loss_term_log.state_dict(),
            "loss_term_weights": self.loss_term_weights,
            **self.extra_checkpoint_state(),
        }
        write_atomically(filename, functools.partial(torch.save, checkpoint))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's resume logic (which in 2.8 cannot take an already loaded dict), with named errors.

        The file is read once. Everything is checked before any state changes (but what
        :meth:`adapt_to_checkpoint` rebuilds), so a refused checkpoint leaves the trainer as it was.
        """
        if not self.was_initialized:
            self.initialize()
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint"
        checkpoint = _read_checkpoint_to_continue(filename_or_checkpoint, self.device)
        missing = [key for key in REQUIRED_CHECKPOINT_KEYS if key not in checkpoint]
        if missing:
            raise RuntimeError(
                f"cannot continue from {source}: it has no {', '.join(repr(k) for k in missing)}, so it is not a "
                f"training checkpoint written by nnU-Net (checkpoint_latest.pth / checkpoint_final.pth). Start a new "
                f"training, optionally from its weights with -pretrained_weights.")
        self.adapt_to_checkpoint(checkpoint)
        network_weights = self._matching_network_weights(checkpoint, source)
        training_module_states = self._matching_training_module_states(checkpoint, source)

        self.bare_network.load_state_dict(network_weights)
        self._restore_training_modules(training_module_states)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self.loss_term_log.load_state_dict(checkpoint.get(LOSS_TERMS_KEY, {}))
        self._best_ema = checkpoint.get("_best_ema")
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.restore_extra_checkpoint_state(checkpoint)
        self._checkpoint_loaded = True

    def adapt_to_checkpoint(self, checkpoint: dict) -> None:
        """Called by ``load_checkpoint`` once the checkpoint is read, before it is matched: a trainer variant whose
        checkpoints come in more than one layout (its training-only modules changed) rebuilds what that one needs."""

    def extra_checkpoint_state(self) -> dict:
        """Entries a trainer variant adds to every checkpoint (keys of its own); restored by ``--c``."""
        return {}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Read back what :meth:`extra_checkpoint_state` saved (absent from checkpoints of other trainers)."""

    def _written_by(self, checkpoint: dict) -> str:
        init = checkpoint.get("init_args") or {}
        plans = (init.get("plans") or {}).get("plans_name", "unknown plans")
        return (f"written by {checkpoint.get('trainer_name', 'an unknown trainer')} with {plans}, configuration "
                f"{init.get('configuration', '?')}")

    def _matching_network_weights(self, checkpoint: dict, source: str) -> dict:
        network = self.bare_network
        own = network.state_dict()
        weights = {key if key in own else strip_wrapper_prefixes(key): value
                   for key, value in checkpoint["network_weights"].items()}
        probe = dict(weights)
        if isinstance(network, SegmentationNetwork):
            network.upgrade_legacy_keys(probe)
        wrong_shape = [key for key in own if key in probe and tuple(probe[key].shape) != tuple(own[key].shape)]
        missing = [key for key in own if key not in probe]
        unexpected = [key for key in probe if key not in own]
        if wrong_shape or missing or unexpected:
            example = (f"e.g. {wrong_shape[0]} is {tuple(probe[wrong_shape[0]].shape)} there and "
                       f"{tuple(own[wrong_shape[0]].shape)} here" if wrong_shape else
                       f"e.g. {(missing or unexpected)[0]}")
            raise RuntimeError(
                f"cannot continue from {source}: its network ({self._written_by(checkpoint)}) is not the network of "
                f"{type(self).__name__} with {self.plans_manager.plans_name}, configuration {self.configuration_name}: "
                f"{len(wrong_shape)} tensors differ in shape, {len(missing)} are missing, {len(unexpected)} are "
                f"unexpected ({example}). Resume with the trainer and plans that wrote it, or start a new training.")
        return weights


def _read_checkpoint_to_continue(filename_or_checkpoint, device) -> dict:
    if not isinstance(filename_or_checkpoint, str):
        checkpoint = filename_or_checkpoint
        if not isinstance(checkpoint, dict):
            raise RuntimeError(f"cannot continue from {checkpoint!s}: it holds a {type(checkpoint).__name__}, not an "
                               f"nnU-Net training checkpoint")
        return checkpoint
    try:
        return load_training_checkpoint(filename_or_checkpoint, map_location=device)
    except CheckpointReadError as error:
        raise RuntimeError(f"cannot continue from {error}") from error
