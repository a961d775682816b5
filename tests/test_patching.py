import pytest
import torch

from nnunet_mamba.blocks import PatchEmbedding, PatchExpanding, PatchMerging


def test_merging_concatenates_neighbours_in_vmamba_order():
    merge = PatchMerging(dim=1, out_dim=2, scale=(2, 2))
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
    captured = {}
    merge.norm.register_forward_hook(lambda m, inp, out: captured.setdefault("merged", inp[0]))
    merge(x)
    merged = captured["merged"][0, 0, 0]
    # VMamba: x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]
    assert merged.tolist() == [x[0, 0, 0, 0].item(), x[0, 1, 0, 0].item(), x[0, 0, 1, 0].item(), x[0, 1, 1, 0].item()]


@pytest.mark.parametrize("scale", [(2, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)])
def test_merging_and_expanding_shapes_per_axis(scale):
    spatial = tuple(4 * s for s in scale)
    x = torch.randn(2, *spatial, 8)
    merged = PatchMerging(8, 16, scale)(x)
    assert merged.shape == (2, *(s // f for s, f in zip(spatial, scale)), 16)
    expanded = PatchExpanding(16, 8, scale)(merged)
    assert expanded.shape == x.shape


def test_expanding_scatters_channels_as_offset_major():
    expand = PatchExpanding(dim=4, out_dim=1, scale=(2, 2))
    with torch.no_grad():
        expand.expand.weight.copy_(torch.eye(4))
    captured = {}
    expand.norm.register_forward_hook(lambda m, inp, out: captured.setdefault("scattered", inp[0]))
    expand(torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]]))
    # channels (p_h, p_w, c): channel 1 goes to offset (0, 1), channel 2 to (1, 0)
    assert captured["scattered"][0, :, :, 0].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_merge_then_expand_with_matching_weights_is_a_permutation_inverse():
    """Merging (without norm) followed by expanding with the transposed layout returns the input."""
    scale = (1, 2, 2)
    x = torch.randn(1, 2, 4, 6, 3)
    merge = PatchMerging(3, 12, scale)
    merge.norm = torch.nn.Identity()
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(12))
    merged = merge(x)  # channel = (offset_w, offset_h, offset_d, c)
    expand = PatchExpanding(12, 3, scale)
    expand.norm = torch.nn.Identity()
    # expanding wants channels (offset_d, offset_h, offset_w, c): permute accordingly
    permutation = torch.arange(12).reshape(2, 2, 1, 3).permute(2, 1, 0, 3).reshape(-1)
    with torch.no_grad():
        expand.expand.weight.copy_(torch.eye(12)[permutation])
    assert torch.allclose(expand(merged), x)


def test_patch_embedding_is_channels_last_and_strided_per_axis():
    embed = PatchEmbedding(2, 16, (1, 4, 4), torch.nn.Conv3d)
    out = embed(torch.randn(1, 2, 3, 8, 12))
    assert out.shape == (1, 3, 2, 3, 16)


def test_scale_count_must_match_dimensions():
    with pytest.raises(ValueError, match="expected 2 scale factors"):
        PatchEmbedding(1, 8, (2, 2, 2), torch.nn.Conv2d)


def test_expanding_with_sub_positions_alike_starts_as_a_nearest_neighbour_upsampling():
    expanding = PatchExpanding(6, 4, (1, 2, 4))
    drawn = expanding.expand.weight.detach().clone()
    expanding.init_sub_positions_alike()
    x = torch.randn(2, 3, 2, 5, 6)
    first = x @ drawn[:4].T  # the first sub-position's projection, as drawn
    nearest = first.repeat_interleave(1, 1).repeat_interleave(2, 2).repeat_interleave(4, 3)
    torch.testing.assert_close(expanding(x), expanding.norm(nearest))
