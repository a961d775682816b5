"""Initialisation of VMUNet from VMamba v0 checkpoints, on synthetic checkpoints of VMamba's exact layout.

The reference computations (in tests/support.py, shared with Swin-UMamba's tests) are written from VMamba
v0's published semantics (scan directions row-major, column-major, both reversed; merging x[0::2,0::2],
x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]), independently of our modules, so that a mapping that only matches
shapes would fail them.
"""
import pickle
import re
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import VMUNet
from nnunet_mamba.pretrained import map_vmamba_v0_state_dict
from support import EMBED_DIM, block_weights, reference_v0_block, reference_v0_merge, synthetic_vmamba_v0


@pytest.fixture(scope="module")
def vmamba_state():
    return synthetic_vmamba_v0()


@pytest.fixture
def checkpoint_path(tmp_path, vmamba_state):
    path = tmp_path / "vmamba_small_e238_ema.pth"
    torch.save({"model": vmamba_state, "epoch": 238}, path)
    return path


def make_network(input_channels=3, **kwargs):
    return VMUNet(input_channels, 2, embed_dim=kwargs.pop("embed_dim", EMBED_DIM), **kwargs)


def load_vmamba_pretrained(network, path):
    return network.load_pretrained(path)


def vmamba_to_vm_unet_state_dict(state, network):
    return map_vmamba_v0_state_dict(state, network, network.vmamba_v0_counterpart, stem_key="stem.proj")


def test_every_mapped_tensor_equals_its_source_encoder_and_reversed_decoder(checkpoint_path, vmamba_state):
    network = make_network(3)
    report = load_vmamba_pretrained(network, checkpoint_path)
    own = network.state_dict()
    renames = {"norm.": "ln_1.", "ssm.depthwise_conv.": "self_attention.conv2d.", "ssm.": "self_attention."}

    def source_key(level, block, rest):
        for ours, theirs in renames.items():
            if rest.startswith(ours):
                return f"layers.{level}.blocks.{block}.{theirs}{rest[len(ours):]}"
        raise AssertionError(rest)

    checked = 0
    for part, stages in (("encoder", network.encoder.stages), ("decoder", network.decoder.stages)):
        for index, stage in enumerate(stages):
            level = index if part == "encoder" else 3 - index
            for block in range(len(stage)):
                for rest, tensor in stage[block].state_dict().items():
                    source = source_key(level, block, rest)
                    assert torch.equal(tensor, vmamba_state[source]), (part, index, block, rest)
                    assert report.loaded[f"{part}.stages.{index}.{block}.{rest}"] == source
                    checked += 1
    for level in range(3):
        for name in ("norm.weight", "norm.bias", "reduction.weight"):
            source = vmamba_state[f"layers.{level}.downsample.{name}"]
            assert torch.equal(own[f"encoder.downsamples.{level}.{name}"], source)
    for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias"):
        assert torch.equal(own[f"stem.{name}"], vmamba_state[f"patch_embed.{name}"])
    assert checked == 13 * (sum(network.depths[0]) + sum(network.depths[1]))
    assert len(report.loaded) == checked + 9 + 4


def test_report_lists_missing_unused_and_no_skips(checkpoint_path):
    network = make_network(3)
    report = load_vmamba_pretrained(network, checkpoint_path)
    assert report.skipped == {}
    assert {key.split(".")[1] for key in report.missing} == {"upsamples", "final_expand", "seg_layers"}
    assert all(key.startswith("decoder.") for key in report.missing)
    assert set(report.unused) == {"norm.weight", "norm.bias", "head.weight", "head.bias"} | {
        key for key in synthetic_vmamba_v0() if key.startswith("layers.2.blocks.2.")}
    summary = report.summary()
    assert f"loaded {len(report.loaded)} tensors" in summary and "skipped 0" in summary
    assert "embed_dim 16, depths 2-2-3-2" in summary and str(checkpoint_path) in summary


