"""The blocks' ops with numba kernels (``ops.block_ops``): the causal convolution with its SiLU, the channels-first
LayerNorm, the size-keeping depthwise convolution, the up-sampling with its skip added and the product from few
channels, each kernel against PyTorch's op in float64 and float32,
forward and every gradient, and which implementation runs where."""
import contextlib
import math

import pytest
import torch

from nnunet_mamba.ops import block_ops, scan_backend_override
from nnunet_mamba.ops.block_ops import (NumbaCausalConvSilu, NumbaDepthwiseConv, NumbaLayerNormChannelsFirst,
                                         causal_conv1d_silu, causal_conv1d_silu_torch, depthwise_conv_same,
                                         depthwise_conv_same_torch, layer_norm_channels_first,
                                         layer_norm_channels_first_torch, linear_upsample_add)
from nnunet_mamba.ops.block_ops import FEW_INPUTS, LONG_SEQUENCE, channels_linear, channels_linear_applies
from nnunet_mamba.ops.scan_numba import numba_launch as real_numba_launch

pytestmark = pytest.mark.skipif(not block_ops.kernels_import.status()[0], reason="numba unavailable")


def _inputs(batch, channels, length, taps, dtype, with_bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, length, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(channels, 1, taps, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(channels, generator=generator, dtype=dtype, requires_grad=True) if with_bias else None
    return x, weight, bias


def _forward_and_gradients(function, x, weight, bias, grad_out):
    leaves = [t for t in (x, weight, bias) if t is not None]
    out = function(x, weight, bias)
    return (out, *torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("batch,channels,length,taps,with_bias", [
    (2, 5, 37, 4, True), (1, 3, 64, 4, False), (2, 2, 2, 4, True), (1, 4, 9, 1, True), (3, 2, 17, 3, True)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_kernel_matches_pytorch_convolution(batch, channels, length, taps, with_bias, dtype, tolerance):
    x, weight, bias = _inputs(batch, channels, length, taps, dtype, with_bias)
    grad_out = torch.randn(batch, channels, length, dtype=dtype, generator=torch.Generator().manual_seed(1))
    kernel = _forward_and_gradients(NumbaCausalConvSilu.apply, x, weight, bias, grad_out)
    reference = _forward_and_gradients(causal_conv1d_silu_torch, x, weight, bias, grad_out)
    assert len(kernel) == len(reference) == (4 if with_bias else 3)
    for got, expected in zip(kernel, reference):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_output_sees_only_the_past():
    x, weight, bias = _inputs(1, 2, 20, 4, torch.float64)
    changed = x.detach().clone()
    changed[..., 12:] += 1.0
    before, after = NumbaCausalConvSilu.apply(x.detach(), weight.detach(), bias.detach()), \
        NumbaCausalConvSilu.apply(changed, weight.detach(), bias.detach())
    assert torch.equal(before[..., :12], after[..., :12])
    assert not torch.isclose(before[..., 12:], after[..., 12:]).any()


def test_gradcheck():
    x, weight, bias = _inputs(2, 3, 11, 4, torch.float64)
    assert torch.autograd.gradcheck(NumbaCausalConvSilu.apply, (x, weight, bias))


def _runs_kernel(x, weight, bias) -> bool:
    return type(causal_conv1d_silu(x, weight, bias).grad_fn).__name__ == "NumbaCausalConvSiluBackward"


def test_dispatch():
    x, weight, bias = _inputs(1, 2, 8, 4, torch.float32)
    assert _runs_kernel(x, weight, bias)  # CPU default: numba, as the scan
    with scan_backend_override("torch"):  # a pure-PyTorch block when the scan is PyTorch's
        assert not _runs_kernel(x, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's bfloat16 convolution, as before
        assert not _runs_kernel(x, weight, bias)
    assert not _runs_kernel(x.detach().half().requires_grad_(), weight.detach().half(), bias.detach().half())


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"got x \(2, 3\) and weight \(3, 1, 4\)"):
        causal_conv1d_silu(torch.zeros(2, 3), torch.zeros(3, 1, 4), None)
    with pytest.raises(ValueError, match=r"weight \(4, 1, 4\)"):
        causal_conv1d_silu(torch.zeros(1, 3, 5), torch.zeros(4, 1, 4), None)


def test_flop_counter_sees_the_convolution():
    """Under a dispatch mode PyTorch's convolution runs, so count_flops counts K multiply-adds per output."""
    from torch.utils.flop_counter import FlopCounterMode

    x, weight, bias = _inputs(2, 3, 10, 4, torch.float32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = causal_conv1d_silu(x, weight, bias)
    torch.testing.assert_close(out, NumbaCausalConvSilu.apply(x.detach(), weight.detach(), bias.detach()))
    assert counter.get_total_flops() == 2 * 2 * 3 * 10 * 4


@pytest.mark.parametrize("batch,channels,length,affine", [(2, 6, 50, True), (1, 32, 300, True), (3, 3, 7, False)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_channels_first_layer_norm_matches_pytorch(monkeypatch, batch, channels, length, affine, dtype, tolerance):
    monkeypatch.setattr(block_ops, "LAYER_NORM_VALUES_PER_UNIT", 16 * channels)  # units of 16 positions
    generator = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(batch, channels, length, generator=generator, dtype=dtype) + 1).requires_grad_()
    weight = torch.randn(channels, generator=generator, dtype=dtype).requires_grad_() if affine else None
    bias = torch.randn(channels, generator=generator, dtype=dtype).requires_grad_() if affine else None
    grad_out = torch.randn(batch, channels, length, generator=generator, dtype=dtype)

    def run(function):
        out = function(x, weight, bias, 1e-5)
        leaves = [t for t in (x, weight, bias) if t is not None]
        return (out, *torch.autograd.grad(out, leaves, grad_out))

    kernel = run(NumbaLayerNormChannelsFirst.apply)
    reference = run(layer_norm_channels_first_torch)
    assert kernel[0].is_contiguous() and len(kernel) == len(reference) == (4 if affine else 2)
    for got, expected in zip(kernel, reference):
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_channels_first_layer_norm_gradcheck_and_dispatch():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: NumbaLayerNormChannelsFirst.apply(*t, 1e-5), (x, weight, bias))
    assert type(layer_norm_channels_first(x, weight, bias, 1e-5).grad_fn).__name__ == \
        "NumbaLayerNormChannelsFirstBackward"
    with scan_backend_override("torch"):
        assert type(layer_norm_channels_first(x, weight, bias, 1e-5).grad_fn).__name__ != \
            "NumbaLayerNormChannelsFirstBackward"
    with pytest.raises(ValueError, match=r"\(batch, channels, L\), got shape \(2, 4\)"):
        layer_norm_channels_first(torch.zeros(2, 4), None, None, 1e-5)


def _depthwise_inputs(shape, kernel, dtype, with_bias, seed=6):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(shape[1], 1, *kernel, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(shape[1], generator=generator, dtype=dtype, requires_grad=True) if with_bias else None
    return x, weight, bias, torch.randn(*shape, generator=generator, dtype=dtype)


@contextlib.contextmanager
def _layout_for_threads(threads):
    """numba_launch as block_ops sees it, yielding ``threads`` for the work-unit layout (numba keeps its own)."""
    with real_numba_launch():
        yield threads


@pytest.mark.parametrize("shape,kernel,with_bias", [
    ((2, 3, 5, 7), (3, 3), True),  # 2D, the decoder's kernel
    ((1, 2, 4, 6, 5), (3, 3, 3), False),  # 3D
    ((2, 2, 3, 9, 1), (1, 3, 5), True),  # mixed sizes; a row one value wide
    ((1, 4, 1, 2), (3, 3), True),  # kernel wider than the map
    ((2, 2, 4, 3), (3, 3), True),  # rows exactly three wide: the three-tap pass's two edges meet
    ((1, 2, 3, 1), (3, 3), False),  # rows one wide with three taps
    ((2, 3, 6, 8), (1, 1), True),  # the head's 1^d depthwise conv
    ((1, 1, 3, 5, 19), (3, 5, 3), True),  # one map: split into runs of rows, partial gradients summed
])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("threads", [1, 64])  # 64: every map split into runs of rows, whatever the machine
def test_depthwise_kernel_matches_pytorch_convolution(monkeypatch, shape, kernel, with_bias, dtype, tolerance, threads):
    monkeypatch.setattr(block_ops, "numba_launch", lambda: _layout_for_threads(threads))
    layout = block_ops._DepthwiseLayout(torch.zeros(shape), torch.zeros(shape[1], 1, *kernel), threads)
    rows = math.prod(layout.maps_shape[1:3])
    if threads == 64 and rows > 1:
        assert layout.units > layout.maps_shape[0]
    x, weight, bias, grad_out = _depthwise_inputs(shape, kernel, dtype, with_bias)
    ours = _forward_and_gradients(NumbaDepthwiseConv.apply, x, weight, bias, grad_out)
    reference = _forward_and_gradients(depthwise_conv_same_torch, x, weight, bias, grad_out)
    assert len(ours) == len(reference) == (4 if with_bias else 3)
    assert ours[0].shape == x.shape
    for got, expected in zip(ours, reference):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_depthwise_gradcheck_and_parameter_gradients_alone():
    x, weight, bias, _ = _depthwise_inputs((2, 2, 3, 4, 5), (3, 3, 3), torch.float64, True)
    assert torch.autograd.gradcheck(NumbaDepthwiseConv.apply, (x, weight, bias))
    # a stem's input needs no gradient: the weight's and bias' come out alone, and the same
    image = x.detach()
    out = NumbaDepthwiseConv.apply(image, weight, bias)
    got = torch.autograd.grad(out.sum(), (weight, bias))
    expected = torch.autograd.grad(depthwise_conv_same_torch(image, weight, bias).sum(), (weight, bias))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # frozen weights: the input's gradient alone
    frozen = weight.detach()
    got = torch.autograd.grad(NumbaDepthwiseConv.apply(x, frozen, None).sum(), x)[0]
    expected = torch.autograd.grad(depthwise_conv_same_torch(x, frozen, None).sum(), x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _depthwise_runs_kernel(x, weight, bias) -> bool:
    return type(depthwise_conv_same(x, weight, bias).grad_fn).__name__ == "NumbaDepthwiseConvBackward"


def test_depthwise_dispatch_and_errors():
    from torch.utils.flop_counter import FlopCounterMode

    x, weight, bias, _ = _depthwise_inputs((1, 2, 6, 6), (3, 3), torch.float32, True)
    assert _depthwise_runs_kernel(x, weight, bias)
    with scan_backend_override("torch"):
        assert not _depthwise_runs_kernel(x, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _depthwise_runs_kernel(x, weight, bias)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # PyTorch's convolution, counted
        depthwise_conv_same(x, weight, bias)
    assert counter.get_total_flops() == 2 * 2 * 36 * 9
    traced = torch.jit.trace(depthwise_conv_same, (x.detach(), weight.detach(), bias.detach()))
    assert "aten::_convolution" in str(traced.graph)  # fvcore traces: it must see the convolution
    with pytest.raises(ValueError, match=r"odd kernel sizes, got x \(1, 2, 6, 6\) and weight \(2, 1, 2, 2\)"):
        depthwise_conv_same(x, torch.zeros(2, 1, 2, 2), None)
    with pytest.raises(ValueError, match=r"got x \(2, 6\)"):
        depthwise_conv_same(torch.zeros(2, 6), torch.zeros(2, 1, 3), None)


def _interpolated_plus(x, skip, factors):
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return torch.nn.functional.interpolate(x, scale_factor=factors, mode=mode, align_corners=False) + skip


def _upsample_runs_kernel(monkeypatch, *args) -> bool:
    calls = []
    kernels = block_ops.kernels_import.result()[0]
    kernel = kernels.linear_upsample_add
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "linear_upsample_add", lambda *arrays: calls.append(1) or kernel(*arrays))
        linear_upsample_add(*args)
    return bool(calls)


@pytest.mark.parametrize("shape,factors", [
    ((1, 3, 4, 5, 6), (2.0, 2.0, 2.0)),   # LightM-UNet's steps, odd sizes: both borders clamp
    ((2, 2, 3, 5, 4), (1.0, 2.0, 2.0)),   # in-plane only (anisotropic plans)
    ((1, 2, 4, 3, 2), (2.0, 1.0, 3.0)),   # any whole factor per axis
    ((2, 3, 5, 7), (2.0, 2.0)),           # 2D
    ((1, 1, 1, 1, 1), (2.0, 2.0, 2.0)),   # one voxel: every output is it
])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_upsampling_with_the_skip_added_matches_pytorchs_interpolation(monkeypatch, shape, factors, dtype, tolerance):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=dtype)
    out_spatial = tuple(int(size * factor) for size, factor in zip(shape[2:], factors))
    skip = torch.randn(*shape[:2], *out_spatial, generator=generator, dtype=dtype)
    expected = _interpolated_plus(x, skip, factors)
    with torch.no_grad():
        assert _upsample_runs_kernel(monkeypatch, x, skip, factors)
        out = linear_upsample_add(x, skip, factors)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def test_upsampling_with_the_skip_added_takes_any_layout_in_inference_mode(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 4, 5, 6, generator=generator).to(memory_format=torch.channels_last_3d)
    skip = torch.randn(1, 3, 8, 12, 10, generator=generator).transpose(3, 4)  # a strided view
    expected = _interpolated_plus(x, skip, (2.0, 2.0, 2.0))
    with torch.inference_mode():
        assert _upsample_runs_kernel(monkeypatch, x, skip, (2.0, 2.0, 2.0))
        out = linear_upsample_add(x, skip, (2.0, 2.0, 2.0))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_upsampling_with_the_skip_added_keeps_pytorch_where_a_gradient_or_an_observer_needs_it(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    skip = torch.randn(1, 2, 6, 8, 8)
    factors = (2.0, 2.0, 2.0)
    assert not _upsample_runs_kernel(monkeypatch, x, skip, factors)  # training: PyTorch's, with its backward
    out = linear_upsample_add(x, skip, factors)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 8.0))  # each value spread over 2 x 2 x 2 outputs
    with torch.no_grad():
        with scan_backend_override("torch"):
            assert not _upsample_runs_kernel(monkeypatch, x, skip, factors)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _upsample_runs_kernel(monkeypatch, x, skip, factors)
        with FlopCounterMode(display=False):
            assert not _upsample_runs_kernel(monkeypatch, x, skip, factors)
        assert not _upsample_runs_kernel(monkeypatch, x, skip.double(), factors)  # PyTorch promotes mixed dtypes
        traced = torch.jit.trace(lambda low, high: linear_upsample_add(low, high, factors), (x.detach(), skip))
        assert "upsample_trilinear3d" in str(traced.graph)  # fvcore traces: it must see the interpolation
        with pytest.raises(RuntimeError):  # a skip of another size: PyTorch's broadcasting error, not the kernel's
            linear_upsample_add(x, skip[..., :7], factors)
    with pytest.raises(ValueError, match=r"one scale factor per axis, got x \(1, 2, 3, 4, 4\) and scale_factor "
                                         r"\(2.0, 2.0\)"):
        linear_upsample_add(x, skip, (2.0, 2.0))


def test_linear_upsample_module_adds_the_skip_and_is_nn_upsample():
    from torch import nn

    from nnunet_mamba.blocks.upsampling import LinearUpsample

    module = LinearUpsample(scale_factor=(1.0, 2.0, 2.0), mode="trilinear", align_corners=False)
    plain = nn.Upsample(scale_factor=(1.0, 2.0, 2.0), mode="trilinear", align_corners=False)
    x, skip = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 10, 12)
    assert isinstance(module, nn.Upsample) and module.state_dict() == {}
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain(x))
        torch.testing.assert_close(module(x, skip), plain(x) + skip)
    with pytest.raises(ValueError, match="got mode 'nearest'"):
        LinearUpsample(scale_factor=2.0, mode="nearest")
    with pytest.raises(ValueError, match="align_corners True"):
        LinearUpsample(scale_factor=2.0, mode="bilinear", align_corners=True)
    with pytest.raises(ValueError, match="recompute_scale_factor True"):  # the kernel uses the factor as given
        LinearUpsample(scale_factor=2.0, mode="bilinear", recompute_scale_factor=True)
    with pytest.raises(ValueError, match=r"trilinear LinearUpsample takes 3D maps .* got shape \(2, 3, 5, 6\)"):
        module(torch.randn(2, 3, 5, 6), torch.randn(2, 3, 10, 12))


@pytest.mark.parametrize("batch,inputs,rows,length,with_bias", [
    (1, 2, 64, 2 * 1024 + 5, False),  # LightM-UNet's dt projection (rank 2), two threads' units and a partial one
    (2, 4, 6, 300, True),
    (3, 1, 4, 7, True),
    (1, 64, 34, 3000, True),  # x_proj: outputs not a multiple of four
    (2, 7, 9, 1100, False),  # inputs not a multiple of four: three single passes before the passes of four
    (1, 257, 8, 600, True),  # inputs too many for 1024 positions per unit
])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_channels_linear_matches_the_batched_product(batch, inputs, rows, length, with_bias, dtype, tolerance):
    generator = torch.Generator().manual_seed(0)
    x_dbl = torch.randn(batch, inputs + 5, length, generator=generator, dtype=dtype)
    x = x_dbl[:, :inputs]  # as the Mamba block's dt: a view into x_proj's output
    weight = torch.randn(rows, inputs, generator=generator, dtype=dtype)
    bias = torch.randn(rows, generator=generator, dtype=dtype) if with_bias else None
    expected = torch.bmm(weight.expand(batch, -1, -1), x) + (bias.view(rows, 1) if with_bias else 0)
    with torch.no_grad():
        out = channels_linear(x, weight, bias)
    assert out.shape == (batch, rows, length) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("inputs", [2, 8])
def test_channels_linear_keeps_inf_and_nan_where_the_product_has_them(inputs):
    """A zero weight times an inf input is nan, and only where the product multiplies them."""
    x = torch.randn(1, inputs, 40)
    x[0, 0, 3] = float("nan")
    x[0, 1, 5] = float("inf")
    x[0, inputs - 1, 9] = -float("inf")
    weight = torch.randn(5, inputs)
    weight[1, 1] = 0.0
    expected = weight @ x[0]
    with torch.no_grad():
        out = channels_linear(x, weight, None)[0]
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out.isinf(), expected.isinf())
    torch.testing.assert_close(out[out.isfinite()], expected[expected.isfinite()])


@pytest.mark.parametrize("inputs,with_bias", [(2, True), (6, False), (9, True)])
def test_channels_linear_gradients_match_the_batched_product(monkeypatch, inputs, with_bias):
    """The input's gradient by the kernel (by bmm from fewer than four outputs), the weight's and the bias's as bmm's
    backward gives them, float64; and numerically (gradcheck)."""
    monkeypatch.setattr(block_ops, "LONG_SEQUENCE", 64)
    generator = torch.Generator().manual_seed(0)

    def leaves(length):
        x = torch.randn(2, inputs, length, generator=generator, dtype=torch.float64).requires_grad_()
        weight = torch.randn(5, inputs, generator=generator, dtype=torch.float64).requires_grad_()
        bias = torch.randn(5, generator=generator, dtype=torch.float64).requires_grad_() if with_bias else None
        return x, weight, bias

    x, weight, bias = leaves(70)
    assert channels_linear_applies(x, weight, bias)
    grad_out = torch.randn(2, 5, 70, generator=generator, dtype=torch.float64)
    out = channels_linear(x, weight, bias)
    assert type(out.grad_fn).__name__ == "NumbaChannelsLinearBackward"
    gradients = torch.autograd.grad(out, [t for t in (x, weight, bias) if t is not None], grad_out)
    expected = torch.bmm(weight.expand(2, -1, -1), x) + (bias.view(5, 1) if with_bias else 0)
    torch.testing.assert_close(out, expected)
    expected_gradients = torch.autograd.grad(expected, [t for t in (x, weight, bias) if t is not None], grad_out)
    for gradient, reference in zip(gradients, expected_gradients):
        torch.testing.assert_close(gradient, reference, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(channels_linear, leaves(66))


def test_channels_linear_refuses_what_its_kernel_cannot_take():
    x = torch.randn(2, 3, 40)
    with pytest.raises(ValueError, match=r"with out >= 4, got x \(2, 3, 40\) and weight \(3, 3\)"):
        channels_linear(x, torch.randn(3, 3), None)  # fewer than four outputs
    with pytest.raises(ValueError, match=r"in >= 1 .* got x \(2, 0, 40\) and weight \(4, 0\)"):
        channels_linear(x[:, :0], torch.randn(4, 0), None)
    with pytest.raises(ValueError, match=r"got x \(2, 3, 40\) and weight \(4, 5\)"):
        channels_linear(x, torch.randn(4, 5), None)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(5,\)"):
        channels_linear(x, torch.randn(4, 3), torch.randn(5))
    with pytest.raises(ValueError, match="got x torch.float32 on cpu, weight torch.float64 on cpu"):
        channels_linear(x, torch.randn(4, 3, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="got x torch.bfloat16 on cpu, weight torch.bfloat16 on cpu"):
        channels_linear(x.bfloat16(), torch.randn(4, 3).bfloat16(), None)


def test_channels_linear_applies_only_where_it_pays_and_ops_are_unobserved(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from nnunet_mamba.blocks import channels_first

    x, weight = torch.randn(2, FEW_INPUTS, 50), torch.randn(8, FEW_INPUTS, requires_grad=True)
    long_map = torch.randn(1, FEW_INPUTS + 1, LONG_SEQUENCE)
    assert channels_linear_applies(x, weight, None)  # training too: it has a backward
    with torch.no_grad():
        assert channels_linear_applies(x, weight, None)
        assert channels_linear_applies(long_map, torch.randn(8, FEW_INPUTS + 1), None)
        assert not channels_linear_applies(long_map[..., 1:], torch.randn(8, FEW_INPUTS + 1), None)  # shorter
        assert not channels_linear_applies(long_map.transpose(1, 2).contiguous().transpose(1, 2),
                                           torch.randn(8, FEW_INPUTS + 1), None)  # a transposed view: bmm reads it
        assert not channels_linear_applies(x, weight[:3], None)  # fewer than four outputs
        assert not channels_linear_applies(x[..., :0], weight, None)
        with scan_backend_override("torch"):
            assert not channels_linear_applies(x, weight, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not channels_linear_applies(x, weight, None)
        with FlopCounterMode(display=False) as counter:  # FLOP counters see the product
            assert not channels_linear_applies(x, weight, None)
            channels_first.linear_channels_first(x, weight)
        assert counter.get_total_flops() == 2 * 2 * 8 * FEW_INPUTS * 50
        # weights that do not fit the map fall through to bmm and its error
        assert not channels_linear_applies(torch.randn(2, 6, 50), torch.randn(8, 2), None)
        assert not channels_linear_applies(torch.randn(2, 2, 50), torch.randn(8, 4), None)
        assert not channels_linear_applies(x, weight, torch.randn(7))
        assert not channels_linear_applies(x, weight.detach().to("meta"), None)  # a weight on another device
        with pytest.raises(RuntimeError):
            channels_first.linear_channels_first(torch.randn(2, 6, 50), torch.randn(8, 2))
        calls = []
        monkeypatch.setattr(channels_first, "channels_linear",
                            lambda *args: calls.append(1) or channels_linear(*args))
        torch.testing.assert_close(channels_first.linear_channels_first(x, weight),
                                   torch.bmm(weight.expand(2, -1, -1), x))
        assert calls == [1]
