import pytest
import torch

from nnunet_mamba.blocks import CrossScanSSM, VSSBlock, VSSStage
from nnunet_mamba.blocks.vss import scan_orderings


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
    with pytest.raises(ValueError, match="need 3 drop-path rates"):
        VSSStage(dim=8, depth=3, spatial_dims=2, drop_path=[0.1])
