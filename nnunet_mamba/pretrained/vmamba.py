"""Initialise a 2D :class:`~nnunet_mamba.architectures.VMUNet` from a VMamba ImageNet-1k checkpoint.

VM-UNet and DSVM-UNet start encoder *and* decoder from VMamba-S ImageNet-1k weights: the encoder
stages take VMamba's stages, the decoder stages take the same stages in reverse order. The user
gives a local file (VM-UNet uses ``vmamba_small_e238_ema.pth``); nothing is downloaded.

Supported layout: VMamba's first release ("v0"), the one VM-UNet builds on. Its keys and ours:

===============================================  =====================================================
VMamba v0                                        this VMUNet
===============================================  =====================================================
``patch_embed.proj.*``, ``patch_embed.norm.*``   ``stem.proj.*``, ``stem.norm.*``
``layers.{i}.blocks.{j}.ln_1.*``                 ``encoder.stages.{i}.{j}.norm.*``
``layers.{i}.blocks.{j}.self_attention.conv2d``  ``encoder.stages.{i}.{j}.ssm.depthwise_conv``
``layers.{i}.blocks.{j}.self_attention.<p>``     ``encoder.stages.{i}.{j}.ssm.<p>`` (``in_proj``,
                                                 ``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``,
                                                 ``A_logs``, ``Ds``, ``out_norm``, ``out_proj``)
``layers.{i}.downsample.{norm,reduction}.*``     ``encoder.downsamples.{i}.{norm,reduction}.*``
``layers.{3-k}.blocks.{j}.*``                    ``decoder.stages.{k}.{j}.*`` (decoder stage 0 is the
                                                 deepest, so it takes VMamba's last stage)
===============================================  =====================================================

Only the first ``depth`` blocks of a VMamba stage are used where it has more, as VM-UNet does.
Not loaded, because VMamba has no counterpart: ``decoder.upsamples``, ``decoder.final_expand``,
``decoder.seg_head`` and ``decoder.deep_heads`` keep their initialisation. Unused from the
checkpoint: VMamba's classifier (``norm``, ``head``) and the blocks beyond our depths. Tensors whose
shapes differ from ours (another ``embed_dim`` or ``d_state``, a stem or merge stride other than
VMamba's 4x4 and 2x2) are skipped and reported, never reshaped.

Input channels: VMamba's stem kernel is RGB. A network with 3 input channels takes it as it is (the
channels then mean R, G, B); with ``c != 3`` channels every input channel gets the mean of the RGB
kernel scaled by ``3 / c``, so an image repeated on all ``c`` channels gives the response VMamba gives
to that image in grey (for ``c = 1`` this is the summed RGB kernel, the same as VM-UNet repeating a
grey image to 3 channels). nnU-Net's z-scored intensities are not ImageNet's normalisation; the
weights are a starting point, not a frozen feature extractor.

VMamba-S vs VMamba-T (v0): same widths (embed_dim 96: 96, 192, 384, 768), depths 2, 2, 27, 2 vs
2, 2, 9, 2. With VM-UNet's depths (2 per stage) both give the same tensor shapes; they differ only
in which ImageNet training produced the first two blocks of stage 3. VMamba-B is 128 wide.

Semantics, not only shapes, are matched: VMamba v0 orders its K = 4 scan directions row-major,
column-major, reversed row-major, reversed column-major, and its 2x2 patch merging concatenates
``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``. Both orders are probed on an index grid
through our own modules at load time; the per-direction parameters (``x_proj_weight``,
``dt_projs_*``, ``A_logs``, ``Ds``) and the merge's channel blocks are permuted to our order (both
orders agree today, so the permutations are the identity; a mismatch that cannot be matched raises).

Facts from public code: JCruan519/VM-UNet ``models/vmunet/vmamba.py`` (SS2D, VSSBlock, PatchMerging2D,
PatchEmbed2D) and ``models/vmunet/vmunet.py`` (``load_from``: checkpoint ``["model"]``, encoder from
``layers.*``, decoder ``layers_up.k`` from ``layers.{3-k}``); MzeroMiko/VMamba
``classification/models/vmamba.py`` (the renames from v0's ``ln_1``/``self_attention`` to later
releases' ``norm``/``op``) and ``classification/configs/vssm/vmambav0_{tiny,small,base}_224.yaml``.
"""
from __future__ import annotations

