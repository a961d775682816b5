"""The depthwise and pointwise convolution modules (``blocks.convolutions``): the same parameters, state-dict keys,
outputs and gradients as the ``nn.Conv2d``/``nn.Conv3d`` they stand for, counted by thop as those."""
import pytest
import torch
from torch import nn

from nnunet_mamba.blocks.convolutions import (DepthwiseConv2d, DepthwiseConv3d, PointwiseConv2d, PointwiseConv3d,
                                              depthwise_conv, pointwise_conv)
from nnunet_mamba.ops import block_ops


def _check_same_as(module, reference, x):
    assert isinstance(module, type(reference))  # nnU-Net's He initialisation looks for convolutions
    assert list(module.state_dict()) == list(reference.state_dict())
    module.load_state_dict(reference.state_dict(), strict=True)
    x = x.requires_grad_()
    out, expected = module(x), reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, *module.parameters()), grad_out)
    theirs = torch.autograd.grad(expected, (x, *reference.parameters()), grad_out)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv_op,shape", [(nn.Conv2d, (2, 4, 9, 7)), (nn.Conv3d, (1, 4, 5, 6, 7))])
@pytest.mark.parametrize("kernel_size,bias", [(3, False), (1, True)])
def test_depthwise_conv_is_the_convolution(conv_op, shape, kernel_size, bias):
    torch.manual_seed(0)
    module = depthwise_conv(conv_op, 4, kernel_size, bias).double()
    reference = conv_op(4, 4, kernel_size, padding=kernel_size // 2, groups=4, bias=bias).double()
    _check_same_as(module, reference, torch.randn(*shape, dtype=torch.float64))
    if block_ops.kernels_import.status()[0]:  # the comparison was with the numba kernel, not PyTorch against itself
        out = module(torch.randn(*shape, dtype=torch.float64, requires_grad=True))
        assert type(out.grad_fn).__name__ == "NumbaDepthwiseConvBackward"


@pytest.mark.parametrize("conv_op,shape", [(nn.Conv2d, (2, 6, 9, 7)), (nn.Conv3d, (1, 6, 5, 6, 7))])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_is_the_convolution(conv_op, shape, bias):
    torch.manual_seed(1)
    module = pointwise_conv(conv_op, 6, 3, bias).double()
    reference = conv_op(6, 3, 1, bias=bias).double()
    _check_same_as(module, reference, torch.randn(*shape, dtype=torch.float64))
    empty = torch.zeros(0, *shape[1:], dtype=torch.float64)  # an empty batch, as nnU-Net's contract asks
    assert module(empty).shape == (0, 3, *shape[2:])
    memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(*shape, dtype=torch.float64).to(memory_format=memory_format)
    out = module(x)
    assert out.is_contiguous()  # channels-first whatever the input's layout (nn.Conv would keep channels-last)
    torch.testing.assert_close(out, reference(x), rtol=1e-12, atol=1e-12)
    # a JIT trace (fvcore's counter) must see the convolution, not a product without a FLOP handle
    assert "aten::_convolution" in str(torch.jit.trace(module, x).graph)


def test_thop_counts_them_as_convolutions():
    pytest.importorskip("thop")
    from nnunet_mamba.benchmarks.flops import count_thop

    torch.manual_seed(2)
    ours = nn.Sequential(depthwise_conv(nn.Conv3d, 4, 3, False), pointwise_conv(nn.Conv3d, 4, 2, True))
    plain = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False), nn.Conv3d(4, 2, 1))
    x = torch.randn(1, 4, 5, 5, 5)
    ours_count, plain_count = count_thop(ours, x), count_thop(plain, x)
    assert (ours_count.macs, ours_count.parameters) == (plain_count.macs, plain_count.parameters)
    assert ours_count.macs == 125 * (4 * 27 + 4 * 2)  # thop's count: multiply-adds, the bias not counted
    assert isinstance(ours[0], DepthwiseConv3d)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="odd kernel, got 2"):
        depthwise_conv(nn.Conv2d, 4, 2, False)
    with pytest.raises(ValueError, match="conv_op must be nn.Conv2d or nn.Conv3d, got <class 'torch.nn.modu"):
        pointwise_conv(nn.Conv1d, 4, 2, False)
    assert isinstance(pointwise_conv(nn.Conv2d, 4, 2, False), PointwiseConv2d)
    # built directly, each class refuses settings its forward would not honour
    with pytest.raises(ValueError, match=r"DepthwiseConv2d is a depthwise convolution .* padding \(0, 0\)"):
        DepthwiseConv2d(4, 4, 3, groups=4)
    with pytest.raises(ValueError, match=r"DepthwiseConv3d .* stride \(2, 2, 2\)"):
        DepthwiseConv3d(4, 4, 3, stride=2, padding=1, groups=4)
    with pytest.raises(ValueError, match="in_channels 4, out_channels 8"):
        DepthwiseConv2d(4, 8, 3, padding=1, groups=4)
    with pytest.raises(ValueError, match=r"PointwiseConv3d is a 1\^d convolution .* kernel_size \(3, 3, 3\)"):
        PointwiseConv3d(4, 2, 3)
