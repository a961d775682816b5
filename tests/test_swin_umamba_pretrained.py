"""Swin-UMamba(-dagger) from VMamba v0 ImageNet checkpoints, on synthetic checkpoints of VMamba's exact layout.

What the official loaders (``load_pretrained_ckpt`` in nets/SwinUMamba.py and nets/SwinUMambaD.py) read: every VSS
block, the mergings (``layers.i.downsample`` -> the merging after stage i) and, for the dagger, the patch
embedding; never the classifier and final norm. Semantics are checked against the independent v0 references in
tests/support.py, so a mapping that only matched shapes would fail.
"""
import pytest
import torch

from nnunet_mamba.architectures.swin_umamba import SwinUMamba, SwinUMambaD
from support import EMBED_DIM, block_weights, reference_v0_block, reference_v0_merge, synthetic_vmamba_v0

NETWORK_DEPTHS = (2, 2, 2, 2)  # the checkpoint's stage 2 has 3 blocks: its last one stays unused
CLASSIFIER = {"norm.weight", "norm.bias", "head.weight", "head.bias"}


@pytest.fixture(scope="module")
def vmamba_state():
    return synthetic_vmamba_v0()


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory, vmamba_state):
    path = tmp_path_factory.mktemp("vmamba") / "vssmtiny_dp01_ckpt_epoch_292.pth"
    torch.save({"model": vmamba_state, "epoch": 292}, path)
    return path


def _network(cls, input_channels=3):
    torch.manual_seed(0)
    return cls(input_channels, 2, embed_dim=EMBED_DIM, encoder_depths=NETWORK_DEPTHS)


def _block_source(level, block, rest):
    for ours, theirs in (("norm.", "ln_1."), ("ssm.depthwise_conv.", "self_attention.conv2d."),
                         ("ssm.", "self_attention.")):
        if rest.startswith(ours):
            return f"layers.{level}.blocks.{block}.{theirs}{rest[len(ours):]}"
    raise AssertionError(rest)


def _assert_encoder_blocks_and_mergings_loaded(network, report, vmamba_state):
    checked = 0
    for level, stage in enumerate(network.encoder.stages):
        for block in range(len(stage)):
            for rest, tensor in stage[block].state_dict().items():
                source = _block_source(level, block, rest)
                assert torch.equal(tensor, vmamba_state[source]), (level, block, rest)
                assert report.loaded[f"encoder.stages.{level}.{block}.{rest}"] == source
                checked += 1
    for level in range(3):
        for name in ("norm.weight", "norm.bias", "reduction.weight"):
            assert torch.equal(network.state_dict()[f"encoder.downsamples.{level}.{name}"],
                               vmamba_state[f"layers.{level}.downsample.{name}"])
            checked += 1
    assert checked == 13 * sum(NETWORK_DEPTHS) + 9
    return checked