import os
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

#: VMamba's training script saves {"model": ..., "model_ema": ...}; VM-UNet reads "model", so it wins
CONTAINER_KEYS = ("model", "model_ema", "state_dict")
VMAMBA_V0_FIRST_BLOCK = "layers.0.blocks.0."
KNOWN_VARIANTS = {
    (96, (2, 2, 9, 2)): "VMamba-T",
    (96, (2, 2, 27, 2)): "VMamba-S",
    (128, (2, 2, 27, 2)): "VMamba-B",
}
#: (h, w) offsets of the 2x2 neighbours in the order VMamba v0 concatenates them
VMAMBA_MERGE_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))
#: our block-relative prefixes and VMamba v0's, most specific first
BLOCK_RENAMES = (
    ("ssm.depthwise_conv.", "self_attention.conv2d."),
    ("ssm.", "self_attention."),
    ("norm.", "ln_1."),
)
DIRECTION_PARAMETERS = frozenset({"x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"})
NEIGHBOURS_PER_MERGE = 4


@dataclass
class PretrainedReport:
    """What initialisation from a VMamba checkpoint did, key by key."""

    source: str = "<state dict>"
    checkpoint_embed_dim: int | None = None
    checkpoint_depths: tuple[int, ...] = ()
    #: network key -> checkpoint key it was loaded from
    loaded: dict[str, str] = field(default_factory=dict)
    #: network key -> why its VMamba counterpart was not used (the network keeps its initialisation)
    skipped: dict[str, str] = field(default_factory=dict)
    #: network keys VMamba has no counterpart for (heads, upsampling): they keep their initialisation
    missing: list[str] = field(default_factory=list)
    #: checkpoint keys nothing was loaded from (VMamba's classifier, blocks beyond our depths)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str:
        name = KNOWN_VARIANTS.get((self.checkpoint_embed_dim, self.checkpoint_depths), "VMamba")
        depths = "-".join(str(d) for d in self.checkpoint_depths)
        return f"{name} v0 (embed_dim {self.checkpoint_embed_dim}, depths {depths})"

    def summary(self) -> str:
        """One line: counts, for a training log."""
        return (f"initialised from {self.variant} {self.source}: loaded {len(self.loaded)} tensors, "
                f"skipped {len(self.skipped)}, {len(self.missing)} network tensors without a VMamba counterpart "
                f"keep their initialisation, {len(self.unused)} checkpoint tensors unused"
                + (f"; {'; '.join(self.notes)}" if self.notes else ""))

    def describe(self) -> str:
        """The summary and every skipped tensor with its reason."""
        lines = [self.summary()]
        lines += [f"  skipped {key}: {reason}" for key, reason in self.skipped.items()]
        return "\n".join(lines)


