"""No-Mamba ablations (issue 26): every network without its selective scan, everything else unchanged.

The mixer is really gone (no selective-scan call in a forward pass, none of the scan's parameters), the rest of the
state dict is the network's key for key and shape for shape, the blocks compute what the ablation says, and every
network has a trainer of its ablation.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

import nnunet_mamba.blocks.mamba as mamba_module
import nnunet_mamba.blocks.vss as vss_module
from nnunet_mamba import discovery
from nnunet_mamba.architectures import build_network, get_network, registered_networks, synthetic_configuration
from nnunet_mamba.architectures.registry import NO_MAMBA_SUFFIX, ablated_network
from nnunet_mamba.blocks import CrossScanSSM
from nnunet_mamba.blocks.mamba import Mamba

NETWORKS = sorted(registered_networks())
#: the parameters of the scan itself, in CrossScanSSM and in the Mamba block
SCAN_PARAMETERS = {"x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds",
                   "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"}
SHAPES = {2: (64, 64), 3: (16, 32, 32)}


def _scan_parameter(key: str) -> bool:
    return any(key.endswith("." + name) for name in SCAN_PARAMETERS)


@pytest.fixture
def scan_calls(monkeypatch):
    """Counts the selective-scan calls of the VSS and Mamba blocks."""
    calls = []
    for module in (vss_module, mamba_module):
        original = module.selective_scan

        def counting(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "selective_scan", counting)
    return calls


def _small(name: str) -> str:
    return get_network(name).small_instance


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_the_ablation_has_no_scan_and_the_networks_other_weights(name, dims, scan_calls):
    configuration = synthetic_configuration(SHAPES[dims])
    entry = get_network(name)
    deep_supervision = entry.network_class.supports_deep_supervision
    network = build_network(_small(name), configuration, 1, 3, deep_supervision)
    ablation = build_network(_small(name + NO_MAMBA_SUFFIX), configuration, 1, 3, deep_supervision)

    full, ablated = network.state_dict(), ablation.state_dict()
    removed = set(full) - set(ablated)
    assert removed and all(_scan_parameter(key) for key in removed), sorted(removed)[:5]
    assert set(ablated) <= set(full)
    assert all(ablated[key].shape == full[key].shape for key in ablated)

    x = torch.randn(2, 1, *SHAPES[dims])
    network(x)
    assert scan_calls, "the network itself should call the scan"
    scan_calls.clear()
    outputs = ablation(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    assert not scan_calls
    assert outputs[0].shape == (2, 3, *SHAPES[dims])
    outputs[0].float().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ablation.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_identity_and_dwconv_mixers_of_the_vss_block_compute_what_they_say(spatial_dims, scan_calls):
    torch.manual_seed(0)
    x = torch.randn(2, *(5,) * spatial_dims, 8)
    identity = CrossScanSSM(8, spatial_dims, token_mixer="identity")
    dwconv = CrossScanSSM(8, spatial_dims, token_mixer="dwconv")
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    for block, mixer in ((identity, lambda t: t),
                         (dwconv, lambda t: conv(t, dwconv.mixer.weight, dwconv.mixer.bias,
                                                 padding=dwconv.mixer.padding, groups=t.shape[1]))):
        inner, gate = F.linear(x, block.in_proj.weight).chunk(2, dim=-1)
        inner = F.silu(conv(torch.movedim(inner, -1, 1), block.depthwise_conv.weight, block.depthwise_conv.bias,
                            padding=1, groups=inner.shape[-1]))
        expected = F.linear(block.out_norm(torch.movedim(mixer(inner), 1, -1)) * F.silu(gate), block.out_proj.weight)
        torch.testing.assert_close(block(x), expected)
    assert dwconv.mixer.kernel_size == ((7, 7) if spatial_dims == 2 else (5, 5, 5))
    assert not scan_calls


def test_identity_and_dwconv_mixers_of_the_mamba_block_compute_what_they_say(scan_calls):
    torch.manual_seed(0)
    x = torch.randn(2, 30, 8)
    for mixer in ("identity", "dwconv"):
        block = Mamba(8, token_mixer=mixer)
        inner, gate = F.linear(x, block.in_proj.weight).transpose(1, 2).chunk(2, dim=1)
        inner = F.silu(F.conv1d(inner, block.conv1d.weight, block.conv1d.bias, padding=3, groups=16)[..., :30])
        if mixer == "dwconv":
            inner = F.conv1d(inner, block.mixer.weight, block.mixer.bias, padding=3, groups=16)
        expected = F.linear((inner * F.silu(gate)).transpose(1, 2), block.out_proj.weight)
        torch.testing.assert_close(block(x), expected)
        assert not any(_scan_parameter("." + key) for key in block.state_dict())
    assert not scan_calls


def test_an_unknown_token_mixer_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"token_mixer must be one of 'scan', 'identity', 'dwconv', got 'none'"):
        build_network("vm_unet_small", synthetic_configuration((64, 64)), 1, 2, False, token_mixer="none")
    with pytest.raises(ValueError, match="token_mixer must be one of"):
        Mamba(8, token_mixer="mamba")


@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_has_a_no_mamba_trainer_and_a_quick_one(name):
    ablation = name + NO_MAMBA_SUFFIX
    assert ablated_network(ablation) == name and ablated_network(name) is None
    trainers = {trainer_name: trainer for trainer_name, trainer in discovery.our_trainers().items()
                if trainer.network_name == ablation}
    full = [t for t in trainers if not t.endswith("Quick")]
    assert full and all(t.endswith("NoMamba") for t in full), sorted(trainers)
    for trainer_name in full:
        # the ablation of a trainer is that trainer with another network: same protocol (the class it extends)
        parent = inspect.getmro(trainers[trainer_name])[1]
        assert parent.network_name == name and trainer_name == parent.__name__ + "NoMamba"
    if get_network(name).small_instance != name:  # networks with a small instance have a quick ablation run
        quick = [t for t in trainers if t.endswith("NoMambaQuick")]
        assert quick and trainers[quick[0]].network_to_build() == get_network(ablation).small_instance
