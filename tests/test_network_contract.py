"""The network contract (docs/adding-a-network.md), checked for every registered network by its registration alone.

Plans come from nnU-Net's own default planner for five dataset fingerprints (2D, anisotropic 3D, odd sizes).
"""
import json

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures import abstract_arch

from nnunet_mamba.architectures import SegmentationNetwork, build_network, registered_networks, synthetic_configuration

NETWORKS = sorted(registered_networks())

FINGERPRINTS = {
    "ct_anisotropic": ([5.0, 0.8, 0.8], [60, 512, 512]),
    "mr_isotropic_odd": ([1.0, 1.0, 1.0], [150, 190, 170]),
    "small_volumes": ([3.0, 1.0, 1.0], [20, 48, 40]),
    "thick_slices": ([8.0, 0.7, 0.7], [12, 300, 260]),
    "natural_2d": ([999.0, 1.0, 1.0], [1, 500, 620]),
}

#: small forward/backward cases per dimensionality: (patch the network is planned for, input given to it)
FORWARD_CASES = {
    "2d": ((64, 64), (50, 70)),
    "3d_isotropic": ((32, 32, 32), (32, 32, 32)),
    "3d_anisotropic": ((8, 64, 64), (7, 64, 60)),
}


def _plan_with_default_planner(root, spacing, shape):
    import os

    import SimpleITK as sitk

    raw, preprocessed = root / "raw", root / "preprocessed"
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
    previous = {key: os.environ.get(key) for key in ("nnUNet_raw", "nnUNet_preprocessed")}
    os.environ.update({"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed)})
    try:
        from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(ExperimentPlanner(501).plan_experiment())
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def default_plans(tmp_path_factory):
    """fingerprint -> nnU-Net's default plans for it (planned once for all networks)."""
    return {name: _plan_with_default_planner(tmp_path_factory.mktemp(name), *fingerprint)
            for name, fingerprint in FINGERPRINTS.items()}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", NETWORKS)
def test_registration_names_a_contract_network(name):
    entry = registered_networks()[name]
    assert issubclass(entry.network_class, SegmentationNetwork)
    assert entry.network_class.network_name == name
    assert set(entry.dims) <= {2, 3} and entry.description


@pytest.mark.parametrize("fingerprint", sorted(FINGERPRINTS))
@pytest.mark.parametrize("name", NETWORKS)
def test_builds_for_every_default_planner_configuration(name, fingerprint, default_plans):
    plans = default_plans[fingerprint]
    entry = registered_networks()[name]
    configurations = [c for c in ("2d", "3d_fullres") if c in plans.available_configurations
                      and len(plans.get_configuration(c).patch_size) in entry.dims]
    assert configurations
    for configuration in configurations:
        manager = plans.get_configuration(configuration)
        patch = [int(p) for p in manager.patch_size]
        network = build_network(name, manager, 1, 3, deep_supervision=entry.network_class.supports_deep_supervision)
        abstract_arch.test_submodules_loadable(network)
        # the plan's own strides divide its patch: no internal padding at training time
        assert all(p % s == 0 for p, s in zip(patch, network.total_stride)), (configuration, patch, network.strides)
        scales = network.deep_supervision_scales()
        assert len(scales) == len(network.decoder.seg_layers) and scales[0] == [1.0] * len(patch)
        assert all(float(p * s).is_integer() for scale in scales for p, s in zip(patch, scale)), scales
        # what planners budget memory with: positive, and growing with the patch
        size = network.compute_conv_feature_map_size(patch)
        assert isinstance(size, int) and size > 0
        assert network.compute_conv_feature_map_size([2 * p for p in patch]) > size


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
@pytest.mark.parametrize("name", NETWORKS)
def test_forward_backward_and_deep_supervision_shapes(name, case):
    planned, given = FORWARD_CASES[case]
    entry = registered_networks()[name]
    if len(planned) not in entry.dims:
        pytest.skip(f"{name} is not {len(planned)}D")
    torch.manual_seed(0)
    deep_supervision = entry.network_class.supports_deep_supervision
    network = build_network(entry.small_instance, synthetic_configuration(planned), 2, 3, deep_supervision)
    outputs = network(torch.randn(2, 2, *given))
    if not deep_supervision:  # a single output: one head, one tensor, and asking for more is a named error
        with pytest.raises(ValueError, match="single output and no deep supervision"):
            build_network(entry.small_instance, synthetic_configuration(planned), 2, 3, True)
        assert len(network.decoder.seg_layers) == 1 and isinstance(outputs, torch.Tensor)
        outputs = [outputs]
    assert isinstance(outputs, list) and len(outputs) == len(network.decoder.seg_layers)
    assert tuple(outputs[0].shape) == (2, 3, *given)
    for output, scale in zip(outputs[1:], network.deep_supervision_scales()[1:]):
        assert tuple(output.shape[2:]) == tuple(max(1, round(g * s)) for g, s in zip(given, scale))
    sum(o.float().square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in network.parameters())

    network.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled writes
    with torch.no_grad():
        assert tuple(network(torch.randn(1, 2, *given)).shape) == (1, 3, *given)
        assert tuple(network(torch.randn(0, 2, *given)).shape) == (0, 3, *given)  # an empty batch is no crash


@pytest.mark.parametrize("name", NETWORKS)
def test_nnunet_pretrained_weights_transfer_between_class_counts(name, tmp_path):
    """nnU-Net's own -pretrained_weights: every tensor but the heads (decoder.seg_layers) moves across datasets."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    entry = registered_networks()[name]
    configuration = synthetic_configuration((64, 64) if 2 in entry.dims else (32, 32, 32))
    torch.manual_seed(0)
    deep_supervision = entry.network_class.supports_deep_supervision
    source = build_network(entry.small_instance, configuration, 1, 3, deep_supervision)
    torch.save({"network_weights": source.state_dict()}, tmp_path / "checkpoint_final.pth")
    torch.manual_seed(1)
    target = build_network(entry.small_instance, configuration, 1, 5, deep_supervision)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if ".seg_layers." in k}
    load_pretrained_weights(target, str(tmp_path / "checkpoint_final.pth"))
    for key, value in target.state_dict().items():
        if ".seg_layers." in key:
            assert torch.equal(value, heads_before[key]), key
        else:
            assert torch.equal(value, source.state_dict()[key]), key
    assert _count(target) > _count(source)


@pytest.mark.parametrize("name", NETWORKS)
def test_unsupported_pretrained_or_dimensionality_gives_named_errors(name, tmp_path):
    entry = registered_networks()[name]
    for dims in {2, 3} - set(entry.dims):
        with pytest.raises(ValueError, match=rf"supports .* but the plan's configuration 'x' is {dims}D"):
            build_network(name, synthetic_configuration((32,) * dims), 1, 2, False, configuration_name="x")
    network = build_network(entry.small_instance, synthetic_configuration((64, 64) if 2 in entry.dims else
                                                                           (32, 32, 32)), 1, 2, False)
    if not network.supports_pretrained:
        with pytest.raises(NotImplementedError, match=f"not supported for {type(network).__name__}"):
            network.load_pretrained(tmp_path / "weights.pth")
    configuration = synthetic_configuration((64, 64) if 2 in entry.dims else (32, 32, 32))
    with pytest.raises(ValueError, match="input channels must be >= 1"):
        build_network(name, configuration, 0, 2, False)
    with pytest.raises(ValueError, match="output channels must be >= 1"):
        build_network(name, configuration, 1, 0, False)


def test_unknown_network_and_bad_synthetic_configuration():
    with pytest.raises(KeyError, match="unknown network 'nope'; known: .*vm_unet"):
        build_network("nope", synthetic_configuration((64, 64)), 1, 2, False)
    with pytest.raises(ValueError, match="2 or 3 positive numbers"):
        synthetic_configuration((64,))
    # like the planner: an axis pools while it stays >= 4 and even
    assert synthetic_configuration((48, 20)).pool_op_kernel_sizes == ((1, 1), (2, 2), (2, 2), (2, 1))


VARIANTS = sorted(set(registered_networks(variants=True)) - set(NETWORKS))


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_builds_its_network_with_its_default_arguments(name):
    """Variants and small instances are registry entries: the class of the network they vary, their arguments."""
    entry = registered_networks(variants=True)[name]
    assert entry.variant_of in registered_networks(variants=True) and entry.default_args and entry.description
    assert entry.network_class is registered_networks(variants=True)[entry.variant_of].network_class
    configuration = synthetic_configuration((64, 64))
    deep_supervision = entry.network_class.supports_deep_supervision
    torch.manual_seed(0)
    built = build_network(name, configuration, 1, 2, deep_supervision)
    torch.manual_seed(0)
    direct = entry.network_class.from_plan(configuration, 1, 2, deep_supervision, **entry.default_args)
    assert built.state_dict().keys() == direct.state_dict().keys() and _count(built) == _count(direct)
    assert built.network_name == entry.network_class.network_name  # a network names its class's registration
