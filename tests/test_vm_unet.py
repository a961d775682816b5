"""VM-UNet: the published model, a whole-network reference, plan strides, padding, legacy checkpoints."""
import numpy as np
import pytest
import torch
from torch import nn

from nnunet_mamba.architectures import VMUNet, build_network, strides_from_plan, synthetic_configuration


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_canonical_2d_model_has_the_published_parameter_count():
    # paper: 27.42M (rounded); 3 input channels, 1 class, no deep supervision
    assert count_parameters(VMUNet(input_channels=3, num_classes=1, deep_supervision=False)) == 27_428_908


def _vm_unet_reference_forward(net: VMUNet, x: torch.Tensor, skip_after_expanding: bool = False) -> torch.Tensor:
    """VM-UNet's forward as written in its official code (VSSM.forward_features / forward_features_up /
    forward_final), on our modules: skips are the inputs of the encoder layers, added before each decoder
    layer's patch expanding, deepest first; layers_up[0] has no expanding."""
    x = net.stem(x)
    skip_list = []
    for i, layer in enumerate(net.encoder.stages):
        skip_list.append(x)
        x = layer(x)
        if i < len(net.encoder.downsamples):
            x = net.encoder.downsamples[i](x)
    for inx, layer_up in enumerate(net.decoder.stages):
        if inx == 0:
            x = layer_up(x)
        elif skip_after_expanding:  # a plausible mistake: shape-compatible at every level
            x = layer_up(net.decoder.upsamples[inx - 1](x) + skip_list[-inx - 1])
        else:
            x = layer_up(net.decoder.upsamples[inx - 1](x + skip_list[-inx]))
    x = net.decoder.final_expand(x)
    return net.decoder.seg_layers[-1](x.permute(0, 3, 1, 2))


def test_whole_network_matches_the_official_forward():
    torch.manual_seed(0)
    net = VMUNet(3, 2, embed_dim=8, deep_supervision=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), _vm_unet_reference_forward(net, x), atol=1e-6)
        # and the comparison tells skip placements apart
        assert not torch.allclose(net(x), _vm_unet_reference_forward(net, x, skip_after_expanding=True), atol=1e-3)


def test_drop_path_rates_per_block_are_vm_unets():
    net = VMUNet(1, 2, embed_dim=8, drop_path_rate=0.2)

    def rates(stages):
        return [[getattr(block.drop_path, "drop_prob", 0.0) for block in stage] for stage in stages]

    encoder = np.linspace(0, 0.2, 8)
    decoder = np.linspace(0, 0.2, 7)[::-1]
    assert np.allclose(sum(rates(net.encoder.stages), []), encoder)
    assert [len(r) for r in rates(net.decoder.stages)] == [2, 2, 2, 1]
    assert np.allclose(sum(rates(net.decoder.stages), []), decoder)
    assert isinstance(net.encoder.stages[0][0].drop_path, nn.Identity)  # rate 0: no op at all


def test_deep_supervision_outputs_match_their_scales_2d():
    model = VMUNet(1, 3, embed_dim=8, deep_supervision=True)
    outputs = model(torch.randn(2, 1, 64, 96))
    assert isinstance(outputs, list) and len(outputs) == 4
    for out, scale in zip(outputs, model.deep_supervision_scales()):
        assert out.shape == (2, 3, round(64 * scale[0]), round(96 * scale[1]))
    assert model.deep_supervision_scales()[:2] == [[1.0, 1.0], [1 / 8, 1 / 8]]


def test_anisotropic_3d_strides():
    strides = [(1, 4, 4), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    model = VMUNet(2, 4, conv_op=nn.Conv3d, strides=strides, embed_dim=8, deep_supervision=True)
    x = torch.randn(1, 2, 8, 64, 96)
    outputs = model(x)
    assert outputs[0].shape == (1, 4, 8, 64, 96)
    assert [list(o.shape[2:]) for o in outputs[1:]] == [[4, 8, 12], [2, 4, 6], [2, 2, 3]]
    model.decoder.deep_supervision = False
    assert model(x).shape == (1, 4, 8, 64, 96)


def test_inputs_not_divisible_by_the_total_stride_are_padded_at_the_end_and_cropped():
    model = VMUNet(1, 2, embed_dim=8, deep_supervision=False).eval()
    x = torch.randn(1, 1, 50, 70)
    out = model(x)
    assert out.shape == (1, 2, 50, 70)
    padded = torch.nn.functional.pad(x, (0, 26, 0, 14))
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :50, :70], atol=1e-5)