def vmamba_to_vm_unet_state_dict(
    vmamba_state: Mapping, network: nn.Module
) -> tuple[dict[str, torch.Tensor], PretrainedReport]:
    """Map a VMamba v0 state dict onto ``network``'s keys; nothing is loaded into the network here.

    ``vmamba_state`` is the state dict itself or a checkpoint holding it under ``model``, ``model_ema``
    or ``state_dict``; ``module.`` prefixes are stripped. Returns the tensors to load (network key ->
    tensor, already permuted and channel-adapted) and a :class:`PretrainedReport`. Tensors whose
    shapes do not fit are left out and reported in ``skipped``.
    """
    _require_2d_vm_unet(network)
    state, where = _unwrap_state_dict(vmamba_state)
    _require_vmamba_v0(state, where, vmamba_state)
    report = PretrainedReport(checkpoint_embed_dim=_embed_dim(state), checkpoint_depths=_depths(state))

    # probed per module, so that a block or merging that orders differently is still mapped correctly
    scan_orders: dict[str, list[int]] = {}
    merge_orders: dict[type, list[int]] = {}
    num_levels = len(network.encoder.stages)
    in_channels = network.stem.proj.in_channels
    mapped: dict[str, torch.Tensor] = {}
    for key, target in network.state_dict().items():
        counterpart = _counterpart(key, num_levels)
        if counterpart is None:
            report.missing.append(key)
            continue
        source_key, kind = counterpart
        if source_key not in state:
            report.skipped[key] = f"{source_key} is not in the checkpoint"
            continue
        source = state[source_key]
        if kind == "stem_kernel":
            if source.shape[:1] + source.shape[2:] != target.shape[:1] + target.shape[2:]:
                report.skipped[key] = _shape_reason(source_key, source, target)
                continue
            value = _adapt_stem_kernel(source, in_channels)
            if in_channels != source.shape[1]:
                report.notes.append(f"stem kernel: mean of the {source.shape[1]} RGB filters, repeated on "
                                    f"{in_channels} input channel(s), scaled by {source.shape[1]}/{in_channels}")
        else:
            if source.shape != target.shape:
                report.skipped[key] = _shape_reason(source_key, source, target)
                continue
            if kind == "directions":
                ssm_name, parameter = key.rsplit(".", 1)
                if ssm_name not in scan_orders:
                    scan_orders[ssm_name] = _scan_permutation(network.get_submodule(ssm_name))
                value = _permute_directions(source, scan_orders[ssm_name], parameter)
            elif kind in ("merge_norm", "merge_reduction"):
                merging = network.get_submodule(key.rsplit(".", 2)[0])
                if tuple(merging.scale) != (2, 2):
                    report.skipped[key] = f"this merging takes {tuple(merging.scale)} neighbours, VMamba's takes (2, 2)"
                    continue
                if type(merging) not in merge_orders:
                    merge_orders[type(merging)] = _merge_permutation(type(merging))
                value = _permute_merge_blocks(source, merge_orders[type(merging)], kind)
            else:
                value = source
        mapped[key] = value.detach().to(dtype=target.dtype)
        report.loaded[key] = source_key
    used = set(report.loaded.values())
    report.unused = [key for key in state if key not in used]
    for order in sorted({tuple(order) for order in scan_orders.values() if order != sorted(order)}):
        report.notes.append(f"scan directions reordered from VMamba's by {list(order)}")
    for merging_class, order in merge_orders.items():
        if order != list(range(NEIGHBOURS_PER_MERGE)):
            report.notes.append(f"{merging_class.__name__} neighbours reordered from VMamba's by {order}")
    return mapped, report