def test_heads_and_upsampling_keep_their_initialisation(checkpoint_path):
    torch.manual_seed(0)
    network = make_network(3)
    before = {k: v.clone() for k, v in network.state_dict().items() if k.split(".")[1] in
              ("upsamples", "final_expand", "seg_layers")}
    load_vmamba_pretrained(network, checkpoint_path)
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_input_channel_gets_the_summed_rgb_kernel(checkpoint_path, vmamba_state):
    network = make_network(1)
    report = load_vmamba_pretrained(network, checkpoint_path)
    rgb = vmamba_state["patch_embed.proj.weight"]
    assert torch.allclose(network.stem.proj.weight, rgb.sum(dim=1, keepdim=True), atol=1e-6)
    assert any("3/1" in note for note in report.notes)
    grey = torch.rand(1, 1, 8, 8)
    vmamba_response = F.conv2d(grey.repeat(1, 3, 1, 1), rgb, vmamba_state["patch_embed.proj.bias"], stride=4)
    with torch.no_grad():
        assert torch.allclose(network.stem.proj(grey), vmamba_response, atol=1e-5)


def test_four_input_channels_share_the_mean_kernel_scaled_by_3_over_4(checkpoint_path, vmamba_state):
    network = make_network(4)
    load_vmamba_pretrained(network, checkpoint_path)
    mean = vmamba_state["patch_embed.proj.weight"].mean(dim=1, keepdim=True)
    assert torch.allclose(network.stem.proj.weight, mean.repeat(1, 4, 1, 1) * 3 / 4, atol=1e-6)


def test_mapped_block_computes_what_the_vmamba_block_computes(checkpoint_path, vmamba_state):
    network = make_network(3).double().eval()  # eval: no drop-path
    load_vmamba_pretrained(network, checkpoint_path)
    x = torch.randn(2, 3, 5, EMBED_DIM, dtype=torch.float64)  # not square: rows and columns differ
    weights = {k: v.double() for k, v in block_weights(vmamba_state, 0, 1).items()}
    with torch.no_grad():
        assert torch.allclose(network.encoder.stages[0][1](x), reference_v0_block(weights, x), atol=1e-9)
        # decoder stage 3 (shallowest) starts from VMamba's first stage
        assert torch.allclose(network.decoder.stages[3][0](x), reference_v0_block(
            {k: v.double() for k, v in block_weights(vmamba_state, 0, 0).items()}, x), atol=1e-9)


def test_mapped_merging_computes_what_the_vmamba_merging_computes(checkpoint_path, vmamba_state):
    network = make_network(3)
    load_vmamba_pretrained(network, checkpoint_path)
    x = torch.randn(2, 4, 6, EMBED_DIM)
    with torch.no_grad():
        assert torch.allclose(network.encoder.downsamples[0](x), reference_v0_merge(vmamba_state, 0, x), atol=1e-5)


@pytest.mark.parametrize("container", ["model", "state_dict", "model_ema", None])
def test_checkpoint_containers_and_module_prefixes(container, vmamba_state):
    state = {f"module.{k}": v for k, v in vmamba_state.items()}
    checkpoint = state if container is None else {container: state, "epoch": 1}
    mapped, report = vmamba_to_vm_unet_state_dict(checkpoint, make_network(3))
    assert torch.equal(mapped["encoder.stages.1.0.norm.weight"], vmamba_state["layers.1.blocks.0.ln_1.weight"])
    assert report.skipped == {}


def test_shapes_that_do_not_fit_are_skipped_with_their_reason(tmp_path):
    network = make_network(3, strides=(2, 2, 2, 2))  # a 2x2 stem cannot take VMamba's 4x4 kernel
    path = tmp_path / "ckpt.pth"
    torch.save(synthetic_vmamba_v0(), path)
    report = load_vmamba_pretrained(network, path)
    assert set(report.skipped) == {"stem.proj.weight"}
    reason = report.skipped["stem.proj.weight"]
    assert "(16, 3, 4, 4)" in reason and "(16, 3, 2, 2)" in reason
    assert "stem.proj.bias" in report.loaded and "skipped stem.proj.weight" in report.describe()


