"""Depthwise and pointwise convolutions as modules with ``nn.Conv2d``/``nn.Conv3d``'s parameters and state-dict
keys, computed on CPU by what runs them fastest there.

oneDNN, which PyTorch's CPU convolutions call, runs both kinds on 3D maps well below their arithmetic: on
LightM-UNet's 3D levels the numba kernel of :func:`nnunet_mamba.ops.depthwise_conv_same` is 3.6 to 16 times faster
forward and backward, a batched matrix product over the channels 1.8 to 2.3 times (``docs/benchmarks.md``, "CPU
efficiency, third part"). On 2D maps the network runs as fast either way. Subclasses rather than new modules:
checkpoints, nnU-Net's weight initialisation (``isinstance`` of a convolution) and thop (told by ``count_thop``)
see the convolutions they are. Each checks at construction that it is the convolution its forward computes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_mamba.blocks.channels_first import linear_channels_first
from nnunet_mamba.ops import depthwise_conv_same


def _check_settings(module: nn.Module, what: str, kernel_ok: bool, padding, groups: int) -> None:
    expected = (kernel_ok, module.stride, module.dilation, module.padding, module.groups, module.padding_mode)
    ones = (1,) * len(module.kernel_size)
    if expected != (True, ones, ones, padding, groups, "zeros"):
        raise ValueError(f"{type(module).__name__} is {what}: got kernel_size {module.kernel_size}, stride "
                         f"{module.stride}, dilation {module.dilation}, padding {module.padding}, groups "
                         f"{module.groups}, padding_mode {module.padding_mode!r}")


class _SizeKeepingDepthwise:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_settings(self, "a depthwise convolution with odd kernel sizes, stride 1 and padding of half the "
                              "kernel (zeros)", all(k % 2 for k in self.kernel_size),
                        tuple(k // 2 for k in self.kernel_size), self.in_channels)
        if self.out_channels != self.in_channels:
            raise ValueError(f"{type(self).__name__} maps every channel to itself: in_channels {self.in_channels}, "
                             f"out_channels {self.out_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv_same(x, self.weight, self.bias)


class DepthwiseConv2d(_SizeKeepingDepthwise, nn.Conv2d):
    """``nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels)``, k odd."""


class DepthwiseConv3d(_SizeKeepingDepthwise, nn.Conv3d):
    """``nn.Conv3d(channels, channels, k, padding=k // 2, groups=channels)``, k odd."""


class _Pointwise:
    """On CPU one batched product over the channels, with a channels-first (contiguous) output whatever the input's
    memory format; elsewhere, and in a JIT trace (fvcore counts convolutions, not a biased ``baddbmm``), the
    convolution itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_settings(self, "a 1^d convolution (stride 1, no padding, one group)",
                        all(k == 1 for k in self.kernel_size), (0,) * len(self.kernel_size), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.jit.is_tracing():  # cuDNN's 1^d convolutions are as fast as a product
            return super().forward(x)
        batch, _, *spatial = x.shape
        weight = self.weight.view(self.out_channels, self.in_channels)
        tokens = x.reshape(batch, self.in_channels, math.prod(spatial))  # no -1: an empty batch has no size to infer
        return linear_channels_first(tokens, weight, self.bias).view(batch, self.out_channels, *spatial)


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)``."""


class PointwiseConv3d(_Pointwise, nn.Conv3d):
    """``nn.Conv3d(in_channels, out_channels, 1)``."""


_DEPTHWISE = {nn.Conv2d: DepthwiseConv2d, nn.Conv3d: DepthwiseConv3d}
_POINTWISE = {nn.Conv2d: PointwiseConv2d, nn.Conv3d: PointwiseConv3d}
#: every class here; each is the convolution it subclasses (thop counts it as one, see ``count_thop``)
CONVOLUTION_CLASSES = (DepthwiseConv2d, DepthwiseConv3d, PointwiseConv2d, PointwiseConv3d)


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
