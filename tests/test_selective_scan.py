"""The selective scan against a float64 position-by-position reference, plus backend selection."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_mamba.ops import ENV_VAR, selective_scan
from nnunet_mamba.ops import scan_cuda

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The defining recurrence, one position at a time, in whatever dtype it is given."""
    batch, dim, seq_len = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    per_group = dim // B.shape[1]
    B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(seq_len):
        step = delta[:, :, t, None]
        state = torch.exp(step * A) * state + step * B[:, :, :, t] * u[:, :, t, None]
        ys.append((state * C[:, :, :, t]).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + D[:, None] * u
    if z is not None:
        out = out * F.silu(z)
    return out


def make_inputs(batch, dim, d_state, seq_len, groups, bc_3d=False, softplus=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    if softplus:
        delta = randn(batch, dim, seq_len) - 2.0  # softplus(~N(-2,1)) as in Mamba's dt init
    else:
        delta = F.softplus(randn(batch, dim, seq_len) - 2.0)
    # a few very large steps: exp(delta*A) underflows to 0 and must not produce inf/nan
    large = torch.rand(batch, dim, seq_len, generator=generator) < 0.02
    delta = torch.where(large, torch.full_like(delta, 30.0), delta)
    bc_shape = (batch, d_state, seq_len) if bc_3d else (batch, groups, d_state, seq_len)
    return {
        "u": randn(batch, dim, seq_len),
        "delta": delta,
        "A": -torch.exp(randn(dim, d_state)),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim),
        "z": randn(batch, dim, seq_len),
        "delta_bias": 0.5 * randn(dim),
    }


def run_with_grads(fn, inputs, used, grad_out, dtype, **kwargs):
    leaves = {name: inputs[name].to(dtype).clone().requires_grad_() for name in used}
    out = fn(**leaves, **kwargs)
    out.backward(grad_out.to(dtype))
    return out.detach().double(), {name: leaves[name].grad.double() for name in used}


def assert_close(actual, expected, what, tol=1e-4):
    # gradients of A, D and delta_bias sum over batch and L; compare them relative to their size
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert error <= tol * scale, f"{what}: max abs error {error:.3g} (scale {scale:.3g})"


CASES = [
    # batch, dim, d_state, L, groups, bc_3d, with_D, with_z, with_bias, softplus
    pytest.param(2, 8, 4, 1, 1, False, True, True, True, True, id="L1"),
    pytest.param(2, 8, 4, 37, 4, False, True, True, True, True, id="odd-L-groups4"),
    pytest.param(1, 8, 16, 37, 1, True, False, False, False, False, id="odd-L-3d-bare"),
    pytest.param(2, 6, 3, 64, 1, False, True, False, True, False, id="groups1-4d-noz"),
    pytest.param(1, 8, 4, 129, 2, False, False, True, False, True, id="groups2-z-only"),
    pytest.param(1, 8, 4, 1200, 4, False, True, True, True, True, id="long-L-groups4"),
]


@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups,bc_3d,with_D,with_z,with_bias,softplus", CASES)
def test_torch_backend_matches_float64_reference(batch, dim, d_state, seq_len, groups, bc_3d, with_D, with_z,
                                                 with_bias, softplus):
    inputs = make_inputs(batch, dim, d_state, seq_len, groups, bc_3d=bc_3d, softplus=softplus)
    used = ["u", "delta", "A", "B", "C"] + [name for name, on in
                                            (("D", with_D), ("z", with_z), ("delta_bias", with_bias)) if on]
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1))
    out, grads = run_with_grads(selective_scan, inputs, used, grad_out, torch.float32,
                                delta_softplus=softplus, backend="torch")
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, grad_out, torch.float64,
                                        delta_softplus=softplus)
    assert_close(out, ref_out, "output")
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")


def test_float64_inputs_stay_float64():
    inputs = make_inputs(1, 4, 4, 20, 2)
    inputs64 = {name: t.double() for name, t in inputs.items()}
    out = selective_scan(**inputs64, delta_softplus=True, backend="torch")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_scan(**inputs64, delta_softplus=True), rtol=1e-10, atol=1e-10)


