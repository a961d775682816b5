"""Swin-UMamba and Swin-UMamba-dagger against the official code (JiarunLiu/Swin-UMamba 2c1f72e, read into
../shared/specs/Swin-UMamba.md): exact parameter counts, where each skip comes from, the heads' grids, norms and
drop-path schedules; the 3D variant (our design) on an anisotropic plan."""
import pytest
import torch
from torch import nn

from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration
from nnunet_mamba.architectures.swin_umamba import SwinUMamba, SwinUMambaD


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def abdomen_mr_networks():
    """The published networks for AbdomenMR (1 channel, 14 classes), built once (60M and 27M parameters)."""
    torch.manual_seed(0)
    return SwinUMamba(1, 14, deep_supervision=True), SwinUMambaD(1, 14, deep_supervision=True)


def test_parameter_counts_of_the_official_code_for_abdomen_mr(abdomen_mr_networks):
    swin, dagger = abdomen_mr_networks
    assert _count(swin) == 59_889_368
    assert _count(dagger) == 27_497_720


@pytest.mark.parametrize("channels, classes, swin_count, dagger_count", [
    (3, 8, 59_890_688, 27_496_160),  # Endoscopy
    (3, 3, 59_887_068, 27_492_300),  # Microscopy
])
def test_parameter_counts_of_the_official_code_for_rgb_datasets(channels, classes, swin_count, dagger_count):
    assert _count(SwinUMamba(channels, classes, deep_supervision=True)) == swin_count
    assert _count(SwinUMambaD(channels, classes, deep_supervision=True)) == dagger_count


def test_component_counts_match_the_official_breakdown(abdomen_mr_networks):
    swin, dagger = abdomen_mr_networks
    vss_blocks = sum(_count(stage) for stage in swin.encoder.stages)
    assert vss_blocks == 20_564_352
    assert [_count(stage[0]) for stage in swin.encoder.stages] == [105_408, 339_840, 1_195_776, 4_455_936]
    assert _count(swin.encoder.downsamples) == 1_553_664
    assert _count(swin.encoder.patch_embed) == 18_720  # the new 2x2 embedding from the 48 stem channels
    assert _count(swin.stem) == 2_496
    assert _count(swin.decoder.skips) == 10_988_256
    assert _count(swin.decoder.ups) + _count(swin.decoder.output_block) == 26_751_744
    assert _count(swin.decoder.seg_layers) == 10_136
    assert _count(dagger.encoder) == 22_119_840 and _count(dagger.decoder) == 5_377_880


def test_norms_and_drop_path_schedules_are_the_official_ones(abdomen_mr_networks):
    swin, dagger = abdomen_mr_networks
    assert isinstance(swin.stem.norm, nn.InstanceNorm2d) and swin.stem.norm.affine  # the stem's norm is affine
    decoder_norms = [m for m in swin.decoder.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert decoder_norms and not any(m.affine for m in decoder_norms)  # MONAI's "instance": no affine
    assert not any(m.bias is not None for m in swin.decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
                   and m not in list(swin.decoder.seg_layers))
    assert all(m.eps == 1e-5 for m in swin.encoder.modules() if isinstance(m, nn.LayerNorm))
    assert not any(isinstance(m, nn.GELU) for m in swin.encoder.modules())  # VSS blocks without MLP

    def rates(stages):
        return [round(float(getattr(block.drop_path, "drop_prob", 0.0)), 4) for stage in stages for block in stage]

    expected = [round(i * 0.2 / 14, 4) for i in range(15)]  # linspace(0, 0.2, 15) over the encoder
    assert rates(swin.encoder.stages) == expected and rates(dagger.encoder.stages) == expected
    assert rates(dagger.decoder.stages) == [0.2, 0.16, 0.12, 0.08, 0.04, 0.0]


def _record(seen, key, value):
    seen.setdefault(key, value)  # a forward hook that returns something replaces the module's output: None here


def _small(name, patch, channels=2, classes=3, **kwargs):
    torch.manual_seed(0)
    return build_network(get_network(name).small_instance, synthetic_configuration(patch), channels, classes, True,
                         **kwargs)


def test_swin_umamba_skips_come_from_the_input_the_stem_and_three_stages():
    network = _small("swin_umamba", (64, 64))
    seen = {}
    for i, block in enumerate(network.decoder.skips):
        block.register_forward_hook(lambda m, args, out, i=i: _record(seen, f"skip{i}", (args[0], out)))
    network.stem.register_forward_hook(lambda m, args, out: _record(seen, "stem", out))
    network.encoder.register_forward_hook(lambda m, args, out: _record(seen, "stages", out))
    network.decoder.ups[0].register_forward_hook(lambda m, args, out: _record(seen, "up0", args))
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        outputs = network(x)
    assert torch.equal(seen["skip0"][0], x)  # Res(C_in -> 8) on the raw image
    assert torch.equal(seen["skip1"][0], seen["stem"])  # Res(8 -> 16) on the stem output at H/2
    for level in range(3):  # Res(C -> 2C) on the outputs of stages 0, 1, 2
        assert torch.equal(seen[f"skip{level + 2}"][0], torch.movedim(seen["stages"][level], -1, 1))
    assert [tuple(seen[f"skip{i}"][1].shape[1:]) for i in range(5)] == [
        (8, 64, 64), (16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]  # each skip doubles the width
    bottleneck, deepest_skip = seen["up0"]
    assert torch.equal(bottleneck, torch.movedim(seen["stages"][3], -1, 1))  # the bottleneck has no skip block
    assert torch.equal(deepest_skip, seen["skip4"][1])
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 16, 16), (1, 3, 8, 8)]
    assert network.deep_supervision_scales() == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.125, 0.125]]


