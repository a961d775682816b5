"""What every nnunet-mamba trainer shares; concrete trainers only name their network (``trainers/``).

Hyperparameters are set after ``super().__init__`` and the constructor signature is nnU-Net's own:
nnU-Net rebuilds trainers from checkpoints with the recorded ``init_args`` of that signature.

Hooks a trainer variant overrides (one thing each, like nnU-Net's own variants):

* ``compute_loss(data, target) -> (segmentation_loss, {term: value})``: the forward pass and the loss. The
  one ``train_step`` adds ``loss_term_weights[term] * value`` for every term, then does AMP, gradient
  clipping (``gradient_clip_norm``; None switches it off) and the optimiser step.
* ``build_training_modules() -> {name: module}``: modules used in training only (distillation heads, a
  frozen teacher). Built once, before the optimiser; their trainable parameters are optimised and clipped
  with the network's; under DDP each trainable one gets its own wrapper (call it through
  ``training_module(name)``); the state of trainable ones is saved in every checkpoint under
  ``training_modules`` and restored by ``--c``. They never enter ``self.network``, so prediction,
  ensembling and ``-pretrained_weights`` see the plain network.
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
"""
from __future__ import annotations

import glob
import os

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
from nnunet_mamba.architectures import PretrainedNotSupported, SegmentationNetwork, build_network
from nnunet_mamba.architectures.registry import require_supported_dims
from nnunet_mamba.planning.record import require_planned_for
from nnunet_mamba.training.loss_terms import PLOT_NAME, LossTermLog
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler

COMPILE_DISABLED_REASON = (
    "torch.compile is disabled for nnunet-mamba networks: the selective scan is an opaque custom autograd "
    "function (each backend of nnunet_mamba.ops.BACKENDS: mamba-ssm's CUDA kernel, Triton, numba or chunked "
    "PyTorch loops), which the compiler can only break the graph around, for long compile times and little gain."
)

#: path of a local checkpoint (e.g. VMamba ImageNet weights) that fresh runs start from; see load_pretrained
PRETRAINED_ENV_VAR = "NNUNET_MAMBA_PRETRAINED"
TRAINING_MODULES_KEY = "training_modules"
LOSS_TERMS_KEY = "loss_term_logging"
#: what a checkpoint must hold for --c
REQUIRED_CHECKPOINT_KEYS = ("network_weights", "optimizer_state", "current_epoch", "init_args", "logging")


