"""The one Mamba (v1) block: mamba-ssm's parameters, values and gradients against a float64 sequential reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_mamba.blocks.mamba import Mamba

#: mamba_ssm.Mamba(d_model=D) with its defaults (d_state 16, d_conv 4, expand 2): every tensor and its shape
def mamba_ssm_shapes(d_model: int) -> dict:
    e, r = 2 * d_model, math.ceil(d_model / 16)
    return {"A_log": (e, 16), "D": (e,), "in_proj.weight": (2 * e, d_model), "conv1d.weight": (e, 1, 4),
            "conv1d.bias": (e,), "x_proj.weight": (r + 32, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,),
            "out_proj.weight": (d_model, e)}


def reference_mamba(block: Mamba, x: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's reference path written out step by step: causal conv by hand, sequential scan."""
    e, n, r, k = block.d_inner, block.d_state, block.dt_rank, block.d_conv
    xz = x @ block.in_proj.weight.T
    if block.in_proj.bias is not None:
        xz = xz + block.in_proj.bias
    u, z = xz[..., :e], xz[..., e:]
    weight = block.conv1d.weight[:, 0]  # (E, k)
    conv = torch.zeros_like(u) + block.conv1d.bias
    for t in range(u.shape[1]):
        for j in range(k):  # tap j sees position t - (k - 1) + j; before the start there are zeros
            source = t - (k - 1) + j
            if source >= 0:
                conv[:, t] = conv[:, t] + weight[:, j] * u[:, source]
    u = F.silu(conv)
    x_dbl = u @ block.x_proj.weight.T
    dt = F.softplus(x_dbl[..., :r] @ block.dt_proj.weight.T + block.dt_proj.bias)
    B, C = x_dbl[..., r:r + n], x_dbl[..., r + n:]
    A = -torch.exp(block.A_log)
    state = torch.zeros(x.shape[0], e, n, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        state = torch.exp(dt[:, t, :, None] * A) * state + dt[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
        outputs.append((state * C[:, t, None, :]).sum(-1) + block.D * u[:, t])
    y = torch.stack(outputs, dim=1) * F.silu(z)
    return y @ block.out_proj.weight.T + (0 if block.out_proj.bias is None else block.out_proj.bias)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_values_and_gradients_match_the_float64_sequential_reference(backend, monkeypatch):
    monkeypatch.setenv("NNUNET_MAMBA_SCAN", backend)
    torch.manual_seed(0)
    block = Mamba(20).double()  # dt_rank 2, d_inner 40
    with torch.no_grad():  # make the decay and the gate matter: not the initial near-identity
        block.A_log.add_(torch.randn_like(block.A_log) * 0.3)
        block.D.normal_()
    x = torch.randn(2, 23, 20, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)

    out = block(x)
    expected = reference_mamba(block, x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-10)

    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *block.parameters()], upstream)
    grads_ref = torch.autograd.grad(expected, [x_ref, *block.parameters()], upstream)
    names = ["input"] + [name for name, _ in block.named_parameters()]
    for name, got, want in zip(names, grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=f"gradient of {name}")


