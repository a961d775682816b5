"""LightM-UNet: the official topology and its true parameter counts, v0, the options, plans and named errors."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.architectures.light_m_unet import LightMUNet, RVMLayer
from nnunet_mamba.benchmarks.memory import saved_activation_elements
from nnunet_mamba.blocks.mamba import Mamba

SMALL = {"init_filters": 16, "blocks_down": (1, 1, 1, 1)}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant, conv_op, input_channels, classes, expected", [
    ("official", nn.Conv2d, 3, 2, 5_011_765),  # Montgomery & Shenzhen (RGB x-rays)
    ("official", nn.Conv3d, 1, 3, 5_015_766),  # LiTS
    ("official", nn.Conv2d, 1, 2, 5_011_683),
    ("official", nn.Conv3d, 1, 2, 5_015_733),
    ("v0", nn.Conv2d, 3, 2, 5_375_991),
    ("v0", nn.Conv3d, 1, 3, 6_150_168),
])
def test_true_parameter_counts_of_the_official_code(variant, conv_op, input_channels, classes, expected):
    assert _count(LightMUNet(input_channels, classes, conv_op, variant=variant)) == expected


def test_official_topology_21_rvm_layers_and_the_mamba_share():
    network = LightMUNet(1, 3, nn.Conv3d)
    rvm_layers = [m for m in network.modules() if isinstance(m, RVMLayer)]
    assert len(rvm_layers) == 2 * (1 + 2 + 2 + 4) + 3 == 21
    assert [(m.in_channels, m.out_channels) for m in network.encoder.transitions.modules()
            if isinstance(m, RVMLayer)] == [(32, 64), (64, 128), (128, 256)]
    assert sum(_count(m) for m in network.modules() if isinstance(m, Mamba)) == 4_277_440
    assert _count(network.encoder.stages[3]) == 4_036_616  # the bottleneck: 80 % of the network
    assert _count(network.encoder.stem) == 59 and _count(network.decoder.seg_layers) == 227
    assert _count(network.decoder) - 227 == 71_459
    assert not any(isinstance(m, nn.Conv3d) for m in network.encoder.stages.modules())  # a pure Mamba encoder


def _as_nn_layer_norm(norm: nn.LayerNorm):
    """The layer's channels-first LayerNorm as the official nn.LayerNorm over channels-last tokens."""
    return lambda tokens: F.layer_norm(tokens, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def test_rvm_layer_is_linear_of_shared_norm_of_mamba_plus_scaled_input():
    torch.manual_seed(0)
    layer = RVMLayer(16, 24)
    with torch.no_grad():
        layer.skip_scale.fill_(0.7)
        layer.norm.weight.normal_()
    x = torch.randn(2, 16, 5, 6)
    tokens = x.flatten(2).transpose(1, 2)  # raster order: the last axis fastest
    norm = _as_nn_layer_norm(layer.norm)
    expected = F.linear(norm(layer.mamba(norm(tokens)) + 0.7 * tokens), layer.proj.weight, layer.proj.bias)
    torch.testing.assert_close(layer(x), expected.transpose(1, 2).reshape(2, 24, 5, 6))
    assert layer(x.half()).dtype == torch.float32  # half inputs are promoted, as in the official layer


def test_paper_options_per_channel_scale_and_separate_post_norm():
    base = LightMUNet(1, 2, nn.Conv2d)
    channel = LightMUNet(1, 2, nn.Conv2d, skip_scale="channel")
    separate = LightMUNet(1, 2, nn.Conv2d, separate_post_ln=True)
    rvm_inputs = [m.in_channels for m in base.modules() if isinstance(m, RVMLayer)]
    assert _count(channel) - _count(base) == sum(c - 1 for c in rvm_inputs)
    assert _count(separate) - _count(base) == sum(2 * c for c in rvm_inputs)
    layer = RVMLayer(8, 8, separate_post_ln=True)
    x = torch.randn(1, 8, 3, 3)
    tokens = x.flatten(2).transpose(1, 2)
    norm, post_norm = _as_nn_layer_norm(layer.norm), _as_nn_layer_norm(layer.post_norm)
    expected = F.linear(post_norm(layer.mamba(norm(tokens)) + tokens), layer.proj.weight, layer.proj.bias)
    torch.testing.assert_close(layer(x), expected.transpose(1, 2).reshape(1, 8, 3, 3))


def test_v0_decoder_block_is_monais_segresnet_resblock():
    from monai.networks.blocks.segresnet_block import ResBlock

    torch.manual_seed(1)
    ours = LightMUNet(1, 2, nn.Conv3d, variant="v0", **SMALL).decoder.blocks[-1]
    monai = ResBlock(3, 16, norm=("GROUP", {"num_groups": 8}))
    state = {k.replace(".conv.", "."): v for k, v in monai.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 6, 5, 4)
    torch.testing.assert_close(ours(x.clone()), monai(x.clone()))


@pytest.mark.parametrize("conv_op, planned, given, plan_strides", [
    (nn.Conv2d, (64, 64), (50, 70), None),
    (nn.Conv3d, (8, 32, 32), (7, 32, 30), None),
    (nn.Conv3d, (8, 16, 16), (8, 14, 16), [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
])
def test_forward_backward_pads_and_crops_with_plan_strides(conv_op, planned, given, plan_strides):
    configuration = synthetic_configuration(planned)
    if plan_strides is not None:
        configuration = SimpleNamespace(patch_size=planned, pool_op_kernel_sizes=plan_strides)
    torch.manual_seed(2)
    network = build_network("light_m_unet", configuration, 2, 3, False, **SMALL)
    if plan_strides is not None:  # three down-samplings take the plan's first three poolings
        assert network.strides[1:] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    output = network(torch.randn(1, 2, *given))
    assert isinstance(output, torch.Tensor) and tuple(output.shape) == (1, 3, *given)
    output.square().mean().backward()
    assert all(p.grad is not None for p in network.parameters())


def test_no_deep_supervision_named_error_and_ignored_writes():
    configuration = synthetic_configuration((64, 64))
    with pytest.raises(ValueError, match="LightMUNet has a single output and no deep supervision"):
        build_network("light_m_unet", configuration, 1, 2, deep_supervision=True)
    network = build_network("light_m_unet", configuration, 1, 2, False, **SMALL)
    network.decoder.deep_supervision = True  # what nnU-Net writes after its final validation
    assert network.decoder.deep_supervision is False
    assert network.deep_supervision_scales() == [[1.0, 1.0]]
    with torch.no_grad():
        assert tuple(network(torch.randn(1, 1, 64, 64)).shape) == (1, 2, 64, 64)


def test_bad_arguments_and_too_small_patches_are_named():
    configuration = synthetic_configuration((64, 64))
    with pytest.raises(ValueError, match="variant must be one of 'official', 'v0'.*got 'v1'"):
        build_network("light_m_unet", configuration, 1, 2, False, variant="v1")
    with pytest.raises(ValueError, match="skip_scale must be one of"):
        LightMUNet(1, 2, skip_scale="vector")
    with pytest.raises(ValueError, match="init_filters must be a positive multiple of 8"):
        LightMUNet(1, 2, init_filters=12)
    with pytest.raises(ValueError, match="needs 3 strides"):
        LightMUNet(1, 2, strides=(2, 2))
    # a hand-written plan whose patch is smaller than the network's total down-sampling
    plan = SimpleNamespace(patch_size=(4, 32), pool_op_kernel_sizes=[[1, 1], [2, 2], [2, 2], [2, 2]])
    with pytest.raises(ValueError, match=r"patch size \[4, 32\] is too small for the network depth: axes \[0\]"):
        build_network("light_m_unet", plan, 1, 2, False)


@pytest.mark.parametrize("patch, options", [
    ((32, 48), {}),
    ((128, 96), SMALL),
    ((32, 32, 32), {}),
    ((8, 48, 40), SMALL),
    ((24, 24, 24), {"variant": "v0"}),
])
def test_memory_model_matches_saved_activations(patch, options):
    configuration = synthetic_configuration(patch)
    network = build_network("light_m_unet", configuration, 1, 3, False, **options)
    estimate = network.compute_conv_feature_map_size(configuration.patch_size)
    measured = saved_activation_elements(network, configuration.patch_size)
    assert abs(estimate / measured - 1) < 0.15, (estimate, measured)


def test_the_torch_scan_never_materialises_all_states_at_once(monkeypatch):
    """A 128^3 level-0 RVM layer scans L = 2,097,152 tokens with d_inner 64; (batch, 64, L, 16) states would be
    8 GiB. The torch scan works in slabs of channels: here no tensor it creates holds even half of the states."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from nnunet_mamba.ops import selective_scan

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, t.numel())
            return out

    batch, dim, length, d_state = 1, 8, 65_536, 16
    torch.manual_seed(3)
    u, delta, z = (torch.randn(batch, dim, length, requires_grad=True) for _ in range(3))
    B, C = (torch.randn(batch, d_state, length) for _ in range(2))
    A = -torch.rand(dim, d_state)
    with LargestTensor():
        out = selective_scan(u, delta, A, B, C, D=torch.ones(dim), z=z, delta_softplus=True, backend="torch")
        out.sum().backward()
    assert LargestTensor.largest <= batch * dim * length * d_state // 2


@pytest.mark.parametrize("patch", [(32, 32), (8, 32, 32)])
def test_cpu_inference_paths_give_the_training_paths_outputs(monkeypatch, patch):
    """In CPU inference LightM-UNet's decoder up-samples and adds the skip in one pass and it max-pools by strided
    views, which do not run where a gradient is recorded; its products on long sequences and its few-channel dt
    projections run the numba kernel in both. Both give the outputs of PyTorch's ops."""
    from nnunet_mamba.blocks import channels_first
    from nnunet_mamba.ops import block_ops

    if not block_ops.kernels_import.status()[0]:
        pytest.skip("numba unavailable")
    kernels = block_ops.kernels_import.result()[0]
    ran = []
    for name in ("channels_linear", "linear_upsample_add"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *arrays, kernel=kernel, name=name: ran.append(name) or kernel(*arrays))
    monkeypatch.setattr(block_ops, "LONG_SEQUENCE", 64)  # the small patch's first levels take it with all inputs
    torch.manual_seed(0)
    network = build_network("light_m_unet", synthetic_configuration(patch), 1, 3, False).eval()
    images = torch.randn(2, 1, *patch)
    with torch.no_grad():
        fast = network(images)
    assert {"channels_linear", "linear_upsample_add"} <= set(ran)
    mamba_blocks = sum(isinstance(module, Mamba) for module in network.modules())
    assert ran.count("channels_linear") > mamba_blocks  # not the dt projections alone
    ran.clear()
    training = network(images)  # the parameters record gradients: the products keep the kernel, which has a backward
    assert "linear_upsample_add" not in ran and "channels_linear" in ran
    monkeypatch.setattr(channels_first, "channels_linear_applies", lambda *args: False)
    ran.clear()
    reference = network(images)  # PyTorch's ops throughout
    assert ran == []
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(training, reference, rtol=1e-4, atol=1e-4)