class MambaTrainerBase(nnUNetTrainer):
    """nnU-Net trainer for a network of the :mod:`nnunet_mamba.architectures` registry.

    Optimiser: AdamW (lr 1e-3, weight decay 1e-2) as in VM-UNet/DSVM-UNet; schedule: one half cosine from
    1e-3 to 1e-5 over nnU-Net's ``num_epochs`` (not the papers' periodic CosineAnnealingLR; the ``...Paper``
    trainers reproduce that). Loss, deep supervision, augmentation and gradient clipping are nnU-Net's.
    """

    network_name: str = ""
    #: constructor arguments that replace the plan-derived ones (e.g. a narrower network)
    network_overrides: dict = {}
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
        self.training_modules: nn.ModuleDict | None = None
        self._training_module_wrappers: dict[str, DistributedDataParallel] = {}
        self.loss_term_log = LossTermLog()
        self._checkpoint_loaded = False
        self._initial_weight_sums: list[torch.Tensor] | None = None
        if not self.autocast_network:
            self.grad_scaler = None  # float32 training needs no loss scaling

    # --- the network ------------------------------------------------------------------------------------

    @classmethod
    def network_kwargs(cls) -> dict:
        """Constructor arguments that replace the plan-derived ones."""
        return dict(cls.network_overrides)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        if not cls.network_name:
            raise TypeError(f"{cls.__name__} does not name a network (set the class attribute network_name)")
        return build_network(cls.network_name, configuration_manager, num_input_channels, num_output_channels,
                             enable_deep_supervision, **cls.network_kwargs())

    @property
    def bare_network(self) -> nn.Module:
        """The network without DDP or torch.compile wrappers."""
        return _unwrap(self.network)

    def initialize(self):
        if self.network_name and not self.was_initialized:
            # nnU-Net's classmethod cannot see the configuration's name: name it here
            require_supported_dims(self.network_name, self.configuration_manager.patch_size, self.configuration_name)
            require_planned_for(self.network_name, self.configuration_manager.configuration,
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

    # --- training-only modules --------------------------------------------------------------------------

    def build_training_modules(self) -> dict[str, nn.Module]:
        """Modules used in training only, by name; the network exists when this is called."""
        return {}

    def _build_training_modules_once(self) -> None:
        if self.training_modules is None:
            self.training_modules = nn.ModuleDict(self.build_training_modules()).to(self.device)

    def _wrap_training_modules_for_ddp(self) -> None:
        for name, module in self.training_modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self._training_module_wrappers[name] = DistributedDataParallel(module, device_ids=self.ddp_device_ids)

    def training_module(self, name: str) -> nn.Module:
        """The training-only module to call in ``compute_loss`` (its DDP wrapper under multi-GPU training)."""
        return self._training_module_wrappers.get(name, self.training_modules[name])

    def _saved_training_modules(self) -> dict[str, nn.Module]:
        """Trainable training-only modules; frozen ones (a teacher) are rebuilt from their own source."""
        return {name: module for name, module in self.training_modules.items()
                if any(p.requires_grad for p in module.parameters())}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates and gradient clipping sees: the network and the trainable training modules."""
        extra = [p for module in self._saved_training_modules().values() for p in module.parameters()
                 if p.requires_grad]
        return list(self.network.parameters()) + extra

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
        super().on_epoch_end()
        if weights and self.local_rank == 0:
            self.loss_term_log.plot(os.path.join(self.output_folder, PLOT_NAME), f"{type(self).__name__}: loss terms",
                                    self.logger.get_checkpoint(), weights)
        finished = self.current_epoch  # nnU-Net's on_epoch_end has counted the epoch
        if self.epoch_checkpoint_every and finished % self.epoch_checkpoint_every == 0:
            self._write_checkpoint(os.path.join(self.output_folder, epoch_checkpoint_name(finished - 1)), finished)

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

    # --- checkpoints ----------------------------------------------------------------------------------------

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
            TRAINING_MODULES_KEY: {name: m.state_dict() for name, m in self._saved_training_modules().items()},
            LOSS_TERMS_KEY: self.loss_term_log.state_dict(),
            "loss_term_weights": self.loss_term_weights,
            **self.extra_checkpoint_state(),
        }
        write_atomically(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's resume logic (which in 2.8 cannot take an already loaded dict), with named errors.

        Everything is checked before any state changes, so a refused checkpoint leaves the trainer as it was.
        """
        if not self.was_initialized:
            self.initialize()
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint"
        checkpoint = _read_training_checkpoint(filename_or_checkpoint, self.device)
        missing = [key for key in REQUIRED_CHECKPOINT_KEYS if key not in checkpoint]
        if missing:
            raise RuntimeError(
                f"cannot continue from {source}: it has no {', '.join(repr(k) for k in missing)}, so it is not a "
                f"training checkpoint written by nnU-Net (checkpoint_latest.pth / checkpoint_final.pth). Start a new "
                f"training, optionally from its weights with -pretrained_weights.")
        network_weights = self._matching_network_weights(checkpoint, source)
        training_module_states = self._matching_training_module_states(checkpoint, source)

        self.bare_network.load_state_dict(network_weights)
        for name, state in training_module_states.items():
            self.training_modules[name].load_state_dict(state)
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
        weights = {key[len("module."):] if key not in own and key.startswith("module.") else key: value
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

    def _matching_training_module_states(self, checkpoint: dict, source: str) -> dict[str, dict]:
        expected = self._saved_training_modules()
        if not expected:
            return {}
        saved = saved_training_module_states(checkpoint)
        if not saved or set(saved) != set(expected):
            raise RuntimeError(
                f"{type(self).__name__} cannot continue from {source}: it needs the training-only modules "
                f"{sorted(expected)} but the checkpoint holds {sorted(saved or {}) or 'none'} (it was "
                f"{self._written_by(checkpoint)}). Resume with the trainer that wrote it, or start a new training "
                f"(optionally from its weights with -pretrained_weights).")
        for name, module in expected.items():
            own = module.state_dict()
            theirs = saved[name]
            if own.keys() != theirs.keys() or any(tuple(own[k].shape) != tuple(theirs[k].shape) for k in own):
                raise RuntimeError(
                    f"the training-only module {name!r} in {source} (loss weights "
                    f"{checkpoint.get('loss_term_weights', checkpoint.get('distillation_weights'))}) does not match "
                    f"{type(self).__name__} (loss weights {self.loss_term_weights}); resume with the trainer that "
                    f"wrote it.")
        return saved


def epoch_checkpoint_name(epoch: int) -> str:
    """The periodic checkpoint written at the end of ``epoch`` (counted from 0), the official trainers' name."""
    return f"checkpoint_{epoch}.pth"


def _unwrap(network: nn.Module) -> nn.Module:
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def _weight_sums(network: nn.Module) -> list[torch.Tensor]:
    return [p.detach().sum() for p in network.parameters()]


def _same_weights(before: list[torch.Tensor] | None, after: list[torch.Tensor]) -> bool:
    return before is not None and len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def saved_training_module_states(checkpoint: dict) -> dict[str, dict] | None:
    """The training-only modules' states a checkpoint holds (name -> state dict), None when it holds none."""
    saved = checkpoint.get(TRAINING_MODULES_KEY)
    if saved is None and "distillation_heads" in checkpoint:  # DSVM-UNet runs written before the generic mechanism
        saved = {"distillation": checkpoint["distillation_heads"]}
    return saved


def _read_training_checkpoint(filename_or_checkpoint, device) -> dict:
    if not isinstance(filename_or_checkpoint, str):
        checkpoint = filename_or_checkpoint
    else:
        try:
            checkpoint = torch.load(filename_or_checkpoint, map_location=device, weights_only=False)
        except FileNotFoundError:
            raise
        except Exception as error:  # unpickling raises anything for a file that is not a checkpoint
            raise RuntimeError(f"cannot continue from {filename_or_checkpoint}: it is not a readable PyTorch "
                               f"checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict):
        raise RuntimeError(f"cannot continue from {filename_or_checkpoint!s}: it holds a "
                           f"{type(checkpoint).__name__}, not an nnU-Net training checkpoint")
    return checkpoint


def write_atomically(obj, filename: str) -> None:
    """``torch.save`` to a partial file next to ``filename``, flushed to disk, then renamed into place.

    Partial files left by processes that died (SIGKILL gives no chance to clean up) are removed first.
    """
    folder, name = os.path.split(os.path.abspath(filename))
    prefix = os.path.join(folder, f".{name}.partial-")
    for stale in glob.glob(glob.escape(prefix) + "*"):
        pid = stale[len(prefix):]
        if pid.isdigit() and not _process_alive(int(pid)):
            os.remove(stale)
    partial = f"{prefix}{os.getpid()}"
    try:
        with open(partial, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, filename)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
