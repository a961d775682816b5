"""UltraLBM-UNet and UltraLBM-UNet-T: the official 2D network (spec ../shared/specs/UltraLBM-UNet.md), our 3D
design, the reversed Mamba pass, the official initialisation, plans and named errors."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration
from nnunet_mamba.architectures.ultralbm_unet import GLMBP, LMBP, DepthwiseSeparableConv, UltraLBMUNet, UltraLBMUNetT
from nnunet_mamba.blocks.mamba import Mamba


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("network_class, classes, expected", [
    (UltraLBMUNet, 1, 34_166), (UltraLBMUNetT, 1, 10_956),  # the official single-logit head (paper 0.034/0.011 M)
    (UltraLBMUNet, 2, 34_175), (UltraLBMUNetT, 2, 10_961),  # nnU-Net's two-class softmax head
])
def test_parameter_counts_match_the_official_network(network_class, classes, expected):
    assert _count(network_class(3, classes)) == expected


def test_per_module_parameter_counts_and_widths_match_the_spec():
    teacher, student = UltraLBMUNet(3, 1), UltraLBMUNetT(3, 1)
    assert teacher.widths == [8, 16, 24, 32, 48, 64] and student.widths == [4, 8, 12, 16, 24, 32]
    enc, dec = teacher.encoder.stages, teacher.decoder.stages
    assert [_count(m) for m in (enc[0], enc[1], enc[2], enc[3], enc[4], enc[5])] == [224, 1168, 3480, 1191, 3241,
                                                                                      6245]
    assert [_count(m) for m in dec] == [7713, 4389, 1361, 3472, 1160]
    assert [_count(b.mamba) for b in (enc[4], enc[5], dec[0], dec[1])] == [1296, 2232, 3360, 2232]
    assert [type(m) for m in (*enc[3:], *dec[:3])] == [LMBP, GLMBP, GLMBP, GLMBP, GLMBP, LMBP]
    assert [b.local.dw.kernel_size for b in (enc[4], enc[5], dec[0], dec[1])] == [(5, 5), (7, 7), (7, 7), (5, 5)]
    assert sum(_count(n) for n in (*teacher.encoder.norms, *teacher.decoder.norms)) == 512
    assert _count(teacher.decoder.seg_layers) == 9
    s_enc, s_dec = student.encoder.stages, student.decoder.stages
    assert [_count(s_enc[4]), _count(s_enc[4].mamba), _count(s_dec[0]), _count(s_dec[2])] == [1125, 552, 2641, 441]
    # the reversal changes no weight: checkpoints of either kind load into the other
    channel_flip = UltraLBMUNet(3, 1, reverse="channel").state_dict()
    assert {k: v.shape for k, v in channel_flip.items()} == {k: v.shape for k, v in teacher.state_dict().items()}
    # without the learnable k the skips are plain sums: one parameter fewer
    assert _count(UltraLBMUNet(3, 1, learnable_skip=False)) == 34_165
    # our 3D design (spec 2.3): 1 channel in, 2 out
    assert _count(UltraLBMUNet(1, 2, conv_op=nn.Conv3d)) == 63_595
    assert _count(UltraLBMUNetT(1, 2, conv_op=nn.Conv3d)) == 21_063


def _official_block(block, x: torch.Tensor) -> torch.Tensor:
    """The official LMBP / GLMBP forward, statement by statement (spec 1.2-1.3), on ``block``'s weights."""
    batch, channels, *spatial = x.shape
    quarter = channels // 4
    tokens = x.reshape(batch, channels, -1).transpose(-1, -2)
    x1, x2, x3, x4 = torch.chunk(block.norm(tokens), 4, dim=2)

    def conv_branch(conv, q):
        image = conv(q.transpose(-1, -2).reshape(batch, quarter, *spatial))
        return image.reshape(batch, quarter, -1).transpose(-1, -2)

    gamma = block.skip_scale
    if isinstance(block, GLMBP):  # flips dims=[2] of (B, N, C/4): the channels, as the official code
        m = block.mamba
        y1 = m(x1) + torch.flip(m(torch.flip(x1, dims=[2])), dims=[2]) + gamma * x1
        y2 = m(x2) + torch.flip(m(torch.flip(x2, dims=[2])), dims=[2]) + gamma * x2
        y3 = conv_branch(block.local, x3) + gamma * x3
    else:
        y1, y2, y3 = (conv_branch(conv, q) + gamma * q for conv, q in zip(block.local, (x1, x2, x3)))
    mixed = torch.cat([y1, y2, y3, x4 + gamma * x4], dim=2)
    return block.proj(block.norm(mixed)).transpose(-1, -2).reshape(batch, -1, *spatial)


