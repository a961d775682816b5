"""What every nnunet-mamba trainer shares; concrete trainers only name their network.

Hyperparameters are set after ``super().__init__`` and the constructor signature is nnU-Net's own:
nnU-Net rebuilds trainers from checkpoints with the recorded ``init_args`` of that signature.
"""
from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_mamba.architectures import build_network
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler

COMPILE_DISABLED_REASON = (
    "torch.compile is disabled for nnunet-mamba networks: the selective scan is an opaque custom autograd "
    "function (chunked PyTorch loops or the mamba-ssm CUDA kernel), which the compiler can only break the "
    "graph around, for long compile times and little gain."
)

#: path of a local VMamba v0 ImageNet checkpoint to initialise the network from (see _maybe_load_pretrained)
PRETRAINED_ENV_VAR = "NNUNET_MAMBA_PRETRAINED"


class MambaTrainerBase(nnUNetTrainer):
    """nnU-Net trainer for a network of the :mod:`nnunet_mamba.architectures` registry.

    Optimiser and schedule follow VM-UNet/DSVM-UNet: AdamW (lr 1e-3, weight decay 1e-2) with a
    cosine decay to 1e-5, expressed over nnU-Net's epochs (``num_epochs``) instead of the papers'
    epochs over a fixed dataset.
    """

    network_name: str = ""
    #: constructor arguments that replace the plan-derived ones (e.g. a narrower network)
    network_overrides: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's constructor consumes this flag; a resumed run's checkpoint replaces any initial weights
        self._resuming = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.weight_decay = 1e-2
        self.min_lr = 1e-5
        self._compile_notice_logged = False

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        if not cls.network_name:
            raise TypeError(f"{cls.__name__} does not name a network (set the class attribute network_name)")
        return build_network(cls.network_name, configuration_manager, num_input_channels, num_output_channels,
                             enable_deep_supervision, **cls.network_overrides)

    def initialize(self):
        super().initialize()
        if not self._resuming:
            self._maybe_load_pretrained()
        if self.is_ddp and not self.enable_deep_supervision:
            # without deep supervision the decoder's deep heads get no gradient, and DDP without
            # find_unused_parameters fails at the second step; nnU-Net wraps without it, so re-wrap
            self.network = DistributedDataParallel(self.network.module, device_ids=self.ddp_device_ids,
                                                   find_unused_parameters=True)

    @property
    def ddp_device_ids(self) -> list[int] | None:
        return [self.local_rank] if self.device.type == "cuda" else None

    @property
    def bare_network(self) -> torch.nn.Module:
        """The network without DDP or torch.compile wrappers."""
        network = self.network
        if isinstance(network, DistributedDataParallel):
            network = network.module
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        return network

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        if self.network is None:
            raise RuntimeError("deep supervision scales are taken from the network: call initialize() first")
        return self.bare_network.deep_supervision_scales()

    def _do_i_compile(self) -> bool:
        if not self._compile_notice_logged:
            self._compile_notice_logged = True
            self.print_to_log_file(COMPILE_DISABLED_REASON)
        return False

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser updates and gradient clipping sees; trainers with training-only heads add theirs."""
        return list(self.network.parameters())

    def extra_checkpoint_state(self) -> dict:
        """Entries saved next to nnU-Net's in every checkpoint (training-only modules, for instance)."""
        return {}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Counterpart of :meth:`extra_checkpoint_state`; runs first, so a mismatch stops the resume before any
        of the trainer's state has changed."""

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus :meth:`extra_checkpoint_state`, written atomically.

        nnU-Net writes in place, so an interrupted save leaves a truncated file that ``--c`` then fails
        on; here the file appears only once complete.
        """
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
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            **self.extra_checkpoint_state(),
        }
        # next to the target (same file system, so the rename is atomic), created like any other file
        partial = os.path.join(os.path.dirname(os.path.abspath(filename)),
                               f".{os.path.basename(filename)}.partial-{os.getpid()}")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, filename)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's resume logic (which in 2.8 cannot take an already loaded dict) plus the extra state."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        self.restore_extra_checkpoint_state(checkpoint)
        network = self.bare_network
        own_keys = network.state_dict().keys()
        weights = {key[len("module."):] if key not in own_keys and key.startswith("module.") else key: value
                   for key, value in checkpoint["network_weights"].items()}
        network.load_state_dict(weights)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      betas=(0.9, 0.999), eps=1e-8)
        scheduler = CosineAnnealingLRScheduler(optimizer, self.initial_lr, self.min_lr, self.num_epochs)
        return optimizer, scheduler

    # --- optional initialisation from a VMamba ImageNet checkpoint (NNUNET_MAMBA_PRETRAINED) ---------------

    def _maybe_load_pretrained(self):
        """Initialise the network from the VMamba checkpoint named by ``NNUNET_MAMBA_PRETRAINED``, if set.

        Meant for a fresh run, once the network exists (a resumed run's checkpoint overwrites it anyway).
        Every DDP rank reads the same file, so the replicas stay identical. Returns the report, or None.
        """
        path = os.environ.get(PRETRAINED_ENV_VAR, "").strip()
        if not path:
            return None
        # imported here so that runs without the variable never touch the checkpoint-mapping code
        from nnunet_mamba.pretrained import load_vmamba_pretrained

        try:
            report = load_vmamba_pretrained(self.bare_network, path)
        except (FileNotFoundError, ValueError, TypeError) as error:
            raise type(error)(f"{PRETRAINED_ENV_VAR}={path!r}: {error}") from error
        self.print_to_log_file(f"{PRETRAINED_ENV_VAR}: {report.summary()}")
        return report