def test_from_plan_takes_strides_from_the_plan_poolings():
    configuration = synthetic_configuration((20, 96, 80))
    network = VMUNet.from_plan(configuration, 2, 4, True, embed_dim=8)
    assert network.strides == strides_from_plan(configuration.pool_op_kernel_sizes, 3, (2, 1, 1, 1))
    assert network.spatial_dims == 3 and network.conv_op is nn.Conv3d
    plan = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]

    class Configuration:
        patch_size = [20, 96, 80]
        pool_op_kernel_sizes = plan

    built = build_network("vm_unet", Configuration(), 2, 4, True, embed_dim=8)
    assert built.strides == [(2, 4, 4), (2, 2, 2), (1, 2, 2), (1, 1, 1)]
    assert [tuple(o.shape[2:]) for o in built(torch.zeros(1, 2, 20, 96, 80))] == \
        [(20, 96, 80), (5, 12, 10), (5, 6, 5), (5, 6, 5)]


def test_strides_from_plan_groups_and_pads():
    plan = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert strides_from_plan(plan, 3, (2, 1, 1, 1)) == [(2, 4, 4), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    few = [[1, 1], [2, 2], [2, 2]]
    assert strides_from_plan(few, 2, (2, 1, 1, 1)) == [(4, 4), (1, 1), (1, 1), (1, 1)]
    with pytest.raises(ValueError, match="do not all have 2 axes"):
        strides_from_plan([[1, 1], [2, 2, 2]], 2, (2, 1, 1, 1))
    # a hand-written plan with one int per stage pools isotropically
    assert strides_from_plan([1, 2, 2, 2, 2, 2], 2, (2, 1, 1, 1)) == [(4, 4), (2, 2), (2, 2), (2, 2)]
    with pytest.raises(ValueError, match="must all be >= 1"):
        strides_from_plan([[1, 1], [0, 2]], 2, (2, 1, 1, 1))


def test_bad_shapes_and_widths_are_clear_errors():
    with pytest.raises(ValueError, match=r"too small for the network depth: axes \[1\]"):
        VMUNet(1, 2, input_shape=(64, 16))
    with pytest.raises(ValueError, match="has 3 axes but this VMUNet is 2D"):
        VMUNet(1, 2, input_shape=(32, 32, 32))
    with pytest.raises(ValueError, match="conv_op"):
        VMUNet(1, 2, conv_op=nn.Conv1d)
    with pytest.raises(ValueError, match="embed_dim must be a positive multiple of 4"):
        VMUNet(1, 2, embed_dim=10)


def test_checkpoints_with_the_earlier_head_names_still_load():
    """Before the heads moved into decoder.seg_layers they were decoder.seg_head and decoder.deep_heads.i."""
    torch.manual_seed(0)
    net = VMUNet(1, 3, embed_dim=8, deep_supervision=True)
    old = {}
    for key, value in net.state_dict().items():
        if key.startswith("decoder.seg_layers.3."):
            key = key.replace("decoder.seg_layers.3.", "decoder.seg_head.")
        elif key.startswith("decoder.seg_layers."):
            key = key.replace("decoder.seg_layers.", "decoder.deep_heads.")
        old[key] = value.clone()
    fresh = VMUNet(1, 3, embed_dim=8, deep_supervision=True)
    fresh.load_state_dict(old)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())


def test_conv_feature_map_size_scales_with_the_volume():
    model = VMUNet(1, 2, conv_op=nn.Conv3d, embed_dim=8)
    small = model.compute_conv_feature_map_size((32, 32, 32))
    large = model.compute_conv_feature_map_size((64, 64, 64))
    # nearly proportional to the volume: only the scan's chunk-start states grow slower than the tokens
    # (tests/test_memory_model.py holds the estimate to a measured forward pass)
    assert 0 < small and 6 * small < large <= 8 * small


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_final_expanding_starts_with_its_sub_positions_alike(spatial_dims):
    """Issue 23, item 7: drawn independently, the final 4x expanding's sub-positions paint a fixed pattern over the
    logits that hides the image at the start; they start alike (a nearest-neighbour upsampling), the other
    expandings keep VMamba's initialisation."""
    patch = (16, 32, 32) if spatial_dims == 3 else (64, 64)
    network = build_network("vm_unet_small", synthetic_configuration(patch), 1, 3, False)
    final = network.decoder.final_expand
    per_position = final.expand.weight.view(-1, final.out_dim, final.expand.in_features)
    assert per_position.shape[0] == 4**spatial_dims
    assert torch.equal(per_position, per_position[:1].expand_as(per_position))
    upsample = network.decoder.upsamples[-1]
    inner = upsample.expand.weight.view(-1, upsample.out_dim, upsample.expand.in_features)
    assert not torch.equal(inner[0], inner[1])
    tokens = torch.randn(1, *(p // 4 for p in patch), final.expand.in_features)
    expanded = final(tokens)
    nearest = expanded[(slice(None), *(slice(None, None, 4),) * spatial_dims)]
    for axis in range(1, spatial_dims + 1):
        nearest = nearest.repeat_interleave(4, axis)
    assert torch.equal(expanded, nearest)