def test_dagger_heads_sit_at_full_resolution_and_quarter_eighth_sixteenth():
    network = _small("swin_umamba_d", (64, 64))
    with torch.no_grad():
        outputs = network(torch.randn(1, 2, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 64, 64), (1, 3, 16, 16), (1, 3, 8, 8), (1, 3, 4, 4)]
    assert network.deep_supervision_scales() == [[1.0, 1.0], [0.25, 0.25], [0.125, 0.125], [0.0625, 0.0625]]
    # the patch embedding is VMamba's 4x4 from the input channels; the final expanding is 4x4 at the embedding width
    assert network.encoder.patch_embed.proj.kernel_size == (4, 4) and network.encoder.patch_embed.proj.in_channels == 2
    assert network.decoder.final_expand.expand.out_features == 16 * 16


def test_dagger_decoder_merges_the_encoder_stage_outputs():
    network = _small("swin_umamba_d", (32, 32))
    stages, merged = {}, {}
    network.encoder.register_forward_hook(lambda m, args, out: _record(stages, "out", out))
    for merge in network.decoder.merges:
        merge.register_forward_hook(lambda m, args, out: _record(merged, len(merged), args[0]))
    with torch.no_grad():
        network(torch.randn(1, 2, 32, 32))
    for i, level in enumerate((2, 1, 0)):  # [expanded below, skip] -> Linear(2C -> C)
        width = network.dims[level]
        assert merged[i].shape[-1] == 2 * width
        assert torch.equal(merged[i][..., width:], stages["out"][level])


def test_3d_variant_takes_per_axis_strides_from_an_anisotropic_plan_and_pads_odd_sizes():
    configuration = synthetic_configuration((16, 64, 64), spacing=(3.0, 1.0, 1.0))
    for name, first_strides in (("swin_umamba", [(1, 2, 2), (2, 2, 2)]), ("swin_umamba_d", [(2, 4, 4)])):
        torch.manual_seed(0)
        network = build_network(get_network(name).small_instance, configuration, 1, 2, True)
        assert network.spatial_dims == 3 and network.strides[:len(first_strides)] == first_strides
        assert all(block.ssm.num_directions == 6 for stage in network.encoder.stages for block in stage)
        with torch.no_grad():
            outputs = network(torch.randn(1, 1, 15, 60, 62))  # not multiples of the total stride
        assert tuple(outputs[0].shape) == (1, 2, 15, 60, 62)
        for output, scale in zip(outputs[1:], network.deep_supervision_scales()[1:]):
            assert tuple(output.shape[2:]) == tuple(max(1, round(s * f)) for s, f in zip((15, 60, 62), scale))
    stem = build_network("swin_umamba_small", configuration, 1, 2, False).stem
    assert stem.conv.kernel_size == (3, 7, 7)  # 7 along the axes it downsamples


def test_bad_sizes_are_named_errors():
    with pytest.raises(ValueError, match="needs 5 strides"):
        SwinUMamba(1, 2, strides=(4, 2, 2, 2), embed_dim=8, encoder_depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="4 encoder depths"):
        SwinUMambaD(1, 2, encoder_depths=(2, 2, 2))
    with pytest.raises(ValueError, match="decoder_depth must be >= 1"):
        SwinUMambaD(1, 2, embed_dim=8, encoder_depths=(1, 1, 1, 1), decoder_depth=0)
    with pytest.raises(ValueError, match="patch size \\[16, 16\\] is too small"):
        SwinUMamba(1, 2, input_shape=(16, 16), embed_dim=8, encoder_depths=(1, 1, 1, 1))