@pytest.mark.parametrize("cls", [SwinUMamba, SwinUMambaD])
def test_every_block_and_merging_lands_where_it_should(cls, checkpoint_path, vmamba_state):
    network = _network(cls)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    report = network.load_pretrained(checkpoint_path)
    checked = _assert_encoder_blocks_and_mergings_loaded(network, report, vmamba_state)
    embedding = {"encoder.patch_embed.norm.bias"} if cls is SwinUMamba else {
        f"encoder.patch_embed.{name}" for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
    blocks_and_mergings = {k for k in report.loaded if k.startswith(("encoder.stages.", "encoder.downsamples."))}
    assert set(report.loaded) - blocks_and_mergings == embedding
    assert len(report.loaded) == checked + len(embedding) and report.skipped == {}
    # the classifier, the final norm and the block beyond our depth are never read
    assert set(report.unused) == CLASSIFIER | {k for k in vmamba_state if k.startswith("layers.2.blocks.2.")} | (
        {"patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight"} if cls is SwinUMamba else set())
    # everything outside the encoder (the stem, the decoder, the heads) keeps its initialisation
    after = network.state_dict()
    for key in report.missing:
        assert torch.equal(before[key], after[key]), key
    assert all(not key.startswith(("encoder.stages.", "encoder.downsamples.")) for key in report.missing)
    assert f"loaded {len(report.loaded)} tensors, skipped 0" in report.summary()


def test_swin_umamba_keeps_its_new_embedding_but_takes_the_norm_bias_as_the_official_loader(checkpoint_path,
                                                                                           vmamba_state):
    network = _network(SwinUMamba)
    before = network.encoder.patch_embed.state_dict()
    network.load_pretrained(checkpoint_path)
    embedding = network.encoder.patch_embed
    assert embedding.proj.weight.shape == (EMBED_DIM, EMBED_DIM // 2, 2, 2)  # 2x2 from the stem: no VMamba kernel
    assert torch.equal(embedding.proj.weight, before["proj.weight"])
    assert torch.equal(embedding.norm.weight, before["norm.weight"])
    assert torch.equal(embedding.norm.bias, vmamba_state["patch_embed.norm.bias"])  # the official skip list's gap


def test_mapped_blocks_and_merging_compute_what_vmamba_computes(checkpoint_path, vmamba_state):
    network = _network(SwinUMamba).double().eval()  # eval: no drop path
    network.load_pretrained(checkpoint_path)
    x = torch.randn(1, 3, 4, EMBED_DIM, dtype=torch.float64)  # not square: rows and columns differ
    weights = {k: v.double() for k, v in block_weights(vmamba_state, 0, 1).items()}
    merge_state = {k: v.double() for k, v in vmamba_state.items() if k.startswith("layers.0.downsample.")}
    with torch.no_grad():
        assert torch.allclose(network.encoder.stages[0][1](x), reference_v0_block(weights, x), atol=1e-9)
        x = torch.randn(2, 4, 6, EMBED_DIM, dtype=torch.float64)
        assert torch.allclose(network.encoder.downsamples[0](x), reference_v0_merge(merge_state, 0, x), atol=1e-9)


def test_dagger_leaves_a_one_channel_embedding_random_as_the_official_loader(checkpoint_path, vmamba_state):
    network = _network(SwinUMambaD, input_channels=1)
    before = {k: v.clone() for k, v in network.encoder.patch_embed.state_dict().items()}
    report = network.load_pretrained(checkpoint_path)
    assert not any(key.startswith("encoder.patch_embed.") for key in report.loaded)
    for name, value in network.encoder.patch_embed.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert {f"patch_embed.{n}" for n in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")} <= set(report.unused)
    assert any("patch embedding not loaded (input of 1 channel(s)" in note for note in report.notes)
    _assert_encoder_blocks_and_mergings_loaded(network, report, vmamba_state)


def test_dagger_can_adapt_the_rgb_kernel_to_one_channel(checkpoint_path, vmamba_state):
    torch.manual_seed(0)
    network = SwinUMambaD(1, 2, embed_dim=EMBED_DIM, encoder_depths=NETWORK_DEPTHS, adapt_rgb_embedding=True)
    report = network.load_pretrained(checkpoint_path)
    rgb = vmamba_state["patch_embed.proj.weight"]
    assert torch.allclose(network.encoder.patch_embed.proj.weight, rgb.sum(dim=1, keepdim=True), atol=1e-6)
    assert report.loaded["encoder.patch_embed.proj.weight"] == "patch_embed.proj.weight"
    assert any("3/1" in note for note in report.notes)
    grey = torch.rand(1, 1, 8, 8)  # a grey image gives the response VMamba gives to it repeated on RGB
    with torch.no_grad():
        vmamba_response = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb,
                                                     vmamba_state["patch_embed.proj.bias"], stride=4)
        assert torch.allclose(network.encoder.patch_embed.proj(grey), vmamba_response, atol=1e-5)


def test_pretrained_encoder_modules_are_exactly_the_loaded_blocks_and_mergings(checkpoint_path):
    for cls in (SwinUMamba, SwinUMambaD):
        network = _network(cls)
        report = network.load_pretrained(checkpoint_path)
        frozen = {id(p) for module in network.pretrained_encoder_modules() for p in module.parameters()}
        named = dict(network.named_parameters())
        assert {key for key, p in named.items() if id(p) in frozen} == {
            key for key in report.loaded if not key.startswith("encoder.patch_embed.")}


def test_3d_networks_refuse_the_2d_checkpoint(checkpoint_path):
    network = SwinUMambaD(1, 2, conv_op=torch.nn.Conv3d, embed_dim=EMBED_DIM, encoder_depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="VMamba checkpoints are 2D .* SwinUMambaD is 3D.*from scratch"):
        network.load_pretrained(checkpoint_path)


def test_a_checkpoint_of_another_width_is_a_named_error(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": synthetic_vmamba_v0(embed_dim=32, depths=(1, 1, 1, 1))}, path)
    with pytest.raises(ValueError, match="embed_dim 16"):
        _network(SwinUMamba).load_pretrained(path)
