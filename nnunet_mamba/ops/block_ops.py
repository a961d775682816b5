"""The blocks' ops other than the selective scan, each with a compiled CPU kernel (numba) and PyTorch beside it:

* :func:`causal_conv1d_silu`: the Mamba block's causal depthwise convolution and its SiLU. For CUDA tensors
  ``causal_conv1d``'s kernel when that package imports.
* :func:`layer_norm_channels_first`: LayerNorm over the channels of a (batch, channels, L) map, which
  ``F.layer_norm`` can only reach through a transposed copy.
* :func:`depthwise_conv_same`: a depthwise 2D or 3D convolution with odd kernels, stride 1 and the zero padding
  that keeps the size (LightM-UNet's), which oneDNN runs several times slower than its arithmetic allows.
* :func:`channels_linear`: ``nn.Linear`` over the channels of a channels-first map where PyTorch's CPU products fall
  short: at most ``FEW_INPUTS`` input channels (the Mamba block's dt projection, rank ceil(d_model / 16)), where
  ``bmm`` and oneDNN's 1-wide convolution took 2 to 3 times as long as writing the output, and contiguous maps of at
  least ``LONG_SEQUENCE`` positions (LightM-UNet's first levels), where ``bmm`` ran at 20-35 GFLOP/s and the
  convolution at 30-50 against the kernel's 45-70 (``docs/benchmarks.md``, "CPU efficiency, seventh part"). In
  training the input's gradient is the same kernel's product, the weight's ``bmm``'s.
* :func:`linear_upsample_add`: bilinear or trilinear up-sampling (``align_corners=False``) with a skip map added,
  LightM-UNet's decoder step. In CPU inference only (its numba kernel has no backward), one pass that writes the
  sum, where PyTorch's trilinear interpolation ran at a tenth of the speed of writing its output and the sum took a
  second pass.

The numba kernels (:mod:`nnunet_mamba.ops.numba_block_kernels`) run for float32 and float64 CPU tensors wherever
the selective scan runs numba's (the CPU default; ``NNUNET_MAMBA_SCAN=torch`` gives PyTorch's everywhere), except
under CPU autocast (whose bfloat16 convolution and float32 LayerNorm PyTorch's ops keep), under a dispatch mode
(FLOP counters, fake tensors) and in a JIT trace, which must see aten ops. PyTorch's versions are also the
references the tests hold the kernels to.

The fused causal convolution saves only its input and recomputes the pre-activation in the backward; PyTorch's
saves the input padded by K - 1 positions and the pre-activation. The Mamba block's memory count is that of the
fused one (``Mamba.compute_conv_feature_map_size``).
"""
from __future__ import annotations

import importlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from nnunet_mamba.ops._optional import LazyImport
from nnunet_mamba.ops.backends import AUTO
from nnunet_mamba.ops.cpu_inference import ops_unobserved, unobserved_cpu_inference
from nnunet_mamba.ops.scan_numba import kernel_array, numba_launch
from nnunet_mamba.ops.selective_scan import requested_backend

try:  # the fused CUDA causal convolution (optional; the 'cuda' extra installs it)
    from causal_conv1d import causal_conv1d_fn
except ImportError:  # pragma: no cover - depends on the installation
    causal_conv1d_fn = None

kernels_import = LazyImport(
    lambda: importlib.import_module("nnunet_mamba.ops.numba_block_kernels"),
    lambda error: f"numba could not be imported ({type(error).__name__}: {error})")

# values (channels x positions) per LayerNorm work unit: a unit's rows stay in the L2 cache across its passes
LAYER_NORM_VALUES_PER_UNIT = 1 << 15


def _numba_applies(x: torch.Tensor, *parameters: torch.Tensor | None) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        return False
    if any(p is not None and p.dtype != x.dtype for p in parameters):
        return False
    if not ops_unobserved():
        return False
    return requested_backend() in (AUTO, "numba") and kernels_import.status()[0]