def test_autocast_still_computes_in_float32():
    inputs = make_inputs(2, 8, 4, 50, 4)
    expected = selective_scan(**inputs, delta_softplus=True, backend="torch")
    linear = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # inside autocast, upstream layers hand the scan bfloat16 activations
        assert linear(inputs["u"].transpose(1, 2)).dtype == torch.bfloat16
        out = selective_scan(**inputs, delta_softplus=True, backend="torch")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_bfloat16_inputs_return_bfloat16_computed_in_float32():
    inputs = make_inputs(1, 8, 4, 40, 2)
    low = {name: t.bfloat16() for name, t in inputs.items()}
    out = selective_scan(**low, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    expected = selective_scan(**{n: t.float() for n, t in low.items()}, delta_softplus=True, backend="torch")
    torch.testing.assert_close(out, expected.bfloat16())


def test_env_var_selects_backend(monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    expected = reference_scan(**inputs)
    for value in ("torch", "auto", "AUTO", " torch "):
        monkeypatch.setenv(ENV_VAR, value)
        torch.testing.assert_close(selective_scan(**inputs), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.delenv(ENV_VAR)
    torch.testing.assert_close(selective_scan(**inputs), expected, rtol=1e-5, atol=1e-5)


def test_forcing_cuda_on_cpu_tensors_explains_how_to_fix(monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=r"(?s)cuda.*cpu.*NNUNET_MAMBA_SCAN=torch"):
        selective_scan(**inputs)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(RuntimeError, match="NNUNET_MAMBA_SCAN=torch"):
        selective_scan(**inputs, backend="cuda")


def test_forcing_cuda_without_kernel_explains_how_to_fix(monkeypatch):
    monkeypatch.setattr(scan_cuda, "_attempted", True)
    monkeypatch.setattr(scan_cuda, "_kernel", None)
    monkeypatch.setattr(scan_cuda, "_error_text", "ImportError: no module named selective_scan_cuda")
    available, reason = scan_cuda.cuda_kernel_status()
    assert not available and "selective_scan_cuda" in reason
    from nnunet_mamba.ops.selective_scan import resolve_backend
    with pytest.raises(RuntimeError, match=r"(?s)selective_scan_cuda.*pip install \.\[cuda\].*NNUNET_MAMBA_SCAN=torch"):
        resolve_backend(torch.device("cuda", 0), "cuda")
    assert resolve_backend(torch.device("cuda", 0), "auto") == "torch"


def test_bad_env_var_value_is_rejected(monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(ValueError, match=r"NNUNET_MAMBA_SCAN.*auto, cuda, torch"):
        selective_scan(**inputs)
    with pytest.raises(ValueError, match="auto, cuda, torch"):
        selective_scan(**make_inputs(1, 4, 4, 10, 1), backend="fast")


@pytest.mark.parametrize("name,bad,message", [
    ("u", torch.zeros(4, 10), r"u must be \(batch, dim, L\)"),
    ("delta", torch.zeros(1, 4, 11), "delta shape"),
    ("A", torch.zeros(5, 4), r"A must be \(dim=4"),
    ("B", torch.zeros(1, 4, 3, 10), "B has shape"),
    ("C", torch.zeros(1, 4, 11), "C has shape"),
    ("B", torch.zeros(1, 1, 1, 4, 10), r"B must be \(batch, N, L\)"),
    ("D", torch.zeros(3), r"D must have shape \(4,\)"),
    ("delta_bias", torch.zeros(4, 1), r"delta_bias must have shape \(4,\)"),
    ("z", torch.zeros(1, 4, 9), "z shape"),
])
def test_bad_shapes_are_rejected(name, bad, message):
    inputs = make_inputs(1, 4, 4, 10, 1)
    inputs[name] = bad
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, backend="torch")


def test_group_count_must_divide_dim_and_match():
    inputs = make_inputs(1, 6, 4, 10, 2)
    inputs["C"] = torch.zeros(1, 3, 4, 10)
    with pytest.raises(ValueError, match="B has 2 groups but C has 3"):
        selective_scan(**inputs, backend="torch")
    inputs = make_inputs(1, 6, 4, 10, 4)
    with pytest.raises(ValueError, match="4 groups, which must divide dim=6"):
        selective_scan(**inputs, backend="torch")


def test_many_slabs_and_chunks_match_reference():
    """One channel per slab and batch > 1: slab borders inside a group must not leak state."""
    from nnunet_mamba.ops.scan_torch import selective_scan_torch

    inputs = make_inputs(3, 8, 4, 150, 2)
    used = list(INPUT_NAMES)
    grad_out = torch.randn(3, 8, 150, generator=torch.Generator().manual_seed(2))
    out, grads = run_with_grads(
        lambda **kw: selective_scan_torch(**kw, delta_softplus=True, slab_elements=1),
        inputs, used, grad_out, torch.float32)
    ref_out, ref_grads = run_with_grads(reference_scan, inputs, used, grad_out, torch.float64,
                                        delta_softplus=True)
    assert_close(out, ref_out, "output")
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")


def test_benchmark_mambapy_equivalent_matches_reference():
    pytest.importorskip("mambapy")
    from nnunet_mamba.benchmarks.scan import mambapy_selective_scan

    inputs = make_inputs(2, 8, 4, 40, 4)
    torch.testing.assert_close(
        mambapy_selective_scan(**inputs, delta_softplus=True).double(),
        reference_scan(**{n: t.double() for n, t in inputs.items()}, delta_softplus=True),
        rtol=1e-4, atol=1e-4)


def test_benchmark_command_runs(capsys):
    import argparse

    from nnunet_mamba.commands import benchmark

    parser = argparse.ArgumentParser()
    benchmark.register(parser.add_subparsers())
    args = parser.parse_args(["benchmark", "scan", "--lengths", "64", "--dim", "8", "--d-state", "4",
                              "--groups", "2", "--repeats", "1", "--threads", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| nnunet_mamba (torch) | 64 |" in printed