def _official_forward(net: UltraLBMUNet, x: torch.Tensor) -> torch.Tensor:
    """The official ``UltraLBM_UNet.forward`` (spec 1.1) without its final sigmoid, on ``net``'s weights."""
    e, en = net.encoder.stages, net.encoder.norms
    d, dn = net.decoder.stages, net.decoder.norms
    k = net.decoder.skip_weight

    def up(t):
        return F.interpolate(t, scale_factor=(2, 2), mode="bilinear", align_corners=True)

    out = F.gelu(F.max_pool2d(en[0](e[0](x)), 2, 2))
    t1 = out
    out = F.gelu(F.max_pool2d(en[1](e[1](out)), 2, 2))
    t2 = out
    out = F.gelu(F.max_pool2d(en[2](e[2](out)), 2, 2))
    t3 = out
    out = F.gelu(F.max_pool2d(en[3](_official_block(e[3], out)), 2, 2))
    t4 = out
    out = F.gelu(F.max_pool2d(en[4](_official_block(e[4], out)), 2, 2))
    t5 = out
    out = F.gelu(_official_block(e[5], out))
    out5 = F.gelu(dn[0](_official_block(d[0], out))) + k * t5
    out4 = F.gelu(up(dn[1](_official_block(d[1], out5)))) + k * t4
    out3 = F.gelu(up(dn[2](_official_block(d[2], out4)))) + k * t3
    out2 = F.gelu(up(dn[3](d[3](out3)))) + k * t2
    out1 = F.gelu(up(dn[4](d[4](out2)))) + k * t1
    return up(net.decoder.seg_layers[0](out1))


@pytest.mark.parametrize("network_class", [UltraLBMUNet, UltraLBMUNetT])
def test_reverse_channel_reproduces_the_official_forward(network_class):
    torch.manual_seed(0)
    net = network_class(3, 1, reverse="channel")
    with torch.no_grad():  # non-trivial skip weight and block gammas, so their placement is checked
        net.decoder.skip_weight.fill_(0.7)
        for module in net.modules():
            if isinstance(module, (LMBP, GLMBP)):
                module.skip_scale.fill_(1.3)
    x = torch.randn(1, 3, 64, 64)
    expected = _official_forward(net, x)
    assert torch.allclose(net(x), expected, atol=1e-5, rtol=1e-4)


def _glmbp_on_a_row(reverse: str) -> tuple[GLMBP, torch.Tensor]:
    """A GLMBP at its enc5 kernel (5) on a 1 x 16 map: tokens are the columns; eval, so BatchNorm uses running
    statistics and nothing but Mamba and the 5-wide depthwise conv mixes tokens."""
    torch.manual_seed(0)
    block = GLMBP(16, 16, (5, 5), nn.Conv2d, "batch", reverse=reverse).eval()
    return block, torch.randn(1, 16, 1, 16, requires_grad=True)


def _token_jacobian(block, x) -> torch.Tensor:
    """|d out[token i] / d in[token j]| summed over channels: (tokens, tokens)."""
    tokens = x.shape[-1]
    rows = []
    for i in range(tokens):
        (grad,) = torch.autograd.grad(block(x)[..., i].sum(), x)
        rows.append(grad.abs().sum(dim=(0, 1, 2)))
    return torch.stack(rows)


def test_reverse_token_is_bidirectional_and_reverse_channel_causal():
    reach = 2  # the 5-wide depthwise kernel's half width
    token_block, x = _glmbp_on_a_row("token")
    (grad,) = torch.autograd.grad(token_block(x)[..., 0].sum(), x)
    assert grad[..., -1].abs().sum() > 1e-6  # the first token sees the last through the reversed scan

    channel_block, x = _glmbp_on_a_row("channel")
    jacobian = _token_jacobian(channel_block, x)
    later = torch.triu(torch.ones_like(jacobian, dtype=torch.bool), diagonal=reach + 1)
    assert jacobian[later].max() == 0  # no token sees beyond the conv's reach ahead of it: a forward-only scan
    assert jacobian[~later].min() > 0  # while everything behind it reaches it


