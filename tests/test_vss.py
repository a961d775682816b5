import pytest
import torch

from nnunet_mamba.blocks import CrossScanSSM, VSSBlock, VSSStage
from nnunet_mamba.blocks import vss
from nnunet_mamba.blocks.vss import SS2D, SS3D, scan_orderings
from nnunet_mamba.ops import selective_scan


def test_orderings_match_vmamba_in_2d_and_cover_every_axis_in_3d():
    assert scan_orderings(2) == [(0, 1), (1, 0)]
    orderings = scan_orderings(3)
    assert [o[-1] for o in orderings] == [2, 1, 0]
    assert all(sorted(o) == [0, 1, 2] for o in orderings)


def test_cross_scan_2d_sequences_are_vmamba_directions():
    ssm = CrossScanSSM(dim=4, spatial_dims=2)
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    seqs = ssm._cross_scan(x)[0, :, 0]
    assert seqs[0].tolist() == [0, 1, 2, 3, 4, 5]  # rows
    assert seqs[1].tolist() == [0, 3, 1, 4, 2, 5]  # columns
    assert seqs[2].tolist() == [5, 4, 3, 2, 1, 0]
    assert seqs[3].tolist() == [5, 2, 4, 1, 3, 0]


@pytest.mark.parametrize("spatial_dims,shape", [(2, (3, 5)), (3, (2, 3, 4))])
def test_cross_merge_inverts_cross_scan(spatial_dims, shape):
    ssm = CrossScanSSM(dim=4, spatial_dims=spatial_dims)
    x = torch.randn(2, 3, *shape)
    seqs = ssm._cross_scan(x)
    assert seqs.shape == (2, 2 * spatial_dims, 3, x[0, 0].numel())
    assert torch.allclose(ssm._cross_merge(seqs, shape), 2 * spatial_dims * x)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (5, 7)), (3, (3, 4, 5))])
def test_block_shapes_and_every_parameter_gets_a_gradient(spatial_dims, shape):
    block = VSSBlock(dim=8, spatial_dims=spatial_dims)
    x = torch.randn(2, *shape, 8, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [name for name, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_ssm_parameter_shapes_follow_vmamba():
    ssm = CrossScanSSM(dim=96, spatial_dims=2)
    assert ssm.d_inner == 192 and ssm.dt_rank == 6 and ssm.num_directions == 4
    assert ssm.x_proj_weight.shape == (4, 6 + 32, 192)
    assert ssm.dt_projs_weight.shape == (4, 192, 6)
    assert ssm.A_logs.shape == (4 * 192, 16)
    assert torch.allclose(torch.exp(ssm.A_logs[0]), torch.arange(1, 17).float())
    assert ssm.Ds.shape == (4 * 192,)
    dt = torch.nn.functional.softplus(ssm.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    ss3d = CrossScanSSM(dim=96, spatial_dims=3)
    assert ss3d.num_directions == 6 and isinstance(ss3d.depthwise_conv, torch.nn.Conv3d)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (8, 8)), (3, (4, 6, 6))])
def test_ssm_mixes_globally(spatial_dims, shape):
    """A change at one corner reaches the opposite corner: beyond any conv's receptive field."""
    torch.manual_seed(0)
    ssm = CrossScanSSM(dim=4, spatial_dims=spatial_dims)
    x = torch.randn(1, *shape, 4)
    changed = x.clone()
    changed[(0, *(0,) * spatial_dims)] += 5.0
    far = (0, *(s - 1 for s in shape))
    assert (ssm(x)[far] - ssm(changed)[far]).abs().max() > 1e-6


def test_stage_depth_and_drop_path_rates():
    stage = VSSStage(dim=8, depth=3, spatial_dims=2, drop_path=[0.0, 0.1, 0.2])
    assert len(stage) == 3
    assert isinstance(stage[0].drop_path, torch.nn.Identity)
    assert [block.drop_path.drop_prob for block in list(stage)[1:]] == [0.1, 0.2]
    with pytest.raises(ValueError, match="need 3 drop-path rates"):
        VSSStage(dim=8, depth=3, spatial_dims=2, drop_path=[0.1])


def test_ss2d_and_ss3d_are_cross_scan_ssms_with_fixed_axes():
    ss2d, ss3d = SS2D(8, d_state=4), SS3D(8)
    assert isinstance(ss2d, CrossScanSSM) and ss2d.spatial_dims == 2 and ss2d.num_directions == 4
    assert ss2d.d_state == 4
    assert isinstance(ss3d, CrossScanSSM) and ss3d.spatial_dims == 3 and ss3d.num_directions == 6
    assert ss2d.state_dict().keys() == CrossScanSSM(8, spatial_dims=2).state_dict().keys()
    assert ss3d(torch.randn(1, 2, 3, 4, 8)).shape == (1, 2, 3, 4, 8)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (6, 7)), (3, (3, 4, 5))])
def test_directions_are_merged_in_float32_under_autocast(monkeypatch, spatial_dims, shape):
    """As VMamba v0: the scan outputs stay float32 and are summed in float32 before out_norm."""
    torch.manual_seed(0)
    ssm = CrossScanSSM(dim=8, spatial_dims=spatial_dims)
    seen = {}
    original_scan, original_merge = vss.selective_scan, CrossScanSSM._cross_merge

    def spy_scan(*args, **kwargs):
        seen["scan_args"] = args, kwargs
        return original_scan(*args, **kwargs)

    def spy_merge(self, y, spatial):
        seen["merge_in"], seen["merged"] = y, original_merge(self, y, spatial)
        return seen["merged"]

    monkeypatch.setattr(vss, "selective_scan", spy_scan)
    monkeypatch.setattr(CrossScanSSM, "_cross_merge", spy_merge)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ssm(torch.randn(2, *shape, 8))
    assert out.dtype == torch.bfloat16
    assert seen["merge_in"].dtype == torch.float32 and seen["merged"].dtype == torch.float32

    # the same scan inputs (bfloat16 activations), scanned and merged in float64: the merge adds no bf16 rounding
    args, kwargs = seen["scan_args"]
    kwargs = {name: value for name, value in kwargs.items() if name != "out_dtype"}
    scanned = selective_scan(*args, **kwargs, out_dtype=torch.float32)
    expected = original_merge(ssm, scanned.double().reshape(seen["merge_in"].shape), shape)
    torch.testing.assert_close(seen["merged"].double(), expected, rtol=1e-6, atol=1e-6)


def test_a_model_cast_to_bfloat16_runs_without_autocast():
    ssm = CrossScanSSM(dim=8, spatial_dims=2).bfloat16()
    out = ssm(torch.randn(1, 5, 6, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("spatial_dims,shape", [(2, (3, 5)), (3, (2, 3, 4))])
def test_cross_scan_and_merge_gradients_are_exact_and_adjoint(spatial_dims, shape):
    orderings = scan_orderings(spatial_dims)
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 2 * spatial_dims, 3, x[0, 0].numel(), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: vss.cross_scan(t, orderings), (x,))
    assert torch.autograd.gradcheck(lambda t: vss.cross_merge(t, orderings, shape), (y,))
    inner_scan = (vss.cross_scan(x, orderings) * y).sum()
    inner_merge = (x * vss.cross_merge(y, orderings, shape)).sum()
    torch.testing.assert_close(inner_scan, inner_merge)
    # a channels-last map (what the depthwise conv returns) gives the same sequences
    channels_last = x.detach().to(memory_format=torch.channels_last if spatial_dims == 2 else torch.channels_last_3d)
    assert torch.equal(vss.cross_scan(channels_last, orderings), vss.cross_scan(x.detach(), orderings))
