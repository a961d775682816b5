"""Patch embedding, merging and expanding for 2D and 3D, channels-last, with a scale per axis.

nnU-Net plans are often anisotropic (a 3D stage may pool by [1, 2, 2]), so every layer here takes one
scale factor per spatial axis instead of a single integer. Tokens live channels-last,
``(batch, *spatial, channels)``, because LayerNorm and the linear layers act on the last axis.

Channel layouts follow VMamba/VM-UNet so that 2D ImageNet checkpoints map one to one: merging
concatenates the neighbours with the first spatial offset varying fastest (x[0::2,0::2],
x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]); expanding splits the channels as (offset_0, offset_1, c).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunet_mamba.blocks.layer_norm import LAYER_NORM_STATS_PER_TOKEN, layer_norm_saved_elements


def _as_scale(scale: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(scale, int):
        return (scale,) * spatial_dims
    scale = tuple(int(s) for s in scale)
    if len(scale) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} scale factors (one per spatial axis), got {list(scale)}")
    if any(s < 1 for s in scale):
        raise ValueError(f"scale factors must be >= 1, got {list(scale)}")
    return scale


class PatchEmbedding(nn.Module):
    """Non-overlapping strided convolution into ``embed_dim`` channels, then LayerNorm.

    ``patch_embed_size`` is the size (= stride) of the embedded patches per axis, as in
    dynamic-network-architectures' Primus; the training patch is the network's ``input_shape``.

    Takes channels-first images ``(B, C, *spatial)`` and returns channels-last tokens.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_embed_size: int | Sequence[int],
                 conv_op: type[nn.Module]):
        super().__init__()
        self.patch_embed_size = _as_scale(patch_embed_size, convert_conv_op_to_dim(conv_op))
        self.proj = conv_op(in_channels, embed_dim, kernel_size=self.patch_embed_size, stride=self.patch_embed_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.movedim(self.proj(x), 1, -1))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on an image of ``input_size`` (a multiple of the patch): the strided
        convolution keeps the image, the LayerNorm the embedded tokens."""
        tokens = math.prod(size // p for size, p in zip(input_size, self.patch_embed_size))
        return (self.proj.in_channels * math.prod(input_size)
                + layer_norm_saved_elements(self.norm.normalized_shape[0], tokens))


class PatchMerging(nn.Module):
    """Downsample by ``scale`` per axis: gather each block of neighbours into channels, norm, project to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        merged = dim * math.prod(self.scale)
        self.norm = nn.LayerNorm(merged)
        self.reduction = nn.Linear(merged, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, *spatial, channels = x.shape
        n = len(spatial)
        blocks = []
        for size, s in zip(spatial, self.scale):
            blocks += [size // s, s]
        x = x.reshape(batch, *blocks, channels)
        coarse_axes = [1 + 2 * i for i in range(n)]
        offset_axes = [2 + 2 * i for i in reversed(range(n))]  # first axis' offset varies fastest
        x = x.permute(0, *coarse_axes, *offset_axes, 2 * n + 1)
        x = x.reshape(batch, *(size // s for size, s in zip(spatial, self.scale)), channels * math.prod(self.scale))
        return self.reduction(self.norm(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on a grid of ``input_size``: the gathered neighbours go through the
        LayerNorm and the linear reduction, both keep them."""
        gathered = self.norm.normalized_shape[0] * math.prod(size // s for size, s in zip(input_size, self.scale))
        tokens_out = gathered // self.norm.normalized_shape[0]
        return 2 * gathered + tokens_out * LAYER_NORM_STATS_PER_TOKEN


class PatchExpanding(nn.Module):
    """Upsample by ``scale`` per axis: project to ``prod(scale) * out_dim`` channels, scatter them, norm."""

    def __init__(self, dim: int, out_dim: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        self.out_dim = out_dim
        self.expand = nn.Linear(dim, math.prod(self.scale) * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, *spatial, _ = x.shape
        n = len(spatial)
        x = self.expand(x).reshape(batch, *spatial, *self.scale, self.out_dim)
        interleaved = [axis for i in range(n) for axis in (1 + i, 1 + n + i)]
        x = x.permute(0, *interleaved, 2 * n + 1)
        x = x.reshape(batch, *(size * s for size, s in zip(spatial, self.scale)), self.out_dim)
        return self.norm(x)

    def init_sub_positions_alike(self) -> None:
        """Start every output sub-position from the same projection (ICNR, Aitken et al. 2017), so that the layer
        starts as a nearest-neighbour upsampling followed by its norm.

        Drawn independently, the ``prod(scale)`` projections paint a fixed pattern with the period of ``scale``
        over every token, the same whatever the image; after a norm over few channels that pattern outweighs
        the image's content (VM-UNet's final 4x expanding to C/4 channels). The network then starts almost blind
        to its input, and each class leaves the all-background start at an iteration that depends on the seed.
        """
        with torch.no_grad():
            per_position = self.expand.weight.view(math.prod(self.scale), self.out_dim, self.expand.in_features)
            per_position.copy_(per_position[:1].expand_as(per_position).clone())

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward on a grid of ``input_size``: the linear expansion keeps its input, the
        LayerNorm the scattered output."""
        tokens_in = math.prod(input_size)
        return (self.expand.in_features * tokens_in
                + layer_norm_saved_elements(self.out_dim, tokens_in * math.prod(self.scale)))