def load_vmamba_pretrained(network: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Initialise a 2D VMUNet in place from the VMamba v0 checkpoint at ``path`` and report what happened.

    Only mapped tensors are loaded (``strict=False``); everything else keeps its initialisation.
    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for a 3D network, a file that is not
    a VMamba v0 checkpoint, or one of which nothing fits (e.g. another ``embed_dim``).
    """
    _require_2d_vm_unet(network)
    path = os.fspath(path)
    resolved = os.path.expanduser(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(
            f"VMamba checkpoint not found: {path!r} is not a file. Give the path of a local VMamba v0 "
            f"ImageNet checkpoint, e.g. vmamba_small_e238_ema.pth (VMamba-S, as used by VM-UNet) or "
            f"vmamba_tiny_e292.pth; nothing is downloaded.")
    checkpoint, ignored_objects = _read_checkpoint(resolved)
    mapped, report = vmamba_to_vm_unet_state_dict(checkpoint, network)
    report.source = path
    if ignored_objects:
        report.notes.append(f"ignored non-tensor objects in the file: {', '.join(ignored_objects)}")
    if not mapped:
        raise ValueError(_nothing_matched_message(report, network))
    network.load_state_dict(mapped, strict=False)
    return report


# --- checks ----------------------------------------------------------------------------------------

def _require_2d_vm_unet(network: nn.Module) -> None:
    from nnunet_mamba.architectures.vm_unet import VMUNet  # the architectures package never needs this module

    if not isinstance(network, VMUNet):
        raise TypeError(f"VMamba checkpoints map onto VMUNet only, got {type(network).__name__}")
    if network.spatial_dims != 2:
        raise ValueError(
            f"VMamba checkpoints are 2D (ImageNet) and this VMUNet is {network.spatial_dims}D "
            f"(conv_op nn.Conv3d): initialising a 3D network from them is not supported. Train the 3D "
            f"configuration from scratch (without a pretrained checkpoint), or use a 2d configuration.")


def _require_vmamba_v0(state: dict, where: str, checkpoint: Mapping) -> None:
    first_block = sorted({key[len(VMAMBA_V0_FIRST_BLOCK):].split(".")[0]
                          for key in state if key.startswith(VMAMBA_V0_FIRST_BLOCK)})
    if not first_block:
        examples = ", ".join(list(state)[:6]) or "none"
        top_level = ", ".join(str(key) for key in list(checkpoint)[:8])
        raise ValueError(
            f"not a VMamba checkpoint: {where} has no '{VMAMBA_V0_FIRST_BLOCK}*' weights. Found {len(state)} "
            f"tensors (e.g. {examples}); top-level keys: {top_level}. Expected VMamba's ImageNet release "
            f"(e.g. vmamba_small_e238_ema.pth) with its weights at the top level or under one of "
            f"{', '.join(CONTAINER_KEYS)}.")
    if "ln_1" not in first_block or "self_attention" not in first_block:
        raise ValueError(
            f"VMamba checkpoint of a later layout: {VMAMBA_V0_FIRST_BLOCK}* holds {', '.join(first_block)} "
            f"instead of v0's ln_1 and self_attention. Later VMamba releases (v2/v3, e.g. with 'op' and "
            f"'mlp') compute differently from VM-UNet's blocks; use a v0 checkpoint such as "
            f"vmamba_small_e238_ema.pth or vmamba_tiny_e292.pth.")


def _nothing_matched_message(report: PretrainedReport, network: nn.Module) -> str:
    expected = network.dims[0]
    if report.checkpoint_embed_dim is not None and report.checkpoint_embed_dim != expected:
        return (f"no tensor of {report.source} fits this VMUNet: the checkpoint is {report.variant}, the network "
                f"has embed_dim {expected}. Build the network with embed_dim {report.checkpoint_embed_dim} "
                f"(a trainer's network_overrides) or train from scratch.")
    reasons = "; ".join(f"{key}: {why}" for key, why in list(report.skipped.items())[:3])
    return f"no tensor of {report.source} fits this VMUNet ({report.variant}); e.g. {reasons or 'no counterparts'}"


def _shape_reason(source_key: str, source: torch.Tensor, target: torch.Tensor) -> str:
    return f"shape {tuple(source.shape)} of {source_key} does not fit {tuple(target.shape)}"


# --- key mapping and tensor transforms -------------------------------------------------------------

def _counterpart(key: str, num_levels: int) -> tuple[str, str] | None:
    """The VMamba v0 key that our ``key`` is initialised from, and the kind of transform; None if none."""
    if match := re.fullmatch(r"stem\.(proj|norm)\.(weight|bias)", key):
        return f"patch_embed.{match[1]}.{match[2]}", "stem_kernel" if key == "stem.proj.weight" else "copy"
    if match := re.fullmatch(r"(encoder|decoder)\.stages\.(\d+)\.(\d+)\.(.+)", key):
        part, stage, block, rest = match[1], int(match[2]), match[3], match[4]
        level = stage if part == "encoder" else num_levels - 1 - stage
        for ours, theirs in BLOCK_RENAMES:
            if rest.startswith(ours):
                kind = "directions" if rest[len(ours):] in DIRECTION_PARAMETERS else "copy"
                return f"layers.{level}.blocks.{block}.{theirs}{rest[len(ours):]}", kind
        return None
    if match := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(norm|reduction)\.(weight|bias)", key):
        return f"layers.{match[1]}.downsample.{match[2]}.{match[3]}", f"merge_{match[2]}"
    return None


def _adapt_stem_kernel(kernel: torch.Tensor, in_channels: int) -> torch.Tensor:
    if kernel.shape[1] == in_channels:
        return kernel
    repeats = (1, in_channels) + (1,) * (kernel.dim() - 2)
    return kernel.mean(dim=1, keepdim=True).repeat(repeats) * (kernel.shape[1] / in_channels)


def _scan_permutation(ssm: nn.Module) -> list[int]:
    """For each of our scan directions, the index of the same direction on VMamba's K axis."""
    grid = torch.arange(6.0).reshape(2, 3)  # not square, so that rows and columns read differently
    ours = ssm._cross_scan(grid.reshape(1, 1, 2, 3))[0, :, 0]
    rows, columns = grid.flatten(), grid.t().flatten()
    vmamba = [rows, columns, rows.flip(0), columns.flip(0)]
    order = []
    for k, sequence in enumerate(ours):
        matches = [j for j, theirs in enumerate(vmamba) if torch.equal(sequence, theirs)]
        if len(matches) != 1:
            raise ValueError(f"scan direction {k} of {type(ssm).__name__} reads {sequence.tolist()}, none of "
                             f"VMamba's four directions: its per-direction parameters cannot be mapped")
        order.append(matches[0])
    if sorted(order) != list(range(len(vmamba))):
        raise ValueError(f"{type(ssm).__name__}'s scan directions {order} do not cover VMamba's four once each")
    return order


def _permute_directions(tensor: torch.Tensor, order: list[int], name: str) -> torch.Tensor:
    k = len(order)
    if name in ("A_logs", "Ds"):  # stored flat as (K * E, ...), direction-major
        return tensor.reshape(k, -1, *tensor.shape[1:])[order].reshape(tensor.shape)
    return tensor[order]


def _merge_permutation(merging_class: type[nn.Module]) -> list[int]:
    """For each channel block of our 2x2 merging, the index of the same neighbour in VMamba's concatenation."""
    probe = merging_class(1, 1, (2, 2))
    probe.norm, probe.reduction = nn.Identity(), nn.Identity()
    labels = torch.tensor([[float(VMAMBA_MERGE_OFFSETS.index((h, w))) for w in range(2)] for h in range(2)])
    with torch.no_grad():
        order = [int(v) for v in probe(labels.reshape(1, 2, 2, 1)).reshape(-1)]
    if sorted(order) != list(range(NEIGHBOURS_PER_MERGE)):
        raise ValueError(f"{merging_class.__name__} does not concatenate the 2x2 neighbours once each: {order}")
    return order


def _permute_merge_blocks(tensor: torch.Tensor, order: list[int], kind: str) -> torch.Tensor:
    if kind == "merge_norm":
        return tensor.reshape(NEIGHBOURS_PER_MERGE, -1)[order].reshape(tensor.shape)
    return tensor.reshape(tensor.shape[0], NEIGHBOURS_PER_MERGE, -1)[:, order].reshape(tensor.shape)


# --- reading checkpoints ---------------------------------------------------------------------------

def _unwrap_state_dict(checkpoint) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"not a VMamba checkpoint: expected a state dict, found a {type(checkpoint).__name__}")
    state, where = checkpoint, "the checkpoint"
    if not any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        for key in CONTAINER_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                state, where = checkpoint[key], f"checkpoint[{key!r}]"
                break
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            name = str(key)
            while name.startswith("module."):  # DataParallel / DDP / EMA wrappers
                name = name[len("module."):]
            tensors[name] = value
    return tensors, where


def _embed_dim(state: dict) -> int | None:
    for key in ("patch_embed.proj.weight", f"{VMAMBA_V0_FIRST_BLOCK}ln_1.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def _depths(state: dict) -> tuple[int, ...]:
    blocks: dict[int, int] = {}
    for key in state:
        if match := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key):
            level, block = int(match[1]), int(match[2])
            blocks[level] = max(blocks.get(level, 0), block + 1)
    return tuple(blocks.get(level, 0) for level in range(max(blocks, default=-1) + 1))


def _read_checkpoint(path: str) -> tuple[object, list[str]]:
    """The unpickled file and the names of the non-tensor objects that were replaced by inert stand-ins."""
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
