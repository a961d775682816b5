"""The FLOP counter: hand-computed layer counts, the scan counted once, and the CLI."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_mamba.architectures import VMUNet
from nnunet_mamba.benchmarks.flops import (CONVOLUTION, LINEAR, MATMUL, OTHER, SELECTIVE_SCAN, count_flops,
                                           format_flops_table, selective_scan_macs)
from nnunet_mamba.cli import main
from nnunet_mamba.ops import selective_scan
from nnunet_mamba.ops.selective_scan import _scan_observers, observe_scan_calls


def _only(report, category):
    """The other categories are zero; returns the MACs of ``category``."""
    others = {c: v for c, v in report.macs_by_category.items() if c != category}
    assert all(v == 0 for v in others.values()), others
    return report.macs_by_category[category]


def test_linear_counts_in_features_times_output_elements():
    layer = nn.Linear(8, 5)
    report = count_flops(layer, torch.randn(3, 8))
    assert _only(report, LINEAR) == 3 * 5 * 8
    assert report.total_flops == 2 * 3 * 5 * 8
    assert report.parameters == 8 * 5 + 5


def test_convolutions_count_output_elements_times_kernel_volume_times_group_inputs():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    report = count_flops(conv, torch.randn(2, 3, 10, 10))
    assert _only(report, CONVOLUTION) == 2 * 4 * 10 * 10 * (3 * 3 * 3)
    assert report.total_flops == 2 * report.total_macs

    depthwise = nn.Conv3d(4, 4, 3, groups=4)
    report = count_flops(depthwise, torch.randn(1, 4, 6, 6, 6))
    assert _only(report, CONVOLUTION) == 4 * 4 * 4 * 4 * (1 * 27)


class Functional(nn.Module):
    def forward(self, x, weight):
        return torch.einsum("bi,ij->bj", x, weight) + F.linear(x, weight.t())


def test_matmuls_outside_linear_modules_are_their_own_category():
    report = count_flops(Functional(), torch.randn(2, 3), torch.randn(3, 4))
    assert _only(report, MATMUL) == 2 * (2 * 3 * 4)


class ScanOnly(nn.Module):
    def __init__(self, use_z: bool):
        super().__init__()
        self.use_z = use_z

    def forward(self, u, delta, A, B, C, D, z):
        return selective_scan(u, delta, A, B, C, D=D, z=z if self.use_z else None, delta_softplus=True,
                              backend="torch")


def _scan_inputs(batch=2, dim=8, length=40, d_state=4, groups=2):
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return (randn(batch, dim, length), randn(batch, dim, length) - 2, -torch.exp(randn(dim, d_state)),
            randn(batch, groups, d_state, length), randn(batch, groups, d_state, length), randn(dim),
            randn(batch, dim, length))


@pytest.mark.parametrize("use_z", [False, True])
def test_the_scan_is_counted_once_analytically_and_its_internals_not_at_all(use_z):
    inputs = _scan_inputs()
    module = ScanOnly(use_z)
    # the torch backend does real matmuls inside, so a plain FlopCounterMode sees them
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        module(*inputs)
    assert plain.get_total_flops() > 0

    report = count_flops(module, *inputs)
    expected = 9 * 2 * 40 * 8 * 4 + 2 * 8 * 40 + (2 * 8 * 40 if use_z else 0)
    assert _only(report, SELECTIVE_SCAN) == expected
    assert report.total_macs == expected and report.total_flops == 2 * expected
    assert len(report.scan_calls) == 1
    call = report.scan_calls[0]
    assert (call.batch, call.dim, call.length, call.d_state, call.has_D, call.has_z) == (2, 8, 40, 4, True, use_z)


def test_counts_around_the_scan_survive_and_observers_are_removed():
    inputs = _scan_inputs()

    class LinearThenScan(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(40, 40, bias=False)
            self.scan = ScanOnly(use_z=False)

        def forward(self, u, *rest):
            return self.proj(self.scan(self.proj(u), *rest))

    report = count_flops(LinearThenScan(), *inputs)
    assert report.macs_by_category[LINEAR] == 2 * (2 * 8 * 40 * 40)
    assert report.macs_by_category[SELECTIVE_SCAN] == selective_scan_macs(2, 8, 40, 4, has_D=True)
    assert report.macs_by_category[MATMUL] == report.macs_by_category[OTHER] == 0
    assert _scan_observers == []


def test_observing_does_not_change_the_scan_output():
    inputs = _scan_inputs()
    module = ScanOnly(use_z=True)
    plain = module(*inputs)
    seen = []
    with observe_scan_calls(seen.append):
        observed = module(*inputs)
    assert len(seen) == 1
    assert torch.equal(plain, observed)


def _independent_vmunet_macs(model: VMUNet, spatial_dims: int, x: torch.Tensor) -> tuple[dict, int]:
    """Per-category MACs from the architecture and module hooks, without FlopCounterMode."""
    macs = {CONVOLUTION: 0, LINEAR: 0, MATMUL: 0, SELECTIVE_SCAN: 0, OTHER: 0}

    def on_linear(module, args, output):
        macs[LINEAR] += output.numel() * module.in_features

    def on_conv(module, args, output):
        macs[CONVOLUTION] += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = [m.register_forward_hook(on_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    handles += [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()

    directions, d_state = 2 * spatial_dims, 16
    grid = list(x.shape[2:])
    scan_calls = 0
    for level, (dim, strides) in enumerate(zip(model.level_dims, model.strides)):
        grid = [size // stride for size, stride in zip(grid, strides)]
        tokens = math.prod(grid)
        blocks = model.depths[0][level] + model.depths[1][3 - level]
        d_inner, rank = 2 * dim, math.ceil(dim / 16)
        # one grouped scan per block over all directions: dim = K * d_inner
        scanned = directions * d_inner
        macs[SELECTIVE_SCAN] += blocks * (9 * tokens * scanned * d_state + tokens * scanned)
        # per-direction x_proj (to R + 2N) and dt_proj (R to E) products
        macs[MATMUL] += blocks * directions * tokens * (d_inner * (rank + 2 * d_state) + rank * d_inner)
        scan_calls += blocks
    return macs, scan_calls


@pytest.mark.parametrize("conv_op, shape", [(nn.Conv2d, (1, 1, 64, 64)), (nn.Conv3d, (1, 1, 32, 32, 32))])
def test_small_vmunet_matches_the_architecture_count(conv_op, shape):
    torch.manual_seed(0)
    spatial_dims = len(shape) - 2
    model = VMUNet(1, 2, conv_op=conv_op, embed_dim=32).eval()
    x = torch.randn(*shape)
    expected, expected_calls = _independent_vmunet_macs(model, spatial_dims, x)
    report = count_flops(model, x)
    assert report.macs_by_category == expected
    assert len(report.scan_calls) == expected_calls == 15
    assert all(call.dim % (2 * spatial_dims) == 0 and not call.has_z for call in report.scan_calls)
    assert report.total_flops == 2 * report.total_macs
    assert report.parameters == sum(p.numel() for p in model.parameters())
    table = format_flops_table({"small": report})
    assert "| selective_scan |" in table and f"**{report.gmacs:.3f}**" in table


def test_cli_prints_parameters_and_both_conventions(capsys):
    # 128 x 128 plans five stride-2 poolings: the canonical 4, 2, 2, 2 strides
    assert main(["benchmark", "flops", "--network", "vm_unet", "--patch", "128", "128"]) == 0
    out = capsys.readouterr().out
    torch.manual_seed(0)
    report = count_flops(VMUNet(3, 1, conv_op=nn.Conv2d).eval(), torch.randn(1, 3, 128, 128))
    assert "parameters: 27.43 M" in out
    total = re.search(r"total: ([\d.]+) GMACs .* = ([\d.]+) GFLOPs", out)
    assert total is not None, out
    assert total.groups() == (f"{report.gmacs:.3f}", f"{report.gflops:.3f}")
    for category in (CONVOLUTION, LINEAR, MATMUL, SELECTIVE_SCAN):
        assert f"| {category} |" in out
    assert "15 calls" in out


def test_cli_rejects_an_unknown_network(capsys):
    assert main(["benchmark", "flops", "--network", "no_such_net", "--patch", "32", "32"]) == 2
    assert "unknown network 'no_such_net'" in capsys.readouterr().err


# --- LightM-UNet and the papers' own counters ---------------------------------------------------------------------


def _light_m_unet(input_channels, classes, conv_op, **options):
    from nnunet_mamba.architectures.light_m_unet import LightMUNet

    torch.manual_seed(0)
    return LightMUNet(input_channels, classes, conv_op, **options).eval()


def test_ours_counts_every_rvm_scan_of_light_m_unet():
    model = _light_m_unet(3, 2, nn.Conv2d)
    report = count_flops(model, torch.randn(1, 3, 16, 16))
    assert report.parameters == 5_011_765
    # 21 RVM layers: levels of 16x16, 8x8, 4x4, 2x2 tokens; each Mamba scans d_inner = 2C channels, D and z on
    rvm_per_level = {(256, 32): 2 + 1, (64, 64): 4 + 1, (16, 128): 4 + 1, (4, 256): 8}
    assert sorted((c.length, c.dim // 2) for c in report.scan_calls) == sorted(
        key for key, count in rvm_per_level.items() for _ in range(count))
    assert all(c.has_D and c.has_z and c.d_state == 16 for c in report.scan_calls)
    expected_scan = sum(count * (9 * tokens * 2 * c * 16 + 2 * tokens * 2 * c)
                        for (tokens, c), count in rvm_per_level.items())
    assert report.macs_by_category[SELECTIVE_SCAN] == expected_scan


@pytest.mark.parametrize("variant, conv_op, channels, classes, paper_input, params, gmacs", [
    # the paper's Table 2 (Montgomery & Shenzhen) and Table 1 (LiTS): thop on the first upload
    ("v0", nn.Conv2d, 3, 2, (12, 3, 512, 512), 1_091_810, 267.19),
    ("v0", nn.Conv3d, 1, 3, (2, 1, 128, 128, 128), 1_865_987, 457.62),
    # the same protocol on the official code at HEAD
    ("official", nn.Conv2d, 3, 2, (12, 3, 512, 512), 727_581, 102.26),
    ("official", nn.Conv3d, 1, 3, (2, 1, 128, 128, 128), 731_582, 60.77),
])
def test_thop_protocol_reproduces_the_papers_light_m_unet_figures(variant, conv_op, channels, classes,
                                                                   paper_input, params, gmacs):
    """thop's ops are per output element and its parameters do not depend on the input, so the paper's
    batch-inside count is the count of a small input times the ratio of their voxels (checked here to hold
    exactly between two inputs) instead of a 12 x 512^2 forward pass on CPU."""
    pytest.importorskip("thop")
    from nnunet_mamba.benchmarks.flops import count_thop

    model = _light_m_unet(channels, classes, conv_op, variant=variant)
    dims = len(paper_input) - 2
    small, smaller = (1, channels) + (16,) * dims, (2, channels) + (8,) * dims
    count = count_thop(model, torch.randn(*small))
    assert count_thop(model, torch.randn(*smaller)).macs * 2 ** dims == count.macs * 2  # linear in batch x voxels
    assert count.parameters == params
    assert count.true_parameters == sum(p.numel() for p in model.parameters()) > 4.9e6
    assert count.scan_macs > 0  # what thop cannot see
    scale = math.prod(paper_input) // math.prod(small)
    assert round(count.macs * scale / 1e9, 2) == gmacs


def test_fvcore_protocol_counts_the_projections_but_not_the_scan():
    pytest.importorskip("fvcore")
    from nnunet_mamba.benchmarks.flops import count_fvcore
    from nnunet_mamba.blocks.mamba import Mamba

    torch.manual_seed(0)
    block = Mamba(16)  # d_inner 32, dt_rank 1
    count = count_fvcore(block, torch.randn(1, 10, 16))
    tokens = 10
    in_proj, x_proj, dt_proj, out_proj = 16 * 64, 32 * 33, 1 * 32, 32 * 16
    conv = 32 * 4 * tokens  # the causal convolution pads the past only: one output per token
    assert count.macs == tokens * (in_proj + x_proj + dt_proj + out_proj) + conv
    assert count.scan_macs == selective_scan_macs(1, 32, tokens, 16, has_D=True, has_z=True)
    assert count.parameters == count.true_parameters == Mamba.parameter_count(16)


def test_cli_thop_protocol_prints_the_counter_and_the_truth(capsys):
    pytest.importorskip("thop")
    assert main(["benchmark", "flops", "--network", "light_m_unet", "--protocol", "thop", "--network-arg",
                 "variant='v0'", "--batch", "2", "--patch", "16", "16", "--input-channels", "3",
                 "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "parameters (thop): 1.09 M (1,091,810); true: 5.38 M (5,375,991)" in out
    assert "counted by thop.profile" in out and "batch 2 inside" in out


def test_cli_rejects_bad_network_args(capsys):
    assert main(["benchmark", "flops", "--network", "light_m_unet", "--network-arg", "variant=v7",
                 "--patch", "16", "16"]) == 2
    assert "variant must be one of 'official', 'v0'" in capsys.readouterr().err
    assert main(["benchmark", "flops", "--network", "light_m_unet", "--network-arg", "v0", "--patch", "16", "16"]) == 2
    assert "--network-arg 'v0' is not NAME=VALUE" in capsys.readouterr().err
