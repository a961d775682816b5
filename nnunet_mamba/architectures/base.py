"""The contract every nnunet-mamba network meets (written out in docs/adding-a-network.md).

A network is a plain ``nn.Module`` that knows nothing of trainers. nnU-Net and our trainers rely on:

* ``forward(x)`` takes channels-first images ``(batch, input_channels, *spatial)`` of any spatial size
  and returns logits ``(batch, num_classes, *spatial)`` (no softmax/sigmoid: nnU-Net applies its own);
  with deep supervision a list of logits, highest resolution first, the first at full resolution.
* ``decoder.deep_supervision`` switches deep supervision on and off (nnU-Net's
  ``set_deep_supervision_enabled`` writes it). A network with a single output sets
  ``supports_deep_supervision = False``: it returns one tensor, refuses ``deep_supervision=True`` at build time
  with a named error, and its ``decoder.deep_supervision`` reads False and ignores writes (nnU-Net writes True
  after its final validation), so ``decoder.seg_layers`` holds its one head.
* Every output head lives in ``decoder.seg_layers``: nnU-Net's ``-pretrained_weights`` transfers every
  key except those containing ``.seg_layers.``, so a model can be fine-tuned on a dataset with another
  number of classes.
* ``deep_supervision_scales()``: the scale of every output per axis (nnU-Net downsamples its targets
  with them). The default here: output 0 at full resolution, output ``i`` on the grid of level ``i``.
* ``compute_conv_feature_map_size(input_size)``: activation elements of one forward pass, what
  nnU-Net's planners budget memory with.
* ``from_plan(configuration_manager, num_input_channels, num_output_channels, deep_supervision,
  **overrides)``: the network for one plan configuration; the registry (``build_network``) calls it. The base
  class's reads ``pools_per_level`` (and ``plan_arguments`` for more plan entries).
* ``forward_padded(x)``: the body; the base class's ``forward`` pads the input to the total stride and crops the
  logits back.
* ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` (dynamic-network-architectures' keys for
  nnU-Net's pretrained-weight transfer).

Optional capabilities, offered by overriding:

* ``load_pretrained(path) -> PretrainedReport``: initialise from a public checkpoint (each network maps
  its own keys); the default says it is not supported for this network.
* :class:`LevelFeatureNetwork`: level features for feature distillation (``level_dims``,
  ``level_strides()``, ``level_feature_modules()``).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, convert_dim_to_conv_op
from torch import nn

from nnunet_mamba.architectures.plans import strides_from_plan


class PretrainedNotSupported(NotImplementedError):
    """The network has no mapping from public checkpoints."""


class SegmentationNetwork(AbstractDynamicNetworkArchitectures):
    """Base class of our networks: the shared parts of the contract (see the module docstring).

    Subclasses set ``conv_op`` (decides 2D/3D), ``strides`` (per level, per axis; level 0 is the stem),
    ``pools_per_level`` (how plan poolings group into those strides), build ``decoder`` with ``deep_supervision``
    and ``seg_layers``, and write ``forward_padded``.
    """

    #: registry name, set by ``register_network``
    network_name: str = ""
    #: False for networks with a single output (no deep supervision); see the module docstring
    supports_deep_supervision: bool = True
    #: renames of state-dict key prefixes used by earlier versions of the network, old -> new; applied
    #: whenever a state dict is loaded, so older checkpoints keep loading (prediction, --c)
    legacy_key_prefixes: dict[str, str] = {}
    #: plan poolings per level, level 0 first: a level's stride is the product of its poolings (``strides`` of
    #: the constructor, see :func:`~nnunet_mamba.architectures.plans.strides_from_plan`)
    pools_per_level: tuple[int, ...] = ()

    def __init__(self, conv_op: type[nn.Module]):
        super().__init__()
        if conv_op not in (nn.Conv2d, nn.Conv3d):
            raise ValueError(f"{type(self).__name__} supports conv_op nn.Conv2d or nn.Conv3d, got {conv_op}")
        self.conv_op = conv_op
        self.spatial_dims = convert_conv_op_to_dim(conv_op)
        self.register_load_state_dict_pre_hook(
            lambda module, state_dict, prefix, *args: self.upgrade_legacy_keys(state_dict, prefix))

    # --- building from plans ------------------------------------------------------------------------------

    @classmethod
    def from_plan(cls, configuration_manager, num_input_channels: int, num_output_channels: int,
                  deep_supervision: bool, **overrides) -> "SegmentationNetwork":
        """The network for one plan configuration: ``conv_op`` from its dimensionality, ``input_shape`` its patch,
        ``strides`` its poolings grouped by :meth:`plan_pools_per_level` (a network adds plan entries in
        :meth:`plan_arguments`); ``overrides`` replace any constructor argument."""
        cls.check_deep_supervision_request(deep_supervision)
        kwargs = cls.plan_arguments(configuration_manager, overrides) | overrides
        return cls(num_input_channels, num_output_channels, deep_supervision=deep_supervision, **kwargs)

    @classmethod
    def plan_pools_per_level(cls, overrides: dict) -> tuple[int, ...]:
        """Plan poolings per level of the network built with ``overrides`` (:attr:`pools_per_level` unless the
        number of levels is a constructor argument)."""
        return cls.pools_per_level

    @classmethod
    def plan_arguments(cls, configuration_manager, overrides: dict) -> dict:
        """Constructor arguments read from the plan configuration."""
        input_shape = [int(p) for p in configuration_manager.patch_size]
        spatial_dims = len(input_shape)
        return {
            "conv_op": convert_dim_to_conv_op(spatial_dims),
            "input_shape": input_shape,
            "strides": strides_from_plan(configuration_manager.pool_op_kernel_sizes, spatial_dims,
                                         cls.plan_pools_per_level(overrides)),
        }

    # --- strides and padding ------------------------------------------------------------------------------

    def per_axis(self, stride: int | Sequence[int]) -> tuple[int, ...]:
        """A stride given as one int or one int per axis, as a tuple with one entry per spatial axis."""
        if isinstance(stride, (int, np.integer)):
            stride = (int(stride),) * self.spatial_dims
        stride = tuple(int(s) for s in stride)
        if len(stride) != self.spatial_dims:
            raise ValueError(f"stride {list(stride)} does not match {self.spatial_dims} spatial dimensions")
        if any(s < 1 for s in stride):
            raise ValueError(f"strides must be >= 1, got {list(stride)}")
        return stride

    @property
    def total_stride(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.prod(self.strides, axis=0))

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        """A clear error for a training patch of the wrong dimensionality or smaller than the total stride."""
        name = type(self).__name__
        if len(input_shape) != self.spatial_dims:
            raise ValueError(f"input shape (patch size) {list(input_shape)} has {len(input_shape)} axes but this "
                             f"{name} is {self.spatial_dims}D (conv_op)")
        too_small = [axis for axis, (p, s) in enumerate(zip(input_shape, self.total_stride)) if p < s]
        if too_small:
            raise ValueError(
                f"patch size {list(input_shape)} is too small for the network depth: axes {too_small} are smaller "
                f"than the total downsampling {list(self.total_stride)} of {name} (strides per level "
                f"{[list(s) for s in self.strides]}). Use a larger patch size or smaller strides on those axes.")

    def pad_to_total_stride(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the spatial axes at their ends up to a multiple of the total stride."""
        spatial = x.shape[2:]
        padded = [math.ceil(size / s) * s for size, s in zip(spatial, self.total_stride)]
        if list(padded) == list(spatial):
            return x
        pad = []
        for size, target in reversed(list(zip(spatial, padded))):
            pad += [0, target - size]
        return F.pad(x, pad)

    def crop_outputs(self, outputs, spatial: Sequence[int]):
        """Undo :meth:`pad_to_total_stride` on the logits (every deep-supervision output at its scale)."""
        if not isinstance(outputs, (list, tuple)):
            return outputs[(..., *(slice(0, s) for s in spatial))]
        cropped = []
        for out, scale in zip(outputs, self.deep_supervision_scales()):
            size = [max(1, round(s * f)) for s, f in zip(spatial, scale)]
            cropped.append(out[(..., *(slice(0, s) for s in size))])
        return cropped

    # --- forward -------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor):
        """Pad to a multiple of the total stride, run :meth:`forward_padded`, crop the logits back."""
        spatial = x.shape[2:]
        padded = self.pad_to_total_stride(x)
        outputs = self.forward_padded(padded)
        return outputs if padded.shape == x.shape else self.crop_outputs(outputs, spatial)

    def forward_padded(self, x: torch.Tensor):
        """The logits (a list with deep supervision) of an input whose size is a multiple of the total stride."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_padded")

    # --- deep supervision ---------------------------------------------------------------------------------

    @classmethod
    def check_deep_supervision_request(cls, deep_supervision: bool) -> None:
        """A named error when deep supervision is asked of a network that has a single output."""
        if deep_supervision and not cls.supports_deep_supervision:
            raise ValueError(f"{cls.__name__} has a single output and no deep supervision: build it with "
                             f"deep_supervision=False (its trainers set enable_deep_supervision = False)")

    def deep_supervision_scales(self) -> list[list[float]]:
        """Scale of every output per axis, highest resolution first: full resolution, then levels 1, 2, ..."""
        level_strides = np.cumprod(np.array(self.strides), axis=0)
        outputs = len(self.decoder.seg_layers)
        return [[1.0] * self.spatial_dims] + [[float(1.0 / s) for s in level_strides[level]]
                                              for level in range(1, outputs)]

    # --- planning -----------------------------------------------------------------------------------------

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_conv_feature_map_size")

    def level_grids(self, input_size: Sequence[int]) -> list[list[int]]:
        """The grid of ``input_size`` padded to the total stride (as :meth:`forward` pads it), then after each
        of ``self.strides`` in turn: the sizes the blocks' memory counts take, one per level, input first."""
        if len(input_size) != self.spatial_dims:
            raise ValueError(f"input size {list(input_size)} does not match {self.spatial_dims}D")
        grid = [math.ceil(int(size) / s) * s for size, s in zip(input_size, self.total_stride)]
        grids = [grid]
        for stride in self.strides:
            grid = [g // s for g, s in zip(grid, stride)]
            grids.append(grid)
        return grids

    # --- optional capabilities ----------------------------------------------------------------------------

    def load_pretrained(self, path):
        raise PretrainedNotSupported(
            f"initialisation from a pretrained checkpoint is not supported for {type(self).__name__} "
            f"({self.network_name or 'unregistered'}); train it from scratch")

    @property
    def supports_pretrained(self) -> bool:
        return type(self).load_pretrained is not SegmentationNetwork.load_pretrained

    # --- state-dict compatibility -------------------------------------------------------------------------

    def upgrade_legacy_keys(self, state_dict: dict, prefix: str = "") -> None:
        """Rename, in place, the keys an earlier version of this network used (:attr:`legacy_key_prefixes`)."""
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            local = key[len(prefix):]
            for old, new in self.legacy_key_prefixes.items():
                if local.startswith(old):
                    state_dict[prefix + new + local[len(old):]] = state_dict.pop(key)
                    break


class NoDeepSupervisionDecoder(nn.Module):
    """Decoder with one output. ``deep_supervision`` reads False and ignores writes, so nnU-Net's
    ``set_deep_supervision_enabled`` (which writes True after its final validation) works unchanged."""

    @property
    def deep_supervision(self) -> bool:
        return False

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        pass


class LevelFeatureNetwork:
    """Capability: level features f_1..f_M of encoder and decoder, for feature distillation.

    ``level_dims``: channels per level, shallowest first. ``level_strides()``: per-axis stride from level l
    to level l + 1. ``level_feature_modules()``: (encoder modules, decoder modules), shallowest first, whose
    outputs are the level features, channels-last ``(batch, *spatial, level_dims[l])``.
    """

    level_dims: list[int]

    def level_strides(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def level_feature_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        raise NotImplementedError
