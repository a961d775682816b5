"""The selective scan against a float64 position-by-position reference, plus backend selection.

The reference tests run for every CPU backend: the pure-PyTorch scan and, where numba imports, the compiled
one (its own tests are in test_scan_numba.py).
"""
import importlib
import importlib.util
import sys
import types

import pytest
import torch

from nnunet_mamba.ops import SCAN_ENV_VAR, numba_status, resolve_backend, selective_scan, selective_scan_ref
from nnunet_mamba.ops import scan_cuda
from nnunet_mamba.ops import scan_torch
from support import INPUT_NAMES, assert_close, huge_step_inputs, make_inputs, run_with_grads

requires_numba = pytest.mark.skipif(not numba_status()[0], reason=f"numba unavailable: {numba_status()[1]}")
CPU_BACKENDS = ["torch", pytest.param("numba", marks=requires_numba)]

CASES = [
    # batch, dim, d_state, L, groups, bc_3d, with_D, with_z, with_bias, softplus
    pytest.param(2, 8, 4, 1, 1, False, True, True, True, True, id="L1"),
    pytest.param(2, 8, 4, 37, 4, False, True, True, True, True, id="odd-L-groups4"),
    pytest.param(1, 8, 16, 37, 1, True, False, False, False, False, id="odd-L-3d-bare"),
    pytest.param(2, 6, 3, 64, 1, False, True, False, True, False, id="groups1-4d-noz"),
    pytest.param(1, 8, 4, 129, 2, False, False, True, False, True, id="groups2-z-only"),
    pytest.param(1, 8, 4, 1200, 4, False, True, True, True, True, id="long-L-groups4"),
    pytest.param(2, 12, 16, 53, 6, False, True, True, True, True, id="groups6-N16"),
    pytest.param(1, 12, 16, 301, 6, False, False, True, False, False, id="groups6-z-no-softplus"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups,bc_3d,with_D,with_z,with_bias,softplus", CASES)
def test_backend_matches_float64_reference(batch, dim, d_state, seq_len, groups, bc_3d, with_D, with_z,
                                           with_bias, softplus, backend):
    inputs = make_inputs(batch, dim, d_state, seq_len, groups, bc_3d=bc_3d, softplus=softplus)
    used = ["u", "delta", "A", "B", "C"] + [name for name, on in
                                            (("D", with_D), ("z", with_z), ("delta_bias", with_bias)) if on]
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1))
    out, grads = run_with_grads(selective_scan, inputs, used, grad_out, torch.float32,
                                delta_softplus=softplus, backend=backend)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, used, grad_out, torch.float64,
                                        delta_softplus=softplus)
    assert_close(out, ref_out, "output")
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seq_len,groups,huge_positions,used,wide_A", [
    # L=300 gives chunks of 18 positions
    pytest.param(300, 1, [40, 151, 222], ["u", "delta", "A", "B", "C"], False, id="mid-chunk"),
    pytest.param(300, 2, [53, 54, 71, 72, 299], ["u", "delta", "A", "B", "C", "D", "z"], True,
                 id="chunk-borders-weak-decay"),
])
def test_huge_steps_among_small_ones_keep_float32_precision(seq_len, groups, huge_positions, used, wide_A,
                                                            backend):
    """A decay over the small steps after a huge one must not be a difference of two ~1e5 prefix sums."""
    inputs = huge_step_inputs(seq_len, groups, huge_positions, wide_A)
    grad_out = torch.randn(2, 8, seq_len, generator=torch.Generator().manual_seed(1))
    out, grads = run_with_grads(selective_scan, inputs, used, grad_out, torch.float32, backend=backend)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, used, grad_out, torch.float64)
    assert_close(out, ref_out, "output", tol=1e-5)
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}", tol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_inputs_stay_float64(backend):
    inputs = make_inputs(1, 4, 4, 20, 2)
    inputs64 = {name: t.double() for name, t in inputs.items()}
    out = selective_scan(**inputs64, delta_softplus=True, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, selective_scan_ref(**inputs64, delta_softplus=True), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_still_computes_in_float32(backend):
    inputs = make_inputs(2, 8, 4, 50, 4)
    expected = selective_scan(**inputs, delta_softplus=True, backend=backend)
    linear = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # inside autocast, upstream layers hand the scan bfloat16 activations
        assert linear(inputs["u"].transpose(1, 2)).dtype == torch.bfloat16
        out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_out_dtype_keeps_the_float32_result_of_low_precision_inputs():
    inputs = make_inputs(1, 8, 4, 40, 2)
    low = {name: t.bfloat16() for name, t in inputs.items()}
    out = selective_scan(**low, delta_softplus=True, backend="torch", out_dtype=torch.float32)
    assert out.dtype == torch.float32
    expected = selective_scan(**{n: t.float() for n, t in low.items()}, delta_softplus=True, backend="torch")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out_dtype must be a floating-point torch.dtype"):
        selective_scan(**inputs, backend="torch", out_dtype=torch.int32)


def test_bfloat16_inputs_return_bfloat16_computed_in_float32():
    inputs = make_inputs(1, 8, 4, 40, 2)
    low = {name: t.bfloat16() for name, t in inputs.items()}
    out = selective_scan(**low, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    expected = selective_scan(**{n: t.float() for n, t in low.items()}, delta_softplus=True, backend="torch")
    torch.testing.assert_close(out, expected.bfloat16())


def test_env_var_selects_backend(monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    for value in ("torch", "auto", "AUTO", " torch ") + (("numba", " Numba ") if numba_status()[0] else ()):
        monkeypatch.setenv(SCAN_ENV_VAR, value)
        torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.delenv(SCAN_ENV_VAR)
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True), expected, rtol=1e-5, atol=1e-5)


def test_forcing_cuda_on_cpu_tensors_explains_how_to_fix(monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    monkeypatch.setenv(SCAN_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=r"(?s)cuda.*cpu.*NNUNET_MAMBA_SCAN=torch"):
        selective_scan(**inputs)
    monkeypatch.delenv(SCAN_ENV_VAR)
    with pytest.raises(RuntimeError, match="NNUNET_MAMBA_SCAN=torch"):
        selective_scan(**inputs, backend="cuda")


def test_forcing_cuda_without_kernel_explains_how_to_fix(monkeypatch):
    monkeypatch.setattr(scan_cuda.kernel_import, "outcome", (None, "mamba_ssm selective_scan_fn could not be "
                                                                   "imported (ImportError: no module named "
                                                                   "selective_scan_cuda)"))
    available, reason = scan_cuda.cuda_kernel_status()
    assert not available and "selective_scan_cuda" in reason
    with pytest.raises(RuntimeError, match=r"(?s)selective_scan_cuda.*pip install \.\[cuda\].*NNUNET_MAMBA_SCAN=torch"):
        resolve_backend(torch.device("cuda", 0), "cuda")
    assert resolve_backend(torch.device("cuda", 0), "auto") == "torch"


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    """Call with the source of a fake ``mamba_ssm.ops.selective_scan_interface``; the kernel is looked up afresh."""
    monkeypatch.setattr(scan_cuda.kernel_import, "outcome", None)
    imports = types.SimpleNamespace(count=0)
    monkeypatch.setitem(sys.modules, "fake_mamba_import_counter", imports)
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface", "selective_scan_cuda"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(interface_source):
        (tmp_path / "mamba_ssm" / "ops").mkdir(parents=True)
        (tmp_path / "mamba_ssm" / "__init__.py").write_text("")
        (tmp_path / "mamba_ssm" / "ops" / "__init__.py").write_text("")
        (tmp_path / "mamba_ssm" / "ops" / "selective_scan_interface.py").write_text(
            "import fake_mamba_import_counter\nfake_mamba_import_counter.count += 1\n" + interface_source)
        return imports

    yield install
    for name in [name for name in sys.modules if name == "mamba_ssm" or name.startswith("mamba_ssm.")]:
        del sys.modules[name]


def test_mamba_ssm_that_imports_without_its_compiled_kernel_is_unavailable(fake_mamba_ssm):
    # mamba-ssm's main branch (unreleased) guards the extension import and builds it only with
    # MAMBA_KEEP_CUDA_BUILD=TRUE
    fake_mamba_ssm("selective_scan_cuda = None\n"
                   "def selective_scan_fn(*args, **kwargs):\n"
                   "    raise RuntimeError('selective_scan_cuda is not installed')\n")
    available, reason = scan_cuda.cuda_kernel_status()
    assert not available
    assert "mamba_ssm imports but its compiled kernel selective_scan_cuda is missing" in reason
    assert "MAMBA_KEEP_CUDA_BUILD=TRUE" in reason
    assert resolve_backend(torch.device("cuda", 0), "auto") == "torch"
    with pytest.raises(RuntimeError, match="selective_scan_cuda is missing"):
        resolve_backend(torch.device("cuda", 0), "cuda")


def test_mamba_ssm_with_its_compiled_kernel_is_available(fake_mamba_ssm):
    fake_mamba_ssm("import types\n"
                   "selective_scan_cuda = types.SimpleNamespace(fwd=None, bwd=None)\n"
                   "def selective_scan_fn(*args, **kwargs):\n"
                   "    return 'kernel output'\n")
    assert scan_cuda.cuda_kernel_status() == (True, "")
    assert scan_cuda.get_selective_scan_fn()() == "kernel output"
    assert resolve_backend(torch.device("cuda", 0), "auto") == "cuda"


def test_any_error_while_importing_mamba_ssm_is_remembered_once_with_its_text(fake_mamba_ssm):
    imports = fake_mamba_ssm("raise RuntimeError('triton: CUDA driver initialization failed')\n")
    for _ in range(3):
        available, reason = scan_cuda.cuda_kernel_status()
        assert not available
        assert "RuntimeError: triton: CUDA driver initialization failed" in reason
    assert resolve_backend(torch.device("cuda", 0), "auto") == "torch"
    assert imports.count == 1


@pytest.fixture
def kernel_present(monkeypatch):
    """Pretend mamba-ssm's compiled kernel imported (no GPU is needed to resolve a backend)."""
    monkeypatch.setattr(scan_cuda.kernel_import, "outcome", (lambda *args, **kwargs: None, ""))


def test_float64_never_reaches_the_cuda_kernel(kernel_present):
    gpu = torch.device("cuda", 0)
    assert resolve_backend(gpu) == "cuda"
    assert resolve_backend(gpu, "auto", dtype=torch.float32) == "cuda"
    assert resolve_backend(gpu, "auto", dtype=torch.float64) == "torch"
    with pytest.raises(RuntimeError, match=r"(?s)forced.*torch\.float64.*float32, float16 and bfloat16.*"
                                           r"NNUNET_MAMBA_SCAN=torch"):
        resolve_backend(gpu, "cuda", dtype=torch.float64)


@pytest.mark.parametrize("dtype,compute_dtype", [(torch.float64, torch.float64), (torch.bfloat16, torch.float32)])
def test_selective_scan_resolves_the_backend_for_its_compute_dtype(monkeypatch, dtype, compute_dtype):
    selective_scan_module = importlib.import_module("nnunet_mamba.ops.selective_scan")  # the name is shadowed
    asked = []
    monkeypatch.setattr(selective_scan_module, "resolve_backend",
                        lambda device, backend=None, *, dtype=None: asked.append(dtype) or "torch")
    inputs = make_inputs(1, 4, 4, 10, 1)
    selective_scan(**{name: t.to(dtype) for name, t in inputs.items()})
    assert asked == [compute_dtype]


def test_bad_env_var_value_is_rejected(monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    monkeypatch.setenv(SCAN_ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=r"NNUNET_MAMBA_SCAN.*auto, cuda, triton, numba, torch"):
        selective_scan(**inputs)
    with pytest.raises(ValueError, match="auto, cuda, triton, numba, torch"):
        selective_scan(**make_inputs(1, 4, 4, 10, 1), backend="fast")


@pytest.mark.parametrize("backend", [1, True, torch.device("cpu")])
def test_non_string_backend_is_rejected_by_name(backend):
    with pytest.raises(ValueError,
                       match=r"backend .* must be a string, one of auto, cuda, triton, numba, torch, or None"):
        selective_scan(**make_inputs(1, 4, 4, 10, 1), backend=backend)


@pytest.mark.parametrize("name,dtype", [("u", torch.int64), ("delta", torch.bool), ("A", torch.int32),
                                        ("B", torch.int64), ("D", torch.uint8), ("delta_bias", torch.bool)])
def test_integer_and_bool_inputs_are_refused_by_name(name, dtype):
    inputs = make_inputs(1, 4, 4, 10, 1)
    inputs[name] = inputs[name].to(dtype)
    with pytest.raises(TypeError, match=rf"selective_scan: {name} has dtype {dtype}; the scan needs "
                                        rf"floating-point inputs"):
        selective_scan(**inputs, backend="torch")


@pytest.mark.parametrize("name", ["u", "delta", "B", "D"])
def test_non_tensor_inputs_are_refused_by_name(name):
    inputs = make_inputs(1, 4, 4, 10, 1)
    inputs[name] = inputs[name].tolist()
    optional = " or None" if name == "D" else ""
    with pytest.raises(TypeError, match=rf"^selective_scan: {name} is a list; it must be a torch.Tensor{optional} "
                                        rf"\(convert it with torch.as_tensor\)$"):
        selective_scan(**inputs, backend="torch")


def test_complex_inputs_are_refused_by_name():
    inputs = make_inputs(1, 4, 4, 10, 1)
    inputs["A"] = inputs["A"].to(torch.complex64)
    with pytest.raises(ValueError, match="complex A is not supported; A must be real"):
        selective_scan(**inputs, backend="torch")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups", [
    pytest.param(2, 4, 3, 0, 2, id="L0"),
    pytest.param(0, 4, 3, 5, 2, id="batch0"),
    pytest.param(2, 0, 3, 5, 1, id="dim0"),
    pytest.param(2, 4, 0, 5, 2, id="d_state0"),
    pytest.param(0, 0, 0, 0, 1, id="all0"),
])
def test_empty_inputs_give_empty_results_and_zero_gradients(batch, dim, d_state, seq_len, groups, backend):
    inputs = make_inputs(batch, dim, d_state, seq_len, groups)
    grad_out = torch.randn(batch, dim, seq_len)
    out, grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, grad_out, torch.float32,
                                delta_softplus=True, backend=backend)
    if seq_len == 0:  # the reference cannot stack zero steps; every sum over L is 0
        ref_out, ref_grads = out.new_zeros(out.shape), {name: torch.zeros_like(grads[name]) for name in grads}
    else:
        ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, INPUT_NAMES, grad_out, torch.float64,
                                            delta_softplus=True)
    assert out.shape == (batch, dim, seq_len)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name in INPUT_NAMES:
        assert grads[name].shape == inputs[name].shape
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5)


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
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, used, grad_out, torch.float64,
                                        delta_softplus=True)
    assert_close(out, ref_out, "output")
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_double_backward_is_an_error_not_a_wrong_value(backend):
    inputs = {name: t.clone().requires_grad_() for name, t in make_inputs(1, 4, 4, 20, 2).items()}
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    (grad_u,) = torch.autograd.grad(out.square().sum(), inputs["u"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_u.sum().backward()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("wanted", [("u",), ("delta",), ("A",), ("B",), ("C",), ("A", "C"), ("u", "B"), ("D",),
                                    ("z",), ("delta_bias",), ("delta_bias", "C")])
def test_gradients_asked_for_alone_equal_the_full_backward(wanted, backend):
    """The backward skips what autograd does not need; what it does compute must not change."""
    inputs = make_inputs(2, 8, 4, 150, 2)
    grad_out = torch.randn(2, 8, 150, generator=torch.Generator().manual_seed(3))
    _, all_grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, grad_out, torch.float32,
                                  delta_softplus=True, backend=backend)
    leaves = {name: t.clone().requires_grad_(name in wanted) for name, t in inputs.items()}
    selective_scan(**leaves, delta_softplus=True, backend=backend).backward(grad_out)
    for name, leaf in leaves.items():
        if name in wanted:
            torch.testing.assert_close(leaf.grad.double(), all_grads[name], rtol=0, atol=0)
        else:
            assert leaf.grad is None


GiB = 1 << 30


@pytest.mark.parametrize("free,reserved,allocated,dtype,expected", [
    pytest.param(70 * GiB, 0, 0, torch.float32, scan_torch.MAX_CUDA_SLAB_ELEMENTS, id="large-gpu-capped"),
    pytest.param(2 * GiB, 0, 0, torch.float32, (2 * GiB // 4) // (4 * 5), id="share-of-free"),
    pytest.param(2 * GiB, 0, 0, torch.float64, (2 * GiB // 4) // (8 * 5), id="float64-half"),
    pytest.param(1 * GiB, 3 * GiB, 2 * GiB, torch.float32, (2 * GiB // 4) // (4 * 5), id="cached-counts-as-free"),
    pytest.param(100 << 20, 0, 0, torch.float32, scan_torch.DEFAULT_SLAB_ELEMENTS, id="nearly-full-floor"),
])
def test_gpu_slabs_are_sized_from_free_memory(monkeypatch, free, reserved, allocated, dtype, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (free, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
    gpu = torch.device("cuda", 1)
    elements = scan_torch.slab_elements_for(gpu, dtype)
    assert elements == expected
    assert asked == [gpu]
    if expected not in (scan_torch.DEFAULT_SLAB_ELEMENTS, scan_torch.MAX_CUDA_SLAB_ELEMENTS):
        workspace_bytes = elements * dtype.itemsize * scan_torch.WORKSPACE_BUFFERS
        assert workspace_bytes <= scan_torch.CUDA_FREE_MEMORY_SHARE * (free + reserved - allocated)


def test_cpu_slabs_keep_the_tuned_default(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: pytest.fail("asked a GPU about memory"))
    assert scan_torch.slab_elements_for(torch.device("cpu"), torch.float32) == scan_torch.DEFAULT_SLAB_ELEMENTS


def test_benchmark_mambapy_equivalent_matches_reference():
    pytest.importorskip("mambapy")
    from nnunet_mamba.benchmarks.scan import mambapy_selective_scan

    inputs = make_inputs(2, 8, 4, 40, 4)
    torch.testing.assert_close(
        mambapy_selective_scan(**inputs, delta_softplus=True).double(),
        selective_scan_ref(**{n: t.double() for n, t in inputs.items()}, delta_softplus=True),
        rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", ["0", "-3"])
def test_benchmark_scan_refuses_lengths_below_one(length, capsys):
    from nnunet_mamba.benchmarks.scan import run_scan_benchmark
    from nnunet_mamba.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["benchmark", "scan", "--lengths", "64", length, "--no-mambapy"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disagree" not in err
    assert err.splitlines()[-1] == (f"nnunet-mamba benchmark scan: error: argument --lengths: {length} is no sequence "
                                    f"length: give lengths L >= 1, e.g. 1024 4096")
    with pytest.raises(ValueError, match=rf"^scan lengths must be at least 1, got \[{length}\]$"):
        run_scan_benchmark(lengths=(64, int(length)), verbose=False)


def test_benchmark_command_runs(capsys):
    import argparse

    from nnunet_mamba.commands import benchmark

    parser = argparse.ArgumentParser()
    benchmark.register(parser.add_subparsers())
    args = parser.parse_args(["benchmark", "scan", "--lengths", "64", "--dim", "8", "--d-state", "4",
                              "--groups", "2", "--repeats", "1", "--threads", "1"])
    assert args.func(args) == 0  # each backend's memory is measured in a process of its own: 30 to 40 s here
    printed = capsys.readouterr().out
    assert "| nnunet_mamba (torch) | 64 |" in printed
    assert ("| nnunet_mamba (numba) | 64 |" in printed) == numba_status()[0]
    mambapy = importlib.util.find_spec("mambapy") is not None
    assert ("| mambapy pscan | 64 |" in printed) == mambapy


def test_a_release_installed_without_its_kernel_says_how_to_build_it(fake_mamba_ssm):
    # mamba-ssm <= 2.3.2.post1 imports its extension unguarded; MAMBA_SKIP_CUDA_BUILD=TRUE leaves it out
    fake_mamba_ssm("import selective_scan_cuda\n")
    available, reason = scan_cuda.cuda_kernel_status()
    assert not available
    assert reason.startswith("mamba_ssm selective_scan_fn could not be imported (ModuleNotFoundError: No module "
                             "named 'selective_scan_cuda'): mamba-ssm is installed without its compiled kernel")
    assert "pip install --no-build-isolation --no-cache-dir --force-reinstall --no-deps 'mamba-ssm>=2.2,<2.4'" in reason
    assert "unless MAMBA_SKIP_CUDA_BUILD=TRUE" in reason
    assert "main branch also needs MAMBA_KEEP_CUDA_BUILD=TRUE" in reason


def test_no_mamba_ssm_at_all_is_said_plainly(monkeypatch):
    monkeypatch.setattr(scan_cuda.kernel_import, "outcome", None)

    def not_installed(name):
        raise ModuleNotFoundError("No module named 'mamba_ssm'", name="mamba_ssm")  # what Python raises

    monkeypatch.setattr(scan_cuda, "importlib", types.SimpleNamespace(import_module=not_installed))
    assert scan_cuda.cuda_kernel_status() == (
        False, 'mamba-ssm is not installed (pip install -e ".[cuda]" on a CUDA machine)')
