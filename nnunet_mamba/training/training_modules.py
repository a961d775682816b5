"""Modules used in training only (e.g. DSVM-UNet's distillation heads), beside the network but never inside it.

A trainer variant returns them by name from ``build_training_modules``; the network exists by then. They are
built once, before the optimiser; their trainable parameters are optimised and clipped with the network's;
under DDP each trainable one gets its own wrapper (call it through ``training_module(name)``); the state of the
trainable ones is saved in every checkpoint under :data:`TRAINING_MODULES_KEY` and restored by ``--c``. Frozen
modules are not saved: they are rebuilt from their own source. They never enter ``self.network``, so prediction,
ensembling and ``-pretrained_weights`` see the plain network.

(A frozen teacher of output-level distillation is not one of them: it is an input of training, read from its
own results folder and recorded by path and SHA-256; see :mod:`nnunet_mamba.training.teacher`.)
"""
from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

#: where checkpoints keep the training-only modules' states (name -> state dict)
TRAINING_MODULES_KEY = "training_modules"
#: where DSVM-UNet runs written before the generic mechanism kept their heads (one module, "distillation")
LEGACY_DISTILLATION_HEADS_KEY = "distillation_heads"


def saved_training_module_states(checkpoint: dict) -> dict[str, dict] | None:
    """The training-only modules' states a checkpoint holds (name -> state dict), None when it holds none."""
    saved = checkpoint.get(TRAINING_MODULES_KEY)
    if saved is None and LEGACY_DISTILLATION_HEADS_KEY in checkpoint:
        saved = {"distillation": checkpoint[LEGACY_DISTILLATION_HEADS_KEY]}
    return saved


class TrainingModules:
    """Mixin of :class:`~nnunet_mamba.training.trainer_base.MambaTrainerBase`: the training-only modules.

    Its state (``training_modules``, ``_training_module_wrappers``) is set up in the base's ``__init__``, which
    keeps nnU-Net's constructor signature.
    """

    training_modules: nn.ModuleDict | None
    _training_module_wrappers: dict[str, DistributedDataParallel]

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
        """Trainable training-only modules: the ones a checkpoint keeps (frozen ones are rebuilt from their source)."""
        return {name: module for name, module in self.training_modules.items()
                if any(p.requires_grad for p in module.parameters())}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates and gradient clipping sees: the network and the trainable training modules."""
        extra = [p for module in self._saved_training_modules().values() for p in module.parameters()
                 if p.requires_grad]
        return list(self.network.parameters()) + extra

    def training_module_states(self) -> dict[str, dict]:
        """What a checkpoint keeps under :data:`TRAINING_MODULES_KEY`."""
        return {name: module.state_dict() for name, module in self._saved_training_modules().items()}

    def _matching_training_module_states(self, checkpoint: dict, source: str) -> dict[str, dict]:
        """The saved states of this trainer's training-only modules, checked against them (named errors)."""
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

    def _restore_training_modules(self, states: dict[str, dict]) -> None:
        for name, state in states.items():
            self.training_modules[name].load_state_dict(state)
