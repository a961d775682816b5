"""Max-pooling over windows as large as their stride (LightM-UNet's and UltraLBM-UNet's down-sampling), with a
faster path for CPU inference.

PyTorch's CPU ``max_pool2d``/``max_pool3d`` run these windows at a fraction of what reading the map costs: 1.8 to
6.7 times slower on LightM-UNet's maps than taking the maximum of the strided views one axis at a time with
``torch.maximum`` (each step halves the data the next one reads; ``examples/inference_ops_timing.py``,
``docs/benchmarks.md``, "CPU efficiency, fifth part"). The values are the same: a maximum does not depend on the
order it is taken in, and ``torch.maximum`` propagates NaN as max-pooling does.

The gradients would not be: max-pooling sends a window's gradient to its first maximum, ``torch.maximum`` splits it
between equal values. So :func:`max_pool` takes the fast path only where no gradient is recorded (inference,
``nnUNetv2_predict``, validation) and calls PyTorch's pooling in training, on CUDA tensors, under CPU autocast (which
runs 3D max-pooling in float32), in a JIT trace and under a dispatch mode (FLOP counters see the pooling they
expect), and where a window is larger than the map (PyTorch's error). A stride of 1 on every axis returns the input
itself, in training too: pooling nothing keeps nothing for backward.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _ntuple

from nnunet_mamba.ops.cpu_inference import unobserved_cpu_inference


def _fast_path_applies(x: torch.Tensor, stride: tuple[int, ...]) -> bool:
    return unobserved_cpu_inference(x) and all(size >= s for size, s in zip(x.shape[2:], stride))


def _max_of_strided_views(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    for axis, step in enumerate(stride, start=2):
        if step == 1:
            continue
        kept = x.shape[axis] // step * step  # a partial last window is dropped, as max-pooling's floor mode does
        windows = x.narrow(axis, 0, kept).unflatten(axis, (kept // step, step))
        reduced = windows.select(axis + 1, 0)
        for offset in range(1, step):
            reduced = torch.maximum(reduced, windows.select(axis + 1, offset))
        x = reduced
    return x


def max_pool(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """``F.max_pool2d``/``F.max_pool3d`` of ``x`` (batch, channels, *spatial) with kernel = stride (one per spatial
    axis), no padding, floor mode."""
    stride = tuple(int(s) for s in stride)
    if x.dim() not in (4, 5) or len(stride) != x.dim() - 2 or min(stride) < 1:
        raise ValueError(f"max_pool takes (batch, channels, *spatial) with 2 or 3 spatial axes and one positive "
                         f"stride per axis, got shape {tuple(x.shape)} and stride {stride}")
    if all(s == 1 for s in stride):
        return x
    if _fast_path_applies(x, stride):
        return _max_of_strided_views(x, stride)
    return (F.max_pool2d if x.dim() == 4 else F.max_pool3d)(x, stride, stride)


class _StridedMaxPool:
    """``nn.MaxPool2d``/``nn.MaxPool3d`` (kernel = stride, no padding) computed by :func:`max_pool`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        per_axis = _ntuple(2 if isinstance(self, nn.MaxPool2d) else 3)
        kernel, stride, padding, dilation = (tuple(int(v) for v in per_axis(value)) for value in
                                             (self.kernel_size, self.stride, self.padding, self.dilation))
        if (kernel != stride or any(padding) or any(d != 1 for d in dilation) or self.ceil_mode
                or self.return_indices):
            raise ValueError(f"{type(self).__name__} pools windows as large as their stride (no padding, dilation 1, "
                             f"floor mode, no indices), got kernel_size {self.kernel_size}, stride {self.stride}, "
                             f"padding {self.padding}, dilation {self.dilation}, ceil_mode {self.ceil_mode}, "
                             f"return_indices {self.return_indices}")
        self._window = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool(x, self._window)


class MaxPool2d(_StridedMaxPool, nn.MaxPool2d):
    """``nn.MaxPool2d(kernel_size=s, stride=s)``."""


class MaxPool3d(_StridedMaxPool, nn.MaxPool3d):
    """``nn.MaxPool3d(kernel_size=s, stride=s)``."""