def test_float32_block_is_close_to_the_float64_reference():
    torch.manual_seed(1)
    block = Mamba(16)
    x = torch.randn(1, 40, 16)
    expected = reference_mamba(block.double(), x.double()).float()
    out = block.float()(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_causal_output_t_depends_on_no_later_input():
    torch.manual_seed(2)
    block = Mamba(8).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    out = block(x)
    (grad,) = torch.autograd.grad(out[0, 5].sum(), x)
    assert grad[0, 6:].abs().max() == 0 and grad[0, :6].abs().max() > 0


@pytest.mark.parametrize("d_model", [8, 32, 40, 256])
def test_a_mamba_ssm_state_dict_loads_unchanged(d_model):
    shapes = mamba_ssm_shapes(d_model)
    block = Mamba(d_model)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == shapes
    torch.manual_seed(3)
    saved = {name: torch.randn(shape) for name, shape in shapes.items()}
    block.load_state_dict(saved, strict=True)
    assert all(torch.equal(block.state_dict()[name], value) for name, value in saved.items())
    assert sum(p.numel() for p in block.parameters()) == Mamba.parameter_count(d_model) \
        == 6 * d_model**2 + 4 * math.ceil(d_model / 16) * d_model + 110 * d_model


def test_parameter_counts_of_the_spec():
    assert [Mamba.parameter_count(d) for d in (32, 64, 128, 256)] == [9_920, 32_640, 116_480, 437_760]


def test_mamba_ssm_initialisation():
    torch.manual_seed(4)
    block = Mamba(64, dt_min=0.001, dt_max=0.1)
    assert torch.equal(block.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(128, 1))
    assert torch.equal(block.D, torch.ones(128))
    dt = F.softplus(block.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    bound = block.dt_rank ** -0.5
    assert block.dt_proj.weight.abs().max() <= bound and block.dt_proj.weight.abs().max() > bound / 2
    assert block.A_log._no_weight_decay and block.D._no_weight_decay and block.dt_proj.bias._no_reinit


def test_bad_input_and_arguments_are_named():
    block = Mamba(8)
    with pytest.raises(ValueError, match=r"Mamba\(d_model=8\) takes \(batch, L, 8\) sequences, got shape \(2, 5, 4\)"):
        block(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="dt_init must be 'random' or 'constant'"):
        Mamba(8, dt_init="uniform")


@pytest.mark.parametrize("bias", [False, True])
def test_autocast_keeps_the_scan_in_float32_and_returns_the_autocast_dtype(bias):
    torch.manual_seed(5)
    block = Mamba(16, bias=bias)
    x = torch.randn(2, 30, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16  # a float32 bias added after the product would promote it
    torch.testing.assert_close(out.float(), block(x), rtol=5e-2, atol=5e-2)


def test_projection_biases_enter_as_in_mamba_ssm():
    torch.manual_seed(6)
    block = Mamba(16, bias=True).double()
    with torch.no_grad():
        block.in_proj.bias.normal_()
        block.out_proj.bias.normal_()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference_mamba(block, x), rtol=1e-9, atol=1e-9)


def test_linear_layers_on_channels_first_maps_match_nn_linear_and_need_no_copy():
    from nnunet_mamba.blocks.channels_first import linear_channels_first, linear_to_channels_last

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    tokens = torch.randn(3, 7, 6)  # channels-last (batch, L, channels)
    expected = layer(tokens)
    out = linear_channels_first(tokens.transpose(1, 2), layer.weight, layer.bias)
    assert out.shape == (3, 5, 7) and out.is_contiguous()  # the scan's layout, written directly
    torch.testing.assert_close(out, expected.transpose(1, 2))
    back = linear_to_channels_last(tokens.transpose(1, 2).contiguous(), layer.weight, layer.bias)
    assert back.shape == (3, 7, 5) and back.is_contiguous()
    torch.testing.assert_close(back, expected)
    torch.testing.assert_close(linear_channels_first(tokens.transpose(1, 2), layer.weight),
                               (tokens @ layer.weight.t()).transpose(1, 2))


def test_long_contiguous_maps_run_the_numba_product_in_inference_and_training(monkeypatch):
    """The numba product runs on contiguous maps whose sequences are long (or whose inputs are few), outside dispatch
    modes, with and without a gradient recorded; its values and gradients are nn.Linear's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from nnunet_mamba.blocks import channels_first
    from nnunet_mamba.blocks.channels_first import linear_channels_first
    from nnunet_mamba.ops import block_ops

    if not block_ops.kernels_import.status()[0]:
        pytest.skip("numba unavailable")
    calls = []
    product = channels_first.channels_linear
    monkeypatch.setattr(channels_first, "channels_linear", lambda *args: calls.append("numba") or product(*args))
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    long_map = torch.randn(2, 6, block_ops.LONG_SEQUENCE)
    expected = layer(long_map.transpose(1, 2)).transpose(1, 2)
    with torch.no_grad():
        for bias in (layer.bias, None):
            out = linear_channels_first(long_map, layer.weight, bias)
            assert out.shape == (2, 5, block_ops.LONG_SEQUENCE) and out.is_contiguous()
            torch.testing.assert_close(out, expected - (0 if bias is not None else layer.bias.view(5, 1)))
        assert calls == ["numba", "numba"]
        linear_channels_first(long_map[..., 1:].contiguous(), layer.weight)  # shorter
        linear_channels_first(long_map.transpose(1, 2).contiguous().transpose(1, 2), layer.weight)  # a view
        assert calls == ["numba", "numba"]

        class Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                calls.append(str(func))
                return func(*args, **(kwargs or {}))

        with Recorder():  # FLOP counters see the product
            linear_channels_first(long_map, layer.weight)
        assert calls[2:] == ["aten.expand.default", "aten.bmm.default"]
    del calls[:]
    long_map.requires_grad_()
    expected = layer(long_map.transpose(1, 2)).transpose(1, 2)
    out = linear_channels_first(long_map, layer.weight, layer.bias)  # training: gradients recorded
    assert calls == ["numba"] and out.grad_fn is not None
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    leaves = (long_map, layer.weight, layer.bias)
    for gradient, reference in zip(torch.autograd.grad(out, leaves, grad_out),
                                   torch.autograd.grad(expected, leaves, grad_out)):
        torch.testing.assert_close(gradient, reference, rtol=1e-4, atol=1e-3)


def test_the_scan_gets_its_inputs_without_layout_copies(monkeypatch):
    """x, z, delta come contiguous in (batch, channels, L) and B and C as views of one product, so the block
    makes no transposing copy for the scan (which made LightM-UNet slow on CPU)."""
    import nnunet_mamba.blocks.mamba as mamba_module

    seen = {}

    def spy(u, delta, A, B, C, D=None, z=None, **kwargs):
        seen.update(u=u, delta=delta, B=B, C=C, z=z)
        return u * 0

    monkeypatch.setattr(mamba_module, "selective_scan", spy)
    block = Mamba(16)
    block(torch.randn(2, 30, 16))
    for name in ("u", "delta", "z"):
        assert seen[name].shape == (2, 32, 30) and seen[name].is_contiguous(), name
    for name in ("B", "C"):
        assert seen[name].shape == (2, 16, 30) and seen[name].stride(-1) == 1, name
    # views of x_proj's one product, not copies
    assert seen["B"].untyped_storage().data_ptr() == seen["C"].untyped_storage().data_ptr()


def test_channels_first_entry_is_the_same_block():
    """forward_channels_first((B, D, L)) is forward((B, L, D)) transposed, contiguous out, gradients included."""
    torch.manual_seed(7)
    block = Mamba(16, bias=True).double()
    tokens = torch.randn(2, 16, 21, dtype=torch.float64, requires_grad=True)
    out = block.forward_channels_first(tokens)
    assert out.shape == (2, 16, 21) and out.is_contiguous()
    reference = block(tokens.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, tokens, grad)[0],
                               torch.autograd.grad(reference, tokens, grad)[0], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"forward_channels_first takes \(batch, 16, L\) sequences, got shape \(2, 21, 16\)"):
        block.forward_channels_first(torch.randn(2, 21, 16))


def test_channels_first_modules_are_nn_linear_and_nn_layer_norm_on_transposed_maps():
    """Same parameters and state-dict keys as the nn modules they stand for, and their output, channels-first."""
    from nnunet_mamba.blocks.channels_first import ChannelsFirstLinear, grouped_linear_channels_first
    from nnunet_mamba.blocks.layer_norm import ChannelsFirstLayerNorm

    torch.manual_seed(8)
    linear, reference_linear = ChannelsFirstLinear(6, 5), torch.nn.Linear(6, 5)
    reference_linear.load_state_dict(linear.state_dict(), strict=True)
    norm, reference_norm = ChannelsFirstLayerNorm(6), torch.nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    reference_norm.load_state_dict(norm.state_dict(), strict=True)
    maps = torch.randn(3, 6, 11)
    for module, reference in ((linear, reference_linear), (norm, reference_norm)):
        out = module(maps)
        assert out.is_contiguous()
        torch.testing.assert_close(out, reference(maps.transpose(1, 2)).transpose(1, 2), rtol=1e-5, atol=1e-5)

    sequences = torch.randn(2, 4, 6, 9)  # (batch, directions, channels, L)
    weights = torch.randn(4, 5, 6)  # one (out, in) weight per direction
    out = grouped_linear_channels_first(sequences, weights)
    assert out.shape == (2, 4, 5, 9) and out.is_contiguous()
    torch.testing.assert_close(out, torch.einsum("bkel,kce->bkcl", sequences, weights), rtol=1e-5, atol=1e-5)
    sliced = sequences[:, :, 1:4]  # a slice along the channels, as the VSS block's dt rows of x_proj's output
    torch.testing.assert_close(grouped_linear_channels_first(sliced, weights[..., 1:4]),
                               torch.einsum("bkel,kce->bkcl", sliced, weights[..., 1:4]), rtol=1e-5, atol=1e-5)
    assert grouped_linear_channels_first(sequences[:0], weights).shape == (0, 4, 5, 9)  # an empty batch