def test_merging_other_than_2x2_is_skipped(vmamba_state):
    network = make_network(3, strides=(4, (4, 1), 2, 2))  # 4 neighbours in a column: same shape, other meaning
    _, report = vmamba_to_vm_unet_state_dict(vmamba_state, network)
    names = ("norm.weight", "norm.bias", "reduction.weight")
    assert set(report.skipped) == {f"encoder.downsamples.0.{name}" for name in names}
    assert "(4, 1)" in report.skipped["encoder.downsamples.0.norm.weight"]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "vmamba_small_e238_ema.pth"
    with pytest.raises(FileNotFoundError, match=str(missing).replace("\\", "\\\\")):
        load_vmamba_pretrained(make_network(3), missing)


def test_not_a_vmamba_checkpoint_says_what_was_found(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"network_weights": {"conv.weight": torch.zeros(2)}, "optimizer_state": {}}, path)
    with pytest.raises(ValueError, match=r"not a VMamba checkpoint.*layers\.0\.blocks\.0.*network_weights"):
        load_vmamba_pretrained(make_network(3), path)
    torch.save({"model": {"encoder.conv.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=r"checkpoint\['model'\].*encoder\.conv\.weight"):
        load_vmamba_pretrained(make_network(3), path)


def test_later_vmamba_layout_is_refused_with_a_reason(vmamba_state):
    renamed = {k.replace("ln_1", "norm").replace("self_attention", "op"): v for k, v in vmamba_state.items()}
    with pytest.raises(ValueError, match="later layout.*norm, op"):
        vmamba_to_vm_unet_state_dict(renamed, make_network(3))


def test_3d_network_is_refused_with_a_suggestion(checkpoint_path):
    network = VMUNet(1, 2, conv_op=nn.Conv3d, embed_dim=8, encoder_depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"3D.*not supported.*from scratch"):
        load_vmamba_pretrained(network, checkpoint_path)


def test_nothing_matched_names_both_embed_dims(checkpoint_path):
    with pytest.raises(ValueError, match=r"embed_dim 16.*embed_dim 8.*embed_dim 16"):
        load_vmamba_pretrained(make_network(3, embed_dim=8), checkpoint_path)


def _must_not_run(marker_path):
    with open(marker_path, "w") as handle:
        handle.write("ran")


class _Hostile:
    def __init__(self, marker_path):
        self.marker_path = marker_path

    def __reduce__(self):
        return _must_not_run, (self.marker_path,)


def test_checkpoint_with_foreign_objects_loads_without_running_them(tmp_path, vmamba_state, monkeypatch):
    fake_yacs = types.ModuleType("fake_yacs_config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = fake_yacs.__name__, "CfgNode"
    fake_yacs.CfgNode = CfgNode
    monkeypatch.setitem(__import__("sys").modules, fake_yacs.__name__, fake_yacs)
    config = CfgNode(MODEL=CfgNode(TYPE="vssm"))
    marker = tmp_path / "marker"
    path = tmp_path / "vmamba_tiny_e292.pth"
    torch.save({"model": vmamba_state, "config": config, "hook": _Hostile(str(marker)), "max_accuracy": 82.5}, path)
    monkeypatch.delitem(__import__("sys").modules, fake_yacs.__name__)  # as where yacs is not installed
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    report = load_vmamba_pretrained(make_network(3), path)
    assert not marker.exists()
    assert len(report.loaded) > 0 and report.skipped == {}
    assert any("fake_yacs_config.CfgNode" in note and "_must_not_run" in note for note in report.notes)


@pytest.mark.parametrize("content", ["not a checkpoint", "just text", ""])
def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_text(content)  # "just text" made torch's legacy reader raise KeyError: 544502645
    with pytest.raises(ValueError, match=rf"^{re.escape(repr(str(path)))} is not a PyTorch checkpoint: torch.save "
                                         rf"writes a zip archive \(or, before torch 1.6, a pickle\), and this "
                                         rf"file is neither$"):
        load_vmamba_pretrained(make_network(3), path)


def test_a_legacy_pickle_checkpoint_still_loads(tmp_path, vmamba_state):
    path = tmp_path / "legacy.pth"
    torch.save({"model": vmamba_state}, path, _use_new_zipfile_serialization=False)
    assert len(load_vmamba_pretrained(make_network(3), path).loaded) > 0
