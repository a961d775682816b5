"""What every nnunet-mamba trainer shares; concrete trainers only name their network (``trainers/``).

Hyperparameters are set after ``super().__init__`` and the constructor signature is nnU-Net's own:
nnU-Net rebuilds trainers from checkpoints with the recorded ``init_args`` of that signature.

Hooks a trainer variant overrides (one thing each, like nnU-Net's own variants):

* ``compute_loss(data, target) -> (segmentation_loss, {term: value})``: the forward pass and the loss. The
  one ``train_step`` adds ``loss_term_weights[term] * value`` for every term, then does AMP, gradient
  clipping (``gradient_clip_norm``; None switches it off) and the optimiser step.
* ``build_training_modules() -> {name: module}``: modules used in training only (e.g. DSVM-UNet's distillation
  heads), optimised, DDP-wrapped, saved and restored with the run, never part of ``self.network``
  (:mod:`nnunet_mamba.training.training_modules`). A frozen teacher is not one of them: it is read from its own
  results folder (:mod:`nnunet_mamba.training.teacher`).
* ``extra_checkpoint_state()`` / ``restore_extra_checkpoint_state(checkpoint)``: entries of a variant's own in every
  checkpoint; ``adapt_to_checkpoint(checkpoint)``: rebuild for an older checkpoint layout before ``--c`` matches it
  (:mod:`nnunet_mamba.training.checkpoint`).
* ``build_lr_scheduler(optimizer)``; ``build_optimizer(parameters)``.
* ``autocast_network`` (class attribute): False trains in float32 on CUDA too (no autocast around the forward
  pass and the loss, no gradient scaler); nnU-Net's validation step and predictor keep their autocast.
* ``epoch_checkpoint_every`` (class attribute): also keep ``checkpoint_{epoch}.pth`` (epochs counted from 0, so
  ``checkpoint_99.pth`` after the 100th) every that many epochs, as the official Swin-UMamba trainer does with
  nnU-Net's ``save_every`` of 50; written atomically like the others, and a training checkpoint ``--c`` accepts.
* ``lr_schedule_epochs`` (class attribute): the length of the learning-rate schedule when the run is shorter
  (``num_epochs`` < it): the run stops at ``num_epochs`` at that epoch's learning rate of the longer schedule, as
  the official Swin-UMamba runs of 1000 epochs were evaluated at ``checkpoint_99``. None: ``num_epochs``.

Named loss terms are logged per epoch in the trainer's own :class:`LossTermLog` (saved in the checkpoint),
printed in the training log and drawn in ``progress_loss_terms.png``.

The resources of every epoch (:data:`RESOURCE_LOG_KEYS`) go into nnU-Net's own logger, so that they are saved in
the checkpoint's ``logging`` next to nnU-Net's ``epoch_start_timestamps``/``epoch_end_timestamps``:
``peak_memory_mib`` (:func:`peak_memory_mib`: on CUDA the epoch's peak of allocated memory, on CPU the process's
peak RSS so far) and ``epoch_seconds``. Checkpoints written without them keep loading: the epochs they did not log
read None.

The training-only modules and the checkpoints are mixins of their own modules; :class:`MambaTrainerBase` is the
one class trainers extend.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_mamba import discovery
from nnunet_mamba.architectures import PretrainedNotSupported, build_network
from nnunet_mamba.architectures.registry import ablated_network, require_supported_dims
from nnunet_mamba.cpu_allocator import keep_freed_memory
from nnunet_mamba.planning.record import require_planned_for
from nnunet_mamba.resident_memory import lifetime_peak_rss_bytes
from nnunet_mamba.training.checkpoint import TrainingCheckpoints, epoch_checkpoint_name
from nnunet_mamba.training.loss_terms import PLOT_NAME, LossTermLog
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler
from nnunet_mamba.training.training_modules import TrainingModules

COMPILE_DISABLED_REASON = (
    "torch.compile is disabled for nnunet-mamba networks: the selective scan is an opaque custom autograd "
    "function (each backend of nnunet_mamba.ops.BACKENDS: mamba-ssm's CUDA kernel, Triton, numba or chunked "
    "PyTorch loops), which the compiler can only break the graph around, for long compile times and little gain."
)

#: path of a local checkpoint (e.g. VMamba ImageNet weights) that fresh runs start from; see load_pretrained
PRETRAINED_ENV_VAR = "NNUNET_MAMBA_PRETRAINED"
#: what our trainers log per epoch into nnU-Net's logger, beside nnU-Net's own entries
RESOURCE_LOG_KEYS = ("peak_memory_mib", "epoch_seconds")


class MambaTrainerBase(TrainingModules, TrainingCheckpoints, nnUNetTrainer):
    """nnU-Net trainer for a network of the :mod:`nnunet_mamba.architectures` registry.

    Optimiser: AdamW (lr 1e-3, weight decay 1e-2) as in VM-UNet/DSVM-UNet; schedule: one half cosine from
    1e-3 to 1e-5 over nnU-Net's ``num_epochs`` (not the papers' periodic CosineAnnealingLR; the ``...Paper``
    trainers reproduce that). Loss, deep supervision, augmentation and gradient clipping are nnU-Net's.
    """

    #: the registered name of the trainer's network: a network or a variant of one (``nnunet-mamba models``)
    network_name: str = ""
    #: nnU-Net clips the gradient norm at 12; None trains without clipping
    gradient_clip_norm: float | None = 12.0
    #: AdamW's epsilon
    adamw_eps: float = 1e-8
    #: False: train steps run without autocast (float32) on CUDA too
    autocast_network: bool = True
    #: keep checkpoint_{epoch}.pth after every this many epochs; None: only nnU-Net's latest, best and final
    epoch_checkpoint_every: int | None = None
    #: epochs the learning-rate schedule spans when longer than the run (num_epochs); None: num_epochs
    lr_schedule_epochs: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.weight_decay = 1e-2
        self.min_lr = 1e-5
        self._compile_notice_logged = False
        self.training_modules: nn.ModuleDict | None = None  # built with the optimiser (TrainingModules)
        self._training_module_wrappers: dict[str, DistributedDataParallel] = {}
        self.loss_term_log = LossTermLog()
        self._checkpoint_loaded = False
        self._initial_weight_sums: list[torch.Tensor] | None = None
        self._epoch_started: float | None = None  # perf_counter at on_epoch_start
        self._prepare_resource_log()
        if not self.autocast_network:
            self.grad_scaler = None  # float32 training needs no loss scaling

    # --- the network ------------------------------------------------------------------------------------

    @classmethod
    def network_to_build(cls) -> str:
        """The registered name the trainer builds: its ``network_name`` (a quick run builds its small instance)."""
        return cls.network_name

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """The trainer's network from the plans. On a machine without CUDA it also makes the process keep freed
        memory (:func:`nnunet_mamba.cpu_allocator.keep_freed_memory`, process-wide and not undone;
        ``NNUNET_MAMBA_KEEP_FREED_MEMORY=0`` opts out): ``nnUNetv2_predict`` and ``nnUNetPredictor`` build the
        network here and then run it on CPU. The device they will use is not known here, so a machine with a GPU
        predicting on CPU keeps glibc's defaults."""
        if not cls.network_name:
            raise TypeError(f"{cls.__name__} does not name a network (set the class attribute network_name)")
        if not torch.cuda.is_available():
            # nnUNetv2_predict builds the network here, and on a machine without a GPU runs it on CPU, where a
            # LightM-UNet forward pass of a 64 x 128 x 128 patch took 15 to 17 s with glibc's defaults (its large
            # maps fault in afresh) and 6 s with freed memory kept (docs/benchmarks.md, "CPU efficiency, sixth part")
            keep_freed_memory()
        return build_network(cls.network_to_build(), configuration_manager, num_input_channels, num_output_channels,
                             enable_deep_supervision)

    @property
    def bare_network(self) -> nn.Module:
        """The network without DDP or torch.compile wrappers."""
        return unwrap_network(self.network)

    def initialize(self):
        if self.device.type == "cpu":
            # before the network and the data loaders allocate (a machine with a GPU training on CPU included)
            keep_freed_memory()
        if self.network_name and not self.was_initialized:
            # nnU-Net's classmethod cannot see the configuration's name: name it here
            require_supported_dims(self.network_to_build(), self.configuration_manager.patch_size,
                                   self.configuration_name)
            require_planned_for(self.network_name, self.configuration_manager.configuration,
                                builds=self.network_to_build(), ablates=ablated_network(self.network_name),
                                trainer_name=type(self).__name__, plans_name=self.plans_manager.plans_name,
                                configuration_name=self.configuration_name,
                                dataset_name=self.plans_manager.dataset_name,
                                trainer_for_network=discovery.trainer_for_network)
        super().initialize()
        if self.is_ddp:
            self._wrap_training_modules_for_ddp()
            if not self.enable_deep_supervision:
                # without deep supervision the decoder's deep heads get no gradient, and DDP without
                # find_unused_parameters fails at the second step. nnU-Net's initialize wraps without it and has
                # no hook in between, so the network is wrapped again (the first wrapper's broadcast is harmless)
                self.rewrap_network_for_ddp()
        # to tell at the start of training whether something (-pretrained_weights) replaced the weights
        self._initial_weight_sums = _weight_sums(self.bare_network)

    def rewrap_network_for_ddp(self) -> None:
        """Wrap the bare network in a new DDP, which reduces the gradients of the parameters that require them *now*
        (DDP fixes that set when it is built: call this again after freezing or unfreezing parameters)."""
        self.network = DistributedDataParallel(self.bare_network, device_ids=self.ddp_device_ids,
                                               find_unused_parameters=not self.enable_deep_supervision)

    @property
    def ddp_device_ids(self) -> list[int] | None:
        # nnU-Net's local_rank is the global rank: on a second node the GPU is the device's own index
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        if self.network is None:
            raise RuntimeError("deep supervision scales are taken from the network: call initialize() first")
        network_scales = getattr(self.bare_network, "deep_supervision_scales", None)
        return network_scales() if network_scales is not None else super()._get_deep_supervision_scales()

    def _do_i_compile(self) -> bool:
        if not self._compile_notice_logged:
            self._compile_notice_logged = True
            self.print_to_log_file(COMPILE_DISABLED_REASON)
        return False

    # --- optimisation -----------------------------------------------------------------------------------

    def configure_optimizers(self):
        # nnU-Net builds the optimiser inside initialize(), right after the network: the training modules
        # must exist by then, and a second call (staged trainers) must not build them again
        self._build_training_modules_once()
        optimizer = self.build_optimizer(self.trainable_parameters())
        return optimizer, self.build_lr_scheduler(optimizer)

    def build_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(parameters, lr=self.initial_lr, weight_decay=self.weight_decay, betas=(0.9, 0.999),
                                 eps=self.adamw_eps)

    @property
    def schedule_epochs(self) -> int:
        """The epochs the learning-rate schedule spans (``lr_schedule_epochs``, else the run's ``num_epochs``)."""
        if self.lr_schedule_epochs is None:
            return self.num_epochs
        if self.lr_schedule_epochs < self.num_epochs:
            raise ValueError(f"{type(self).__name__}: lr_schedule_epochs ({self.lr_schedule_epochs}) is shorter "
                             f"than the run (num_epochs {self.num_epochs}); set it to at least num_epochs or to None")
        return self.lr_schedule_epochs

    def build_lr_scheduler(self, optimizer):
        return CosineAnnealingLRScheduler(optimizer, self.initial_lr, self.min_lr, self.schedule_epochs)

    @property
    def loss_term_weights(self) -> dict[str, float]:
        """Weight of every auxiliary term that ``compute_loss`` returns."""
        return {}

    def compute_loss(self, data: torch.Tensor, target) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The forward pass and the loss: nnU-Net's segmentation loss and the unweighted auxiliary terms."""
        return self.loss(self.network(data), target), {}

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train step, with the auxiliary terms of :meth:`compute_loss` and optional clipping."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        use_autocast = self.device.type == "cuda" and self.autocast_network
        with autocast(self.device.type, enabled=True) if use_autocast else dummy_context():
            segmentation_loss, terms = self.compute_loss(data, target)
            weights = self.loss_term_weights
            total = segmentation_loss + sum(weights[name] * value for name, value in terms.items())

        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            self._clip_gradients()
            self.optimizer.step()
        return {"loss": segmentation_loss.detach().cpu().numpy(),
                **{name: value.detach().cpu().numpy() for name, value in terms.items()}}

    def _clip_gradients(self) -> None:
        if self.gradient_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.gradient_clip_norm)

    # --- logging of the auxiliary terms -------------------------------------------------------------------

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.loss_term_weights:
            return
        outputs = collate_outputs(train_outputs)
        means = {name: float(np.mean(outputs[name])) for name in self.loss_term_weights}
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
            means = {name: float(np.mean([rank[name] for rank in gathered])) for name in means}
        for name, value in means.items():
            self.loss_term_log.log(name, value, self.current_epoch)

    def on_epoch_end(self):
        weights = self.loss_term_weights
        for name, weight in weights.items():
            self.print_to_log_file(f"train_{name}", np.round(self.loss_term_log.latest(name), decimals=4),
                                   f"(weight {weight})")
        self._log_epoch_resources()  # before nnU-Net's on_epoch_end, which saves the checkpoints and plots
        super().on_epoch_end()
        if weights and self.local_rank == 0:
            self.loss_term_log.plot(os.path.join(self.output_folder, PLOT_NAME), f"{type(self).__name__}: loss terms",
                                    self.logger.get_checkpoint(), weights)
        finished = self.current_epoch  # nnU-Net's on_epoch_end has counted the epoch
        if self.epoch_checkpoint_every and finished % self.epoch_checkpoint_every == 0:
            self._write_checkpoint(os.path.join(self.output_folder, epoch_checkpoint_name(finished - 1)), finished)

    # --- resources per epoch -------------------------------------------------------------------------------

    def on_epoch_start(self):
        self._prepare_resource_log()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._epoch_started = time.perf_counter()
        super().on_epoch_start()

    def _prepare_resource_log(self) -> None:
        """Add :data:`RESOURCE_LOG_KEYS` to nnU-Net's local logger, which refuses keys it does not hold and takes a
        checkpoint's ``logging`` as it is: a checkpoint written without them (an older run, ``--c``) gets None for
        the epochs it did not log, so that epoch e's value stays at index e."""
        entries = self.logger.local_logger.my_fantastic_logging
        for key in RESOURCE_LOG_KEYS:
            values = entries.setdefault(key, [])
            values.extend([None] * (self.current_epoch - len(values)))

    def _log_epoch_resources(self) -> None:
        self._prepare_resource_log()
        if self._epoch_started is None:  # an epoch that on_epoch_start did not begin: nothing was measured
            for key in RESOURCE_LOG_KEYS:
                self.logger.log(key, None, self.current_epoch)
            return
        seconds = time.perf_counter() - self._epoch_started
        self._epoch_started = None
        peak = peak_memory_mib(self.device)
        if self.is_ddp and self.device.type == "cuda":
            # the epoch's peak is the largest of the GPUs'
            peak_tensor = torch.tensor(peak, device=self.device)
            dist.all_reduce(peak_tensor, op=dist.ReduceOp.MAX)
            peak = float(peak_tensor)
        self.logger.log("epoch_seconds", seconds, self.current_epoch)
        self.logger.log("peak_memory_mib", peak, self.current_epoch)
        measured = "CUDA max allocated this epoch" if self.device.type == "cuda" else "process peak RSS"
        if peak is not None:
            self.print_to_log_file(f"Peak memory: {peak:.0f} MiB ({measured})")

    # --- pretrained initialisation (fresh runs only) -----------------------------------------------------

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.maybe_initialise_from_pretrained()
        super().on_train_start()

    def maybe_initialise_from_pretrained(self):
        """Initialise the network from ``NNUNET_MAMBA_PRETRAINED`` when this is a genuinely fresh training.

        Runs when training starts, so ``--val`` and prediction never read the file; skipped (and said) when a
        checkpoint was loaded (``--c``) or the weights were replaced after building (``-pretrained_weights``);
        a ``--c`` that found no checkpoint is a fresh run and is initialised. Every DDP rank reads the same
        file, so the replicas stay identical. Returns the network's report, or None.
        """
        path = os.environ.get(PRETRAINED_ENV_VAR, "").strip()
        if not path:
            return None
        if self._checkpoint_loaded:
            self.print_to_log_file(f"{PRETRAINED_ENV_VAR} ignored: this run continues from a checkpoint")
            return None
        if not _same_weights(self._initial_weight_sums, _weight_sums(self.bare_network)):
            self.print_to_log_file(f"{PRETRAINED_ENV_VAR} ignored: the network's weights were loaded from another "
                                   f"file after it was built (-pretrained_weights)")
            return None
        try:
            report = self.bare_network.load_pretrained(path)
        except PretrainedNotSupported as error:
            raise PretrainedNotSupported(f"{PRETRAINED_ENV_VAR}={path!r} is set, but {error}. Unset it for "
                                         f"{type(self).__name__}.") from error
        except (FileNotFoundError, ValueError, TypeError) as error:
            raise type(error)(f"{PRETRAINED_ENV_VAR}={path!r}: {error}") from error
        self.print_to_log_file(f"{PRETRAINED_ENV_VAR}: {report.summary()}")
        return report


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory in MiB: on CUDA ``torch.cuda.max_memory_allocated`` since the last reset of the peak statistics;
    elsewhere the process's peak resident set size since it started (``getrusage``, which cannot be reset; None
    where the OS has no ``getrusage``, i.e. Windows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = lifetime_peak_rss_bytes()
    return None if peak is None else peak / 2**20


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def _weight_sums(network: nn.Module) -> list[torch.Tensor]:
    return [p.detach().sum() for p in network.parameters()]


def _same_weights(before: list[torch.Tensor] | None, after: list[torch.Tensor]) -> bool:
    return before is not None and len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