def _numba_inference_applies(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """:func:`_numba_applies`, for the kernels without a backward: also no gradient recorded through any input."""
    return _numba_applies(x, *others) and unobserved_cpu_inference(x, *others)


def causal_conv1d_silu_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's depthwise convolution over the input padded in the past only (no outputs computed to be
    cropped, no crop whose gradient must be padded back)."""
    return F.silu(F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, bias, groups=x.shape[1]))


class NumbaCausalConvSilu(torch.autograd.Function):
    """silu(causal depthwise conv1d(x)) on CPU; saves x, weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        kernels = kernels_import.result()[0]
        taps = weight.detach().reshape(weight.shape[0], -1)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        offsets = bias if bias is not None else x.new_empty(0)
        rows = (-1, x.shape[-1])
        with numba_launch():
            kernels.causal_conv_silu_forward(kernel_array(x).reshape(rows), kernel_array(taps), kernel_array(offsets),
                                             bias is not None, out.view(rows).numpy())
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        kernels = kernels_import.result()[0]
        channels = weight.shape[0]
        taps = weight.detach().reshape(channels, -1)
        rows = (-1, x.shape[-1])
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        grad_taps = x.new_empty((x.numel() // x.shape[-1], taps.shape[1]))
        grad_offsets = x.new_empty(grad_taps.shape[0])
        offsets = bias if bias is not None else x.new_empty(0)
        with numba_launch():
            kernels.causal_conv_silu_backward(
                kernel_array(x).reshape(rows), kernel_array(taps), kernel_array(offsets), bias is not None,
                kernel_array(grad_out.to(x.dtype)).reshape(rows), grad_x.view(rows).numpy(), grad_taps.numpy(),
                grad_offsets.numpy())
        grad_weight = grad_taps.view(-1, channels, taps.shape[1]).sum(0).view_as(weight)
        grad_bias = grad_offsets.view(-1, channels).sum(0) if bias is not None else None
        return grad_x, grad_weight, grad_bias


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SiLU of a causal depthwise convolution: output t sees inputs t - K + 1 .. t. x: (batch, channels, L);
    weight: (channels, 1, K) as ``nn.Conv1d`` stores it; bias: (channels,) or None."""
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f"causal_conv1d_silu takes x (batch, channels, L) and a depthwise weight (channels, 1, K), "
                         f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    if causal_conv1d_fn is not None and x.is_cuda:
        return causal_conv1d_fn(x, weight.squeeze(1), bias, activation="silu")
    if _numba_applies(x, weight, bias):
        return NumbaCausalConvSilu.apply(x, weight, bias)
    return causal_conv1d_silu_torch(x, weight, bias)


def layer_norm_channels_first_torch(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                    eps: float) -> torch.Tensor:
    """``F.layer_norm`` over the channels of (batch, channels, L): transposed there and back."""
    return F.layer_norm(x.transpose(1, 2), (x.shape[1],), weight, bias, eps).transpose(1, 2)


def _layer_norm_chunk(channels: int) -> int:
    return max(16, LAYER_NORM_VALUES_PER_UNIT // max(1, channels) // 16 * 16)


class NumbaLayerNormChannelsFirst(torch.autograd.Function):
    """LayerNorm over dim 1 of (batch, channels, L) on CPU; saves x, weight, the means and the inverse deviations
    (as PyTorch's LayerNorm: the input and two statistics per position)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        kernels = kernels_import.result()[0]
        batch, channels, length = x.shape
        gain = weight if weight is not None else x.new_ones(channels)
        offset = bias if bias is not None else x.new_zeros(channels)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        mean = x.new_empty((batch, length))
        rstd = x.new_empty((batch, length))
        chunk = _layer_norm_chunk(channels)
        array = kernel_array(x)
        with numba_launch():
            kernels.layer_norm_channels_first_forward(array, kernel_array(gain), kernel_array(offset),
                                                      array.dtype.type(eps), chunk, out.numpy(), mean.numpy(),
                                                      rstd.numpy())
        ctx.save_for_backward(x, gain, mean, rstd)
        ctx.chunk = chunk
        ctx.affine = (weight is not None, bias is not None)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, gain, mean, rstd = ctx.saved_tensors
        kernels = kernels_import.result()[0]
        batch, channels, length = x.shape
        units = batch * -(-length // ctx.chunk)
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        grad_weight_units = x.new_empty((units, channels))
        grad_bias_units = x.new_empty((units, channels))
        with numba_launch():
            kernels.layer_norm_channels_first_backward(
                kernel_array(x), kernel_array(gain), mean.numpy(), rstd.numpy(), kernel_array(grad_out.to(x.dtype)),
                ctx.chunk, grad_x.numpy(), grad_weight_units.numpy(), grad_bias_units.numpy())
        has_weight, has_bias = ctx.affine
        return (grad_x, grad_weight_units.sum(0) if has_weight else None,
                grad_bias_units.sum(0) if has_bias else None, None)


def layer_norm_channels_first(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                              eps: float) -> torch.Tensor:
    """LayerNorm over the channels of ``x`` (batch, channels, L): ``F.layer_norm`` of the channels-last tokens,
    transposed back. Contiguous from the numba kernel; PyTorch's fallback (CUDA tensors, among others) returns the
    transposed view of its result."""
    if x.dim() != 3:
        raise ValueError(f"layer_norm_channels_first takes (batch, channels, L), got shape {tuple(x.shape)}")
    if _numba_applies(x, weight, bias):
        return NumbaLayerNormChannelsFirst.apply(x, weight, bias, eps)
    return layer_norm_channels_first_torch(x, weight, bias, eps)


def depthwise_conv_same_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's depthwise convolution, stride 1, padded by half the kernel on every side."""
    convolution = F.conv2d if x.dim() == 4 else F.conv3d
    return convolution(x, weight, bias, padding=tuple(k // 2 for k in weight.shape[2:]), groups=x.shape[1])


class _DepthwiseLayout:
    """How the depthwise kernels see a call: x as (batch x channels, D, H, W) maps (a 2D map one slice deep), the
    weight as (channels, kD, kH, kW) taps, and the rows (z, y) of a map split into work units: whole maps where there
    are enough for every thread, else each map in as many runs of rows as give every thread four units."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, threads: int):
        self.batch, self.channels = x.shape[:2]
        depth_axis = () if x.dim() == 5 else (1,)
        spatial = (*depth_axis, *x.shape[2:])
        self.maps_shape = (self.batch * self.channels, *spatial)
        self.taps = weight.detach().reshape(self.channels, *depth_axis, *weight.shape[2:])
        maps, rows = self.maps_shape[0], spatial[0] * spatial[1]
        runs = min(rows, -(-4 * threads // maps)) if maps < 4 * threads else 1
        self.rows_per_unit = -(-rows // runs)
        self.units = maps * -(-rows // self.rows_per_unit)

    def maps(self, t: torch.Tensor):
        """``t`` (x's shape) as the kernels' (maps, D, H, W) array."""
        return kernel_array(t).reshape(self.maps_shape)


class NumbaDepthwiseConv(torch.autograd.Function):
    """'Same' depthwise convolution of (batch, channels, *spatial), 2D or 3D, on CPU; saves x and weight. The
    input gradient is the same convolution of the output gradient with the kernel mirrored. Once differentiable:
    no double backward (``create_graph=True``), which nnU-Net's training never asks for."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        kernels = kernels_import.result()[0]
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        with numba_launch() as threads:
            layout = _DepthwiseLayout(x, weight, threads)
            kernels.depthwise_conv_forward(layout.maps(x), kernel_array(layout.taps),
                                           kernel_array(bias if bias is not None else x.new_empty(0)),
                                           bias is not None, layout.rows_per_unit, layout.maps(out))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        kernels = kernels_import.result()[0]
        grad_x = grad_weight = grad_bias = None
        with numba_launch() as threads:
            layout = _DepthwiseLayout(x, weight, threads)
            grad_maps = layout.maps(grad_out.to(x.dtype))
            if ctx.needs_input_grad[0]:
                grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
                kernels.depthwise_conv_forward(grad_maps, kernel_array(layout.taps.flip(1, 2, 3)),
                                               kernel_array(x.new_empty(0)), False, layout.rows_per_unit,
                                               layout.maps(grad_x))
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                kernel_shape = tuple(layout.taps.shape[1:])
                grad_weight_units = x.new_empty((layout.units, *kernel_shape))
                grad_bias_units = x.new_empty(layout.units)
                kernels.depthwise_conv_parameter_grads(layout.maps(x), grad_maps, kernel_shape, layout.rows_per_unit,
                                                       grad_weight_units.numpy(), grad_bias_units.numpy())
                per_channel = (layout.batch, layout.channels, -1, math.prod(kernel_shape))  # (batch, channel, run)
                grad_weight = grad_weight_units.view(per_channel).sum((0, 2)).view_as(weight)
                grad_bias = grad_bias_units.view(per_channel[:3]).sum((0, 2)) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias


def depthwise_conv_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise convolution of x (batch, channels, H, W) or (batch, channels, D, H, W) with ``weight``
    (channels, 1, *kernel) as ``nn.Conv2d``/``nn.Conv3d`` store it, odd kernel sizes, stride 1 and zero padding
    of half the kernel: the output has the input's size. bias: (channels,) or None."""
    if (x.dim() not in (4, 5) or weight.dim() != x.dim() or weight.shape[0] != x.shape[1] or weight.shape[1] != 1
            or any(k % 2 == 0 for k in weight.shape[2:])):
        raise ValueError(f"depthwise_conv_same takes x (batch, channels, *spatial) with 2 or 3 spatial axes and a "
                         f"depthwise weight (channels, 1, *kernel) with odd kernel sizes, got x {tuple(x.shape)} and "
                         f"weight {tuple(weight.shape)}")
    if _numba_applies(x, weight, bias):
        return NumbaDepthwiseConv.apply(x, weight, bias)
    return depthwise_conv_same_torch(x, weight, bias)


def _linear_sources(in_size: int, out_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's linear interpolation along one axis (``align_corners=False``, a given scale factor): per output
    index o the source position max(0, (o + 1/2) / scale - 1/2), as its two neighbouring indices (2, out_size),
    the last index twice past the end, and the second one's weight (out_size,), in float64."""
    position = ((torch.arange(out_size, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(min=0)
    first = position.floor().long().clamp(max=in_size - 1)
    return torch.stack((first, (first + 1).clamp(max=in_size - 1))), position - first


def linear_upsample_add(x: torch.Tensor, skip: torch.Tensor, scale_factor: Sequence[float]) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=scale_factor, mode="bilinear" or "trilinear", align_corners=False) + skip``
    for x (batch, channels, *spatial) with 2 or 3 spatial axes and one scale factor per axis."""
    if x.dim() not in (4, 5) or len(scale_factor) != x.dim() - 2:
        raise ValueError(f"linear_upsample_add takes x (batch, channels, *spatial) with 2 or 3 spatial axes and one "
                         f"scale factor per axis, got x {tuple(x.shape)} and scale_factor {tuple(scale_factor)}")
    out_spatial = tuple(math.floor(size * scale) for size, scale in zip(x.shape[2:], scale_factor))
    if skip.shape == (*x.shape[:2], *out_spatial) and _numba_inference_applies(x, skip):
        kernels = kernels_import.result()[0]
        depth_axis = () if x.dim() == 5 else (1,)
        sources = [_linear_sources(*sizes) for sizes in zip((*depth_axis, *x.shape[2:]), (*depth_axis, *out_spatial),
                                                             (*(1.0,) * len(depth_axis), *scale_factor))]
        out = torch.empty_like(skip, memory_format=torch.contiguous_format)
        maps = (x.shape[0] * x.shape[1], *depth_axis)
        with numba_launch():
            kernels.linear_upsample_add(
                kernel_array(x).reshape(*maps, *x.shape[2:]), kernel_array(skip).reshape(*maps, *out_spatial),
                *(array for indices, weights in sources for array in (indices.numpy(), weights.to(x.dtype).numpy())),
                out.view(*maps, *out_spatial).numpy())
        return out
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, scale_factor=tuple(scale_factor), mode=mode, align_corners=False) + skip


#: input channels up to which :func:`channels_linear` beats PyTorch's products at any length (the Mamba block's dt
#: projection)
FEW_INPUTS = 4
#: positions per sequence from which it beats them with more inputs (on contiguous maps)
LONG_SEQUENCE = 8192
#: positions per work unit of the kernel at most, and its input values at most (but 64 positions at least): a unit's
#: input rows stay in the L2 cache while it passes over them once per four output rows, four output rows in L1
_CHANNELS_LINEAR_CHUNK = 1024
_CHANNELS_LINEAR_INPUT_VALUES = 1 << 16


def _channels_linear_misfit(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why the kernel cannot take these tensors (shapes, dtypes, devices), or None where it can."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[1] != x.shape[1] or weight.shape[0] < 4 or x.shape[1] < 1:
        return (f"channels_linear takes x (batch, in, L) with in >= 1 and weight (out, in) with out >= 4, got "
                f"x {tuple(x.shape)} and weight {tuple(weight.shape)}; linear_channels_first takes any shapes")
    if bias is not None and bias.shape != (weight.shape[0],):
        return f"channels_linear's bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}"
    tensors = {"x": x, "weight": weight, "bias": bias}
    if any(t is not None and (t.device.type != "cpu" or t.dtype != x.dtype) for t in tensors.values()) \
            or x.dtype not in (torch.float32, torch.float64):
        found = ", ".join(f"{name} {t.dtype} on {t.device}" for name, t in tensors.items() if t is not None)
        return f"channels_linear takes float32 or float64 CPU tensors of one dtype, got {found}"
    return None


def channels_linear_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`channels_linear` takes ``x`` (batch, in, L) and ``weight`` (out, in): at least 4 outputs, at
    most FEW_INPUTS inputs or a contiguous ``x`` of at least LONG_SEQUENCE positions, and the numba kernels in use
    (CPU, float32 or float64, no autocast, JIT trace or dispatch mode). Elsewhere ``bmm`` runs, and raises PyTorch's
    error for tensors that do not fit."""
    # the cheap test first: on CUDA, under autocast and for the heads' few outputs nothing else is asked
    return (_numba_applies(x, weight, bias) and _channels_linear_misfit(x, weight, bias) is None
            and _channels_linear_pays(x))


def _channels_linear_pays(x: torch.Tensor) -> bool:
    """Where the kernel beats PyTorch's products on tensors it takes (see FEW_INPUTS and LONG_SEQUENCE)."""
    length = x.shape[-1]
    return length > 0 and (x.shape[1] <= FEW_INPUTS or (length >= LONG_SEQUENCE and x.is_contiguous()))


def _channels_linear_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    kernels = kernels_import.result()[0]
    batch, inputs, length = x.shape
    out = x.new_empty((batch, weight.shape[0], length))
    with numba_launch() as threads:
        per_thread = -(-length // -(-threads // batch))  # shorter units where the batch has too few for the threads
        by_inputs = max(64, _CHANNELS_LINEAR_INPUT_VALUES // inputs // 8 * 8)  # whole 8-lane vectors
        chunk = min(_CHANNELS_LINEAR_CHUNK, by_inputs, -(-per_thread // 8) * 8)
        kernels.channels_linear(kernel_array(x), kernel_array(weight),
                                kernel_array(bias if bias is not None else x.new_empty(0)), bias is not None, chunk,
                                out.numpy())
    return out


class NumbaChannelsLinear(torch.autograd.Function):
    """:func:`channels_linear` with a gradient; saves x and weight, as ``bmm`` does. The input's gradient is the
    kernel's product of the output gradient by the transposed weight where it pays as in the forward (not for the dt
    projection's two rows), the weight's the batched product of the output gradient by the input summed over the
    batch, as ``bmm``'s backward computes it. Once differentiable, as the other kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _channels_linear_kernel(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            transposed = weight.t()
            if _channels_linear_pays(grad_out) and _channels_linear_misfit(grad_out, transposed, None) is None:
                grad_x = _channels_linear_kernel(grad_out, transposed.contiguous(), None)
            else:
                grad_x = torch.bmm(transposed.expand(x.shape[0], -1, -1), grad_out)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad_out, x.transpose(1, 2)).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2))
        return grad_x, grad_weight, grad_bias


def channels_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``nn.Linear``'s ``weight`` (out, in) and ``bias`` over the channels of ``x`` (batch, in, L): (batch, out, L),
    contiguous, by the numba kernel, where :func:`channels_linear_applies`; with a backward where a gradient is
    recorded."""
    misfit = _channels_linear_misfit(x, weight, bias)
    if misfit is not None:
        raise ValueError(misfit)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return NumbaChannelsLinear.apply(x, weight, bias)
    return _channels_linear_kernel(x, weight, bias)
