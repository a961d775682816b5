"""Reading VMamba v0 ImageNet checkpoints, shared by every network that starts from them.

VMamba's first release ("v0") is the one VM-UNet, DSVM-UNet and Swin-UMamba build on. What is shared
here: recognising a v0 checkpoint (and refusing later layouts), the names of a v0 VSS block's tensors
relative to ours (:func:`vmamba_v0_block_key`), adapting the RGB stem kernel to other channel counts,
and loading shape-checked tensors with a report. What is not: which VMamba key each network tensor comes
from. A network maps its own keys (``counterpart(key) -> (vmamba_key, kind) | None``) in its
``load_pretrained`` and calls :func:`load_vmamba_v0`.

Semantics, not only shapes, agree: VMamba v0 orders its K = 4 scan directions row-major, column-major,
reversed row-major, reversed column-major, and its 2x2 patch merging concatenates ``x[0::2, 0::2],
x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``; our SS2D and :class:`~nnunet_mamba.blocks.PatchMerging`
use the same orders (tests check both against independent references), so tensors are copied as they are.

Input channels: VMamba's stem kernel is RGB. With ``c != 3`` input channels every channel gets the mean of
the RGB kernel scaled by ``3 / c``, so an image repeated on all ``c`` channels gives the response VMamba
gives to that image in grey (for ``c = 1`` the summed RGB kernel, as VM-UNet does by repeating a grey
image to 3 channels). nnU-Net's z-scored intensities are not ImageNet's normalisation: the weights are a
starting point, not a frozen feature extractor.

Variants (v0): VMamba-T and -S have embed_dim 96 (96, 192, 384, 768) and depths 2, 2, 9, 2 / 2, 2, 27, 2;
VMamba-B is 128 wide. Facts from public code: JCruan519/VM-UNet ``models/vmunet/vmamba.py`` and
``vmunet.py`` (``load_from``), MzeroMiko/VMamba ``classification/models/vmamba.py`` and its v0 configs.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from nnunet_mamba.pretrained.checkpoint_io import CONTAINER_KEYS, read_checkpoint, unwrap_state_dict

VMAMBA_V0_FIRST_BLOCK = "layers.0.blocks.0."
KNOWN_VARIANTS = {
    (96, (2, 2, 9, 2)): "VMamba-T",
    (96, (2, 2, 27, 2)): "VMamba-S",
    (128, (2, 2, 27, 2)): "VMamba-B",
}
#: our VSS-block-relative prefixes and VMamba v0's, most specific first
BLOCK_RENAMES = (
    ("ssm.depthwise_conv.", "self_attention.conv2d."),
    ("ssm.", "self_attention."),
    ("norm.", "ln_1."),
)
#: how a network tensor is made from its VMamba counterpart
COPY, STEM_KERNEL, MERGE_2X2 = "copy", "stem_kernel", "merge_2x2"
#: VMamba's ImageNet checkpoints embed RGB images
VMAMBA_INPUT_CHANNELS = 3

#: network key -> (VMamba key, kind) or None when VMamba has no counterpart
Counterpart = Callable[[str], Optional[tuple[str, str]]]


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


def vmamba_v0_block_key(level: int, block: int | str, relative_key: str) -> str | None:
    """The v0 key of one of our VSS block tensors (``relative_key`` inside the block), or None."""
    for ours, theirs in BLOCK_RENAMES:
        if relative_key.startswith(ours):
            return f"layers.{level}.blocks.{block}.{theirs}{relative_key[len(ours):]}"
    return None


def vmamba_v0_encoder_counterpart(key: str) -> tuple[str, str] | None:
    """The v0 counterpart of a key inside an encoder laid out as VMamba's (``patch_embed``, ``stages.{level}``
    of VSS blocks, ``downsamples.{level}`` between them), or None. The patch embedding's kernel is adapted
    to the input channels (:data:`STEM_KERNEL`); a network that embeds differently maps it itself.
    """
    if match := re.fullmatch(r"patch_embed\.(proj|norm)\.(weight|bias)", key):
        return f"patch_embed.{match[1]}.{match[2]}", STEM_KERNEL if key == "patch_embed.proj.weight" else COPY
    if match := re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", key):
        source = vmamba_v0_block_key(int(match[1]), match[2], match[3])
        return None if source is None else (source, COPY)
    if match := re.fullmatch(r"downsamples\.(\d+)\.(norm|reduction)\.(weight|bias)", key):
        return f"layers.{match[1]}.downsample.{match[2]}.{match[3]}", MERGE_2X2
    return None


def map_vmamba_v0_state_dict(vmamba_state: Mapping, network: nn.Module, counterpart: Counterpart,
                             stem_key: str) -> tuple[dict[str, torch.Tensor], PretrainedReport]:
    """Map a VMamba v0 state dict onto ``network``'s keys through ``counterpart``; nothing is loaded here.

    ``vmamba_state`` is the state dict itself or a checkpoint holding it (``model``, ``model_ema``, ...).
    ``stem_key`` is the network's stem convolution (its input channels decide the kernel adaptation).
    Tensors whose shapes do not fit are left out and reported in ``skipped``, never reshaped.
    """
    state, where = unwrap_state_dict(vmamba_state, "VMamba checkpoint")
    require_vmamba_v0(state, where, vmamba_state)
    report = PretrainedReport(checkpoint_embed_dim=_embed_dim(state), checkpoint_depths=_depths(state))
    in_channels = network.get_submodule(stem_key).in_channels
    mapped: dict[str, torch.Tensor] = {}
    for key, target in network.state_dict().items():
        found = counterpart(key)
        if found is None:
            report.missing.append(key)
            continue
        source_key, kind = found
        if source_key not in state:
            report.skipped[key] = f"{source_key} is not in the checkpoint"
            continue
        source = state[source_key]
        if kind == STEM_KERNEL:
            if source.shape[:1] + source.shape[2:] != target.shape[:1] + target.shape[2:]:
                report.skipped[key] = _shape_reason(source_key, source, target)
                continue
            value = adapt_stem_kernel(source, in_channels)
            if in_channels != source.shape[1]:
                report.notes.append(f"stem kernel: mean of the {source.shape[1]} RGB filters, repeated on "
                                    f"{in_channels} input channel(s), scaled by {source.shape[1]}/{in_channels}")
        else:
            if source.shape != target.shape:
                report.skipped[key] = _shape_reason(source_key, source, target)
                continue
            if kind == MERGE_2X2:
                scale = tuple(network.get_submodule(key.rsplit(".", 2)[0]).scale)
                if scale != (2, 2):
                    report.skipped[key] = f"this merging takes {scale} neighbours, VMamba's takes (2, 2)"
                    continue
            value = source
        mapped[key] = value.detach().to(dtype=target.dtype)
        report.loaded[key] = source_key
    used = set(report.loaded.values())
    report.unused = [key for key in state if key not in used]
    return mapped, report


def load_vmamba_v0(network: nn.Module, path: str | os.PathLike, counterpart: Counterpart,
                   stem_key: str) -> PretrainedReport:
    """Initialise ``network`` in place from the VMamba v0 checkpoint at ``path`` and report what happened.

    Only mapped tensors are loaded (``strict=False``); everything else keeps its initialisation. Raises
    ``FileNotFoundError`` for a missing file, ``ValueError`` for a 3D network, for a file that is not a VMamba
    v0 checkpoint or of which nothing fits (e.g. another ``embed_dim``).
    """
    if getattr(network, "spatial_dims", 2) != 2:
        raise ValueError(
            f"VMamba checkpoints are 2D (ImageNet) and this {type(network).__name__} is {network.spatial_dims}D: "
            f"initialising a 3D network from them is not supported. Train the 3D configuration from scratch, or "
            f"use a 2d configuration.")
    path = os.fspath(path)
    resolved = os.path.expanduser(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(
            f"VMamba checkpoint not found: {path!r} is not a file. Give the path of a local VMamba v0 "
            f"ImageNet checkpoint, e.g. vmamba_small_e238_ema.pth (VMamba-S, as used by VM-UNet) or "
            f"vmamba_tiny_e292.pth; nothing is downloaded.")
    checkpoint, ignored_objects = read_checkpoint(resolved)
    mapped, report = map_vmamba_v0_state_dict(checkpoint, network, counterpart, stem_key)
    report.source = path
    if ignored_objects:
        report.notes.append(f"ignored non-tensor objects in the file: {', '.join(ignored_objects)}")
    if not mapped:
        raise ValueError(_nothing_matched_message(report, network, stem_key))
    network.load_state_dict(mapped, strict=False)
    return report


def require_vmamba_v0(state: dict, where: str, checkpoint: Mapping) -> None:
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
            f"'mlp') compute differently from our VSS blocks; use a v0 checkpoint such as "
            f"vmamba_small_e238_ema.pth or vmamba_tiny_e292.pth.")


def adapt_stem_kernel(kernel: torch.Tensor, in_channels: int) -> torch.Tensor:
    if kernel.shape[1] == in_channels:
        return kernel
    repeats = (1, in_channels) + (1,) * (kernel.dim() - 2)
    return kernel.mean(dim=1, keepdim=True).repeat(repeats) * (kernel.shape[1] / in_channels)


def _nothing_matched_message(report: PretrainedReport, network: nn.Module, stem_key: str) -> str:
    name = type(network).__name__
    expected = network.get_submodule(stem_key).out_channels
    if report.checkpoint_embed_dim is not None and report.checkpoint_embed_dim != expected:
        return (f"no tensor of {report.source} fits this {name}: the checkpoint is {report.variant}, the network "
                f"has embed_dim {expected}. Build the network with embed_dim {report.checkpoint_embed_dim} "
                f"(a registered variant, see register_variant) or train from scratch.")
    reasons = "; ".join(f"{key}: {why}" for key, why in list(report.skipped.items())[:3])
    return f"no tensor of {report.source} fits this {name} ({report.variant}); e.g. {reasons or 'no counterparts'}"


def _shape_reason(source_key: str, source: torch.Tensor, target: torch.Tensor) -> str:
    return f"shape {tuple(source.shape)} of {source_key} does not fit {tuple(target.shape)}"


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
