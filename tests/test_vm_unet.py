import json

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_mamba.architectures import NETWORKS, VMUNet, build_network, strides_from_plan


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_canonical_2d_model_has_the_published_parameter_count():
    model = VMUNet(input_channels=3, num_classes=1, deep_supervision=False)
    assert count_parameters(model) == pytest.approx(27.43e6, rel=0.01)


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


def test_inputs_not_divisible_by_the_total_stride_are_padded_and_cropped():
    model = VMUNet(1, 2, embed_dim=8, deep_supervision=False).eval()
    x = torch.randn(1, 1, 50, 70)
    out = model(x)
    assert out.shape == (1, 2, 50, 70)
    padded = torch.nn.functional.pad(x, (0, 26, 0, 14))
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :50, :70], atol=1e-5)


def test_patch_too_small_for_the_depth_is_a_clear_error():
    with pytest.raises(ValueError, match=r"too small for the network depth: axes \[1\]"):
        VMUNet(1, 2, patch_size=(64, 16))


def test_patch_dimensionality_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="has 3 axes but this VMUNet is 2D"):
        VMUNet(1, 2, patch_size=(32, 32, 32))
    with pytest.raises(ValueError, match="conv_op"):
        VMUNet(1, 2, conv_op=nn.Conv1d)


def test_strides_from_plan_groups_and_pads():
    plan = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert strides_from_plan(plan, 3, (2, 1, 1, 1)) == [(2, 4, 4), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    few = [[1, 1], [2, 2], [2, 2]]
    assert strides_from_plan(few, 2, (2, 1, 1, 1)) == [(4, 4), (1, 1), (1, 1), (1, 1)]
    with pytest.raises(ValueError, match="do not all have 2 axes"):
        strides_from_plan([[1, 1], [2, 2, 2]], 2, (2, 1, 1, 1))


def test_network_exposes_nnunet_pretraining_keys():
    from dynamic_network_architectures.architectures.abstract_arch import test_submodules_loadable

    model = VMUNet(1, 2, embed_dim=8)
    test_submodules_loadable(model)
    assert model.key_to_encoder == "encoder" and model.key_to_stem == "stem"


def test_conv_feature_map_size_grows_with_the_input():
    model = VMUNet(1, 2, conv_op=nn.Conv3d, embed_dim=8)
    small = model.compute_conv_feature_map_size((32, 32, 32))
    large = model.compute_conv_feature_map_size((64, 64, 64))
    assert 0 < small and large == pytest.approx(8 * small, rel=0.01)


# ----- plans made by nnU-Net's own default planner -------------------------------------------------------------

FINGERPRINTS = {
    "ct_anisotropic": ([5.0, 0.8, 0.8], [60, 512, 512]),
    "mr_isotropic_odd": ([1.0, 1.0, 1.0], [150, 190, 170]),
    "small_volumes": ([3.0, 1.0, 1.0], [20, 48, 40]),
    "thick_slices": ([8.0, 0.7, 0.7], [12, 300, 260]),
    "natural_2d": ([999.0, 1.0, 1.0], [1, 500, 620]),
}


def _plan_with_default_planner(tmp_path, monkeypatch, spacing, shape):
    import SimpleITK as sitk

    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    dataset = raw / "Dataset501_Fake"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    for name in ("imagesTr/case_000_0000.nii.gz", "labelsTr/case_000.nii.gz"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 4), np.uint8)), str(dataset / name))
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    (preprocessed / dataset.name).mkdir(parents=True)
    intensity = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -1.0, "max": 1.0,
                 "percentile_99_5": 1.0, "percentile_00_5": -1.0}
    (preprocessed / dataset.name / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [spacing] * 20, "shapes_after_crop": [shape] * 20,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {"0": intensity}}))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = ExperimentPlanner(501).plan_experiment()
    return PlansManager(plans)


@pytest.mark.parametrize("fingerprint", sorted(FINGERPRINTS))
def test_builds_and_runs_for_every_default_planner_configuration(fingerprint, tmp_path, monkeypatch):
    spacing, shape = FINGERPRINTS[fingerprint]
    plans = _plan_with_default_planner(tmp_path, monkeypatch, spacing, shape)
    configurations = [c for c in ("2d", "3d_fullres") if c in plans.available_configurations]
    assert configurations
    for configuration in configurations:
        manager = plans.get_configuration(configuration)
        model = build_network("vm_unet", manager, 1, 3, deep_supervision=True, embed_dim=4,
                              encoder_depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1, 1))
        patch = list(manager.patch_size)
        with torch.no_grad():
            outputs = model(torch.zeros(1, 1, *patch))
        expected = [[round(p * s) for p, s in zip(patch, scale)] for scale in model.deep_supervision_scales()]
        assert [list(o.shape[2:]) for o in outputs] == expected, (fingerprint, configuration, patch)
        # the plan-derived strides divide the patch: no internal padding needed
        assert all(p % s == 0 for p, s in zip(patch, model.total_stride)), (configuration, patch, model.strides)


def test_build_network_rejects_unsupported_dimensionality(monkeypatch):
    from nnunet_mamba.architectures import NetworkSpec

    class FakeConfiguration:
        patch_size = [16, 64, 64]
        pool_op_kernel_sizes = [[1, 1, 1], [2, 2, 2]]

    monkeypatch.setitem(NETWORKS, "only_2d", NetworkSpec(VMUNet, lambda c: {}, supported_dims=(2,)))
    with pytest.raises(ValueError, match=r"supports 2D inputs, but the plan's configuration '3d_fullres' is 3D"):
        build_network("only_2d", FakeConfiguration(), 1, 2, False, configuration_name="3d_fullres")
    with pytest.raises(KeyError, match="unknown network 'nope'"):
        build_network("nope", FakeConfiguration(), 1, 2, False)
