"""Depthwise and pointwise convolutions as modules with ``nn.Conv2d``/``nn.Conv3d``'s parameters and state-dict
keys, computed on CPU by what runs them fastest there.

oneDNN, which PyTorch's CPU convolutions call, runs both kinds in 3D well below their arithmetic. On LightM-UNet's
3D first level (32 channels, 64^3, 2 threads), forward and backward: a depthwise 3^3 convolution 0.98 s against
0.17 s for the numba kernel of :func:`nnunet_mamba.ops.depthwise_conv_same`, a depthwise 1^3 one (a scale and
shift per channel) 0.15 s against 0.04 s, a 32 -> 32 pointwise one 0.16 s against 0.09 s for a batched matrix
product, a 32 -> 3 one 74 ms against 32 ms. In 2D both ways take the same time. Subclasses rather than new
modules: checkpoints, nnU-Net's weight initialisation (``isinstance`` of a convolution) and thop (told by
``count_thop``) see the convolutions they are.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_mamba.blocks.channels_first import linear_channels_first
from nnunet_mamba.ops import depthwise_conv_same


class _SizeKeepingDepthwise:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv_same(x, self.weight, self.bias)


class DepthwiseConv2d(_SizeKeepingDepthwise, nn.Conv2d):
    """``nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels)``, k odd."""


class DepthwiseConv3d(_SizeKeepingDepthwise, nn.Conv3d):
    """``nn.Conv3d(channels, channels, k, padding=k // 2, groups=channels)``, k odd."""


class _Pointwise:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # cuDNN's 1^d convolutions are as fast as a matrix product
            return super().forward(x)
        batch, _, *spatial = x.shape
        weight = self.weight.view(self.out_channels, self.in_channels)
        tokens = x.reshape(batch, self.in_channels, math.prod(spatial))  # no -1: an empty batch has no size to infer
        return linear_channels_first(tokens, weight, self.bias).view(batch, self.out_channels, *spatial)


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)``: on CPU one batched matrix product over the channels."""


class PointwiseConv3d(_Pointwise, nn.Conv3d):
    """``nn.Conv3d(in_channels, out_channels, 1)``: on CPU one batched matrix product over the channels."""


_DEPTHWISE = {nn.Conv2d: DepthwiseConv2d, nn.Conv3d: DepthwiseConv3d}
_POINTWISE = {nn.Conv2d: PointwiseConv2d, nn.Conv3d: PointwiseConv3d}
#: every class here, with the convolution thop must count it as
THOP_CONVOLUTIONS = (DepthwiseConv2d, DepthwiseConv3d, PointwiseConv2d, PointwiseConv3d)


def _subclass_of(table: dict, conv_op) -> type:
    try:
        return table[conv_op]
    except KeyError:
        raise ValueError(f"conv_op must be nn.Conv2d or nn.Conv3d, got {conv_op!r}") from None


def depthwise_conv(conv_op, channels: int, kernel_size: int, bias: bool) -> nn.Module:
    """A size-keeping depthwise ``conv_op`` (``nn.Conv2d`` or ``nn.Conv3d``) of odd ``kernel_size``."""
    if kernel_size % 2 == 0:
        raise ValueError(f"depthwise_conv keeps the map's size only with an odd kernel, got {kernel_size}")
    return _subclass_of(_DEPTHWISE, conv_op)(channels, channels, kernel_size, padding=kernel_size // 2,
                                              groups=channels, bias=bias)


def pointwise_conv(conv_op, in_channels: int, out_channels: int, bias: bool) -> nn.Module:
    """A 1^d ``conv_op`` (``nn.Conv2d`` or ``nn.Conv3d``)."""
    return _subclass_of(_POINTWISE, conv_op)(in_channels, out_channels, 1, bias=bias)