@pytest.mark.parametrize("conv_op, shape", [(nn.Conv2d, (1, 4, 1, 16)), (nn.Conv3d, (1, 4, 1, 4, 4))])
def test_branch_gradients_are_right_for_batch_one_and_flat_maps(conv_op, shape):
    """The gradient a branch gets back from the token layout is a transposed view; with batch 1 and an axis of
    size 1, BatchNorm's CPU backward gets it wrong unless it is made contiguous (the branch does that)."""
    torch.manual_seed(0)
    conv = DepthwiseSeparableConv(4, (3,) * (len(shape) - 2), conv_op, "batch").eval()
    with torch.no_grad():
        conv.norm_dw.running_var.uniform_(0.5, 2.0)
    x = torch.randn(*shape, requires_grad=True)
    tokens = shape[2] * shape[3] * (shape[4] if len(shape) == 5 else 1)
    layout_grad = torch.randn(1, tokens, 4).transpose(1, 2).reshape(shape)
    (got,) = torch.autograd.grad(conv(x), x, layout_grad)
    (want,) = torch.autograd.grad(conv(x), x, layout_grad.contiguous())
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("reverse, axis", [("token", 1), ("channel", 2)])
def test_one_stacked_mamba_call_equals_four_separate_calls(reverse, axis):
    torch.manual_seed(0)
    block = GLMBP(32, 16, (5, 5), nn.Conv2d, "batch", reverse=reverse)
    x1, x2 = torch.randn(2, 3, 20, 8).unbind(0)
    m = block.mamba
    expected = [m(x) + m(x.flip(axis)).flip(axis) for x in (x1, x2)]
    for got, want in zip(block.global_branches(x1, x2), expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_official_initialisation_and_mamba_dt_init_option():
    torch.manual_seed(0)
    net = UltraLBMUNet(3, 2)
    mambas = [m for m in net.modules() if isinstance(m, Mamba)]
    assert len(mambas) == 4
    assert all(torch.count_nonzero(m.dt_proj.bias) == 0 for m in mambas)  # the official init zeroes it
    linear = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.Linear)])
    assert abs(linear.std().item() - 0.02) < 0.002 and abs(linear.mean().item()) < 0.002
    biases = [m.bias for m in net.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    assert len(biases) == 10 and all(torch.count_nonzero(b) == 0 for b in biases)  # 6 blocks' proj, 4 dt_proj
    stem = net.encoder.stages[0]
    assert abs(stem.weight.std().item() - (2 / (9 * 8)) ** 0.5) < 0.03 and torch.count_nonzero(stem.bias) == 0
    # A_log and D keep Mamba's values; the Mamba conv keeps PyTorch's default bias
    assert torch.allclose(mambas[0].A_log[0].exp(), torch.arange(1.0, 17.0)) and torch.all(mambas[0].D == 1)
    assert torch.count_nonzero(mambas[0].conv1d.bias) > 0

    torch.manual_seed(0)
    kept = UltraLBMUNet(3, 2, mamba_dt_init=True)
    for mamba in (m for m in kept.modules() if isinstance(m, Mamba)):
        step = F.softplus(mamba.dt_proj.bias)
        assert step.min() >= 1e-4 and step.max() <= 0.1 + 1e-6  # Mamba's dt in [dt_min, dt_max]
        assert mamba.dt_proj.weight.abs().max() <= mamba.dt_rank ** -0.5


@pytest.mark.parametrize("network_class", [UltraLBMUNet, UltraLBMUNetT])
def test_shapes_in_2d_and_3d_including_sizes_not_divisible_by_the_stride(network_class):
    torch.manual_seed(0)
    net2d = network_class(3, 2)
    assert net2d(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    assert net2d(torch.randn(1, 3, 50, 70)).shape == (1, 2, 50, 70)
    # three down-samplings keep the 3D case cheap; 18 and 20 are not multiples of the total stride 8
    net3d = network_class(1, 3, conv_op=nn.Conv3d, strides=(2, 2, 2, 1, 1), separable_norm="group")
    out = net3d(torch.randn(2, 1, 16, 20, 18))
    assert out.shape == (2, 3, 16, 20, 18)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net3d.parameters())


def test_half_inputs_are_promoted_in_the_blocks():
    """As the official blocks: fp16 maps are computed in fp32 (float weights, half inputs)."""
    for block in (LMBP(8, 12, (3, 3), nn.Conv2d, "batch"), GLMBP(8, 12, (3, 3), nn.Conv2d, "batch")):
        out = block(torch.randn(1, 8, 4, 4).half())
        assert out.dtype == torch.float32 and out.shape == (1, 12, 4, 4)


def test_from_plan_on_an_anisotropic_3d_plan():
    """nnU-Net's plan layout (kernels in the architecture's kwargs); thick slices pool the first axis late and
    convolve it with 1 at the shallow levels, so those levels' convs and depthwise kernels are flat."""
    pools = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2))
    kernels = ((1, 3, 3),) * 4 + ((3, 3, 3),) * 3
    manager = SimpleNamespace(patch_size=(16, 256, 256), pool_op_kernel_sizes=pools,
                              network_arch_init_kwargs={"kernel_sizes": kernels})
    net = UltraLBMUNet.from_plan(manager, 1, 2, deep_supervision=False)
    assert net.strides == [(1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert net.total_stride == (2, 32, 32)
    assert net.level_kernels == [(1, 3, 3)] * 4 + [(3, 3, 3)] * 2
    enc, dec = net.encoder.stages, net.decoder.stages
    assert enc[0].kernel_size == (1, 3, 3) and enc[0].padding == (0, 1, 1)
    assert enc[3].local[0].dw.kernel_size == (1, 3, 3)  # enc4 LMBP at level 3
    assert enc[4].local.dw.kernel_size == (5, 5, 5) and enc[5].local.dw.kernel_size == (7, 7, 7)
    assert dec[2].local[1].dw.kernel_size == (3, 3, 3) and dec[3].kernel_size == (1, 3, 3)
    out = net(torch.randn(1, 1, 3, 40, 36))
    assert out.shape == (1, 2, 3, 40, 36)

    # the registry's synthetic plan: a 64 x 64 patch pools 4 times, the fifth down-sampling is stride 1
    small = build_network("ultralbm_unet_t", synthetic_configuration((64, 64)), 1, 2, False)
    assert small.strides[1:] == [(2, 2)] * 4 + [(1, 1)] and isinstance(small, UltraLBMUNetT)
    assert small(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_single_output_contract_and_memory_estimates():
    net = build_network("ultralbm_unet", synthetic_configuration((64, 64)), 1, 2, False)
    assert net.supports_deep_supervision is False and len(net.decoder.seg_layers) == 1
    net.decoder.deep_supervision = True  # nnU-Net writes this after its final validation
    assert net.decoder.deep_supervision is False
    assert net.key_to_stem == "encoder.stages.0" and net.keys_to_in_proj == ("encoder.stages.0",)
    assert [get_network(name).small_instance for name in ("ultralbm_unet", "ultralbm_unet_t")] == [
        "ultralbm_unet", "ultralbm_unet_t"]  # small already: their own small instances
    student = build_network("ultralbm_unet_t", synthetic_configuration((64, 64)), 1, 2, False)
    for patch in ([64, 64], [256, 256]):
        assert net.compute_conv_feature_map_size(patch) > student.compute_conv_feature_map_size(patch)


@pytest.mark.parametrize("kwargs, message", [
    ({"reverse": "both"}, "reverse must be one of 'token', 'channel'"),
    ({"separable_norm": "layer"}, "separable_norm must be one of 'batch', 'group'"),
    ({"deep_supervision": True}, "single output and no deep supervision"),
    ({"widths": [8, 16, 24, 30, 48, 64]}, "widths must be 6 positive multiples of 4"),
    ({"channel_multiplier": 0}, "channel_multiplier must be > 0"),
    ({"strides": (2, 2, 2, 2)}, "needs 5 strides"),
    ({"kernel_sizes": [3, 3, 3, 2, 3, 3]}, "kernel sizes must be odd"),
    ({"input_shape": (16, 64)}, "too small for the network depth"),
])
def test_bad_arguments_give_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UltraLBMUNet(3, 2, **kwargs)


def test_blocks_need_channels_divisible_by_four():
    with pytest.raises(ValueError, match="GLMBP .* in_channels must be a multiple of 4, got 30"):
        GLMBP(30, 16, (3, 3), nn.Conv2d, "batch")
    with pytest.raises(ValueError, match="LMBP .* multiple of 4, got 6"):
        LMBP(6, 8, (3, 3), nn.Conv2d, "batch")
    with pytest.raises(ValueError, match="single output and no deep supervision"):
        UltraLBMUNetT.from_plan(synthetic_configuration((64, 64)), 1, 2, deep_supervision=True)


def test_flops_of_the_student_next_to_the_paper():
    """3 x 256 x 256, one output: our count (every projection and the scan) and thop's, which sees neither
    Mamba's parameters and projections nor the GroupNorms (the paper: 0.011 M, 0.019 G)."""
    pytest.importorskip("thop")
    from nnunet_mamba.benchmarks.flops import count_flops, count_thop

    torch.manual_seed(0)
    student = UltraLBMUNetT(3, 1).eval()
    x = torch.randn(1, 3, 256, 256)
    assert count_flops(student, x).total_macs == 21_873_408
    thop = count_thop(student, x)
    assert (thop.parameters, thop.true_parameters, thop.macs) == (7_045, 10_956, 18_496_256)
