"""Reading checkpoints: public ones safely, our own training checkpoints with named errors.

Public training checkpoints pickle more than weights (VMamba: a yacs config, numpy scalars). ``weights_only=True``
refuses such files and plain unpickling would import and run foreign code; :func:`read_checkpoint` builds
the tensors and puts inert stand-ins in place of everything else.

nnU-Net training checkpoints (``checkpoint_final.pth`` and the like, of this project's runs or nnU-Net's) are
read whole by :func:`load_training_checkpoint`, as ``nnUNetv2_train --c`` and ``nnUNetv2_predict`` read them.
Keys of a wrapped network are named as the bare network names them by :func:`strip_wrapper_prefixes`.
"""
from __future__ import annotations

import io
import pickle
import types
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import torch

#: where training scripts keep the weights: VMamba saves {"model": ..., "model_ema": ...}; "model" wins
CONTAINER_KEYS = ("model", "model_ema", "state_dict", "network_weights")
#: what wrappers put before a network's keys: DataParallel, DDP and EMA ``module.``, torch.compile ``_orig_mod.``
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointReadError(RuntimeError):
    """A file that cannot be read as an nnU-Net training checkpoint; the message names the file and why."""


def strip_wrapper_prefixes(key: str) -> str:
    """A state-dict key of a wrapped network (:data:`WRAPPER_PREFIXES`, nested in any order), as the bare network
    names it."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_training_checkpoint(path, map_location="cpu", content: bytes | None = None) -> dict:
    """The dict a training checkpoint holds (fully unpickled: read only files of runs you trust, as nnU-Net does).

    ``content``: the file's bytes, already read (e.g. to hash them), so the file is read once. A missing file
    raises ``FileNotFoundError``; anything else that is not a readable checkpoint dict raises
    :class:`CheckpointReadError` (``"<path>: it ..."``).
    """
    try:
        checkpoint = torch.load(io.BytesIO(content) if content is not None else path, map_location=map_location,
                                weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # unpickling raises anything for a file that is not a checkpoint
        raise CheckpointReadError(f"{path}: it is not a readable PyTorch checkpoint "
                                  f"({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(f"{path}: it holds a {type(checkpoint).__name__}, not an nnU-Net training "
                                  f"checkpoint")
    return checkpoint


def unwrap_state_dict(checkpoint, kind: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a state dict or of a checkpoint holding one under a :data:`CONTAINER_KEYS` key.

    Wrapper prefixes are stripped (:func:`strip_wrapper_prefixes`). Returns the tensors and where they were
    found, for messages.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"not a {kind}: expected a state dict, found a {type(checkpoint).__name__}")
    state, where = checkpoint, "the checkpoint"
    if not any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        for key in CONTAINER_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                state, where = checkpoint[key], f"checkpoint[{key!r}]"
                break
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[strip_wrapper_prefixes(str(key))] = value
    return tensors, where


def read_checkpoint(path: str) -> tuple[object, list[str]]:
    """The unpickled file and the names of the non-tensor objects that were replaced by inert stand-ins."""
    # torch.save writes a zip archive (a pickle, protocol 2+, before torch 1.6); torch.load's legacy reader
    # meets anything else with whatever its bytes decode to (text: "KeyError: 544502645")
    with open(path, "rb") as handle:
        is_pickle = handle.read(1) == pickle.PROTO
    if not (is_pickle or zipfile.is_zipfile(path)):
        raise ValueError(f"{path!r} is not a PyTorch checkpoint: torch.save writes a zip archive (or, before torch "
                         f"1.6, a pickle), and this file is neither")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError:
        pass  # training checkpoints also pickle their config (VMamba: a yacs CfgNode) and numpy scalars
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"could not read {path!r} as a PyTorch checkpoint: {error}") from error
    ignored: set[str] = set()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False,
                                pickle_module=_inert_pickle_module(ignored))
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise ValueError(f"could not read {path!r} as a PyTorch checkpoint: {error}") from error
    return checkpoint, sorted(ignored)


class _IgnoredObject:
    """Takes the place of a pickled object that is not needed (a config, a numpy scalar): keeps and runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


def _tensor_rebuilder(module: str, name: str):
    """The few globals that plain tensors and state dicts pickle; None for anything else."""
    if module == "collections" and name == "OrderedDict":
        return OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter",
                                             "_rebuild_parameter_with_state"):
        return getattr(torch._utils, name, None)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


def _inert_pickle_module(ignored: set[str]) -> types.ModuleType:
    """A pickle module for ``torch.load`` that builds tensors and nothing else.

    ``weights_only=True`` refuses files with foreign objects, and plain unpickling would import and run
    them (and fail where, e.g., yacs is not installed); here every other global becomes an inert stand-in.
    """

    class InertUnpickler(pickle.Unpickler):
        def find_class(self, module_name, name):
            rebuilder = _tensor_rebuilder(module_name, name)
            if rebuilder is not None:
                return rebuilder
            ignored.add(f"{module_name}.{name}")
            return type(name, (_IgnoredObject,), {})

    module = types.ModuleType("nnunet_mamba_inert_pickle")
    module.Unpickler = InertUnpickler
    module.load = lambda file, **kwargs: InertUnpickler(file, **kwargs).load()
    return module
