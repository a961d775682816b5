"""The Triton selective scan against the float64 reference, run by Triton's interpreter on CPU tensors.

The interpreter (TRITON_INTERPRET=1) runs the same kernel code as a GPU, one program after another in Python,
so the shapes are tiny. It is switched on per test with monkeypatch: the module builds its kernels for the
mode in force at each call, so this works whatever imported triton first (a subprocess test checks the
order that would otherwise break). By default the interpreter scans in chunks of one position (the parallel
in-chunk scan costs a Python call per element there); the ``chunk`` tests run the in-chunk associative scan,
the GPU's path, at a few chunk lengths, including chunks that end past L and carries across chunk borders.
"""
import os
import subprocess
import sys
import types

import pytest
import torch

from nnunet_mamba.ops import scan_cuda, scan_triton, selective_scan_ref
from nnunet_mamba.ops.scan_triton import selective_scan_triton, triton_status
from support import INPUT_NAMES, assert_close, huge_step_inputs, make_inputs, run_with_grads

requires_triton = pytest.mark.skipif(not triton_status()[0], reason=f"triton unavailable: {triton_status()[1]}")


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's interpreter on for this test (and off again after it)."""
    monkeypatch.setenv(scan_triton.INTERPRET_ENV_VAR, "1")
    assert scan_triton.interpreter_enabled()


def options_used(with_D, with_z, with_bias):
    return ["u", "delta", "A", "B", "C"] + [name for name, on in
                                            (("D", with_D), ("z", with_z), ("delta_bias", with_bias)) if on]


def check_against_reference(batch, dim, d_state, seq_len, groups, bc_3d, used, softplus, seed=0):
    inputs = make_inputs(batch, dim, d_state, seq_len, groups, bc_3d=bc_3d, softplus=softplus, seed=seed)
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1))
    out, grads = run_with_grads(selective_scan_triton, inputs, used, grad_out, torch.float32,
                                delta_softplus=softplus)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, used, grad_out, torch.float64,
                                        delta_softplus=softplus)
    assert_close(out, ref_out, "output")
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")


# chunks of one position (the interpreter's default): the carried state does all the work
CASES = [
    # batch, dim, d_state, L, groups, bc_3d, with_D, with_z, with_bias, softplus
    pytest.param(2, 8, 4, 1, 4, False, True, True, True, True, id="L1-groups4"),
    pytest.param(1, 8, 4, 37, 4, False, True, True, True, True, id="L37-groups4"),
    pytest.param(2, 8, 16, 37, 1, True, False, False, False, False, id="L37-groups1-N16-3d-bare"),
    pytest.param(1, 12, 16, 37, 6, False, True, True, True, True, id="L37-groups6-N16"),
    pytest.param(1, 6, 16, 300, 1, False, True, True, False, True, id="L300-groups1-N16-no-bias"),
]


@requires_triton
@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups,bc_3d,with_D,with_z,with_bias,softplus", CASES)
def test_matches_float64_reference(interpreter, batch, dim, d_state, seq_len, groups, bc_3d, with_D, with_z,
                                   with_bias, softplus):
    check_against_reference(batch, dim, d_state, seq_len, groups, bc_3d, options_used(with_D, with_z, with_bias),
                            softplus)


# the in-chunk associative scan (the GPU's path), tiny because the interpreter scans element by element
CHUNK_CASES = [
    # batch, dim, d_state, L, groups, with_D, with_z, with_bias, softplus, chunk
    pytest.param(2, 8, 4, 37, 4, True, True, True, True, 16, id="L37-groups4-chunk16"),
    pytest.param(1, 12, 4, 37, 6, False, True, False, True, 8, id="L37-groups6-chunk8-z-only"),
    pytest.param(1, 4, 4, 300, 1, True, True, True, True, 64, id="L300-groups1-chunk64"),
    pytest.param(2, 8, 4, 1, 2, True, False, True, False, 16, id="L1-groups2-chunk16"),
    pytest.param(1, 6, 3, 32, 2, True, True, True, True, 16, id="N3-per-group3-whole-chunks"),
]


@requires_triton
@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups,with_D,with_z,with_bias,softplus,chunk", CHUNK_CASES)
def test_in_chunk_scan_matches_float64_reference(interpreter, monkeypatch, batch, dim, d_state, seq_len, groups,
                                                 with_D, with_z, with_bias, softplus, chunk):
    monkeypatch.setattr(scan_triton, "INTERPRETER_BLOCK_L", chunk)
    check_against_reference(batch, dim, d_state, seq_len, groups, False, options_used(with_D, with_z, with_bias),
                            softplus)


@requires_triton
def test_several_channel_blocks_per_group_like_a_gpu(interpreter, monkeypatch):
    """On a GPU a group's channels are split over programs (fewer in the backward than in the forward), which
    add their B and C gradients atomically; the interpreter's default puts a whole group in one program."""
    def gpu_like(per_group, d_state, seq_len, interpret):
        return scan_triton.LaunchConfig(forward_block_d=4, backward_block_d=2, block_n=4, block_l=8,
                                        n_chunks=-(-seq_len // 8), num_warps=4)

    monkeypatch.setattr(scan_triton, "launch_config", gpu_like)
    # 5 channels per group: forward blocks of 4 + 1, backward blocks of 2 + 2 + 1
    check_against_reference(2, 10, 3, 20, 2, False, list(INPUT_NAMES), True)


@requires_triton
@pytest.mark.parametrize("chunk", [1, 16])
def test_huge_steps_at_chunk_borders_keep_float32_precision(interpreter, monkeypatch, chunk):
    """Steps of 1e5 among steps of 0.01 (some |A| ~1e-6): decays must be products, not differences of sums."""
    monkeypatch.setattr(scan_triton, "INTERPRETER_BLOCK_L", chunk)
    seq_len, used = 48, ["u", "delta", "A", "B", "C", "D", "z"]
    inputs = huge_step_inputs(seq_len, 2, [0, 15, 16, 31, 40, 47], wide_A=True)
    inputs = {name: t[:1] if t.dim() >= 3 else t for name, t in inputs.items()}  # batch 1
    grad_out = torch.randn(1, 8, seq_len, generator=torch.Generator().manual_seed(1))
    out, grads = run_with_grads(selective_scan_triton, inputs, used, grad_out, torch.float32)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, used, grad_out, torch.float64)
    assert_close(out, ref_out, "output", tol=1e-5)
    for name in used:
        assert_close(grads[name], ref_grads[name], f"grad of {name}", tol=1e-5)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_upcast_and_give_float32(interpreter, dtype):
    inputs = {name: t.to(dtype) for name, t in make_inputs(1, 4, 4, 12, 2).items()}
    low = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    out = selective_scan_triton(**low, delta_softplus=True)
    assert out.dtype == torch.float32
    upcast = {name: t.float().requires_grad_() for name, t in inputs.items()}
    expected = selective_scan_triton(**upcast, delta_softplus=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out)
    expected.backward(grad_out)
    for name in INPUT_NAMES:
        assert low[name].grad.dtype == dtype
        torch.testing.assert_close(low[name].grad, upcast[name].grad.to(dtype), rtol=0, atol=0)


@requires_triton
def test_float64_inputs_are_refused_not_rounded(interpreter):
    inputs = {name: t.double() for name, t in make_inputs(1, 4, 4, 6, 1).items()}
    with pytest.raises(TypeError, match=r"selective_scan_triton: u has dtype torch\.float64.*float32, float16 or "
                                        r"bfloat16"):
        selective_scan_triton(**inputs)


@requires_triton
@pytest.mark.parametrize("wanted", [("u", "C"), ("A", "delta_bias", "z")])
def test_gradients_asked_for_alone_equal_the_full_backward(interpreter, wanted):
    inputs = make_inputs(1, 4, 4, 9, 2)
    grad_out = torch.randn(1, 4, 9, generator=torch.Generator().manual_seed(3))
    _, all_grads = run_with_grads(selective_scan_triton, inputs, INPUT_NAMES, grad_out, torch.float32,
                                  delta_softplus=True)
    leaves = {name: t.clone().requires_grad_(name in wanted) for name, t in inputs.items()}
    selective_scan_triton(**leaves, delta_softplus=True).backward(grad_out)
    for name, leaf in leaves.items():
        if name in wanted:
            torch.testing.assert_close(leaf.grad.double(), all_grads[name], rtol=0, atol=0)
        else:
            assert leaf.grad is None


@requires_triton
@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups", [
    pytest.param(2, 4, 3, 0, 2, id="L0"),
    pytest.param(0, 4, 3, 5, 2, id="batch0"),
    pytest.param(2, 4, 0, 5, 2, id="d_state0"),
])
def test_empty_inputs_give_zeros_without_a_launch(interpreter, monkeypatch, batch, dim, d_state, seq_len, groups):
    monkeypatch.setattr(scan_triton, "_build_kernels", lambda interpret: pytest.fail("launched a kernel"))
    inputs = make_inputs(batch, dim, d_state, seq_len, groups)
    grad_out = torch.randn(batch, dim, seq_len)
    out, grads = run_with_grads(selective_scan_triton, inputs, INPUT_NAMES, grad_out, torch.float32,
                                delta_softplus=True)
    assert out.shape == (batch, dim, seq_len)
    if d_state == 0:  # y is D * u gated by z only
        expected = selective_scan_ref(**{name: t.double() for name, t in inputs.items()}, delta_softplus=True)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name in ("delta", "A", "B", "C", "delta_bias"):
        assert grads[name].shape == inputs[name].shape
        assert not grads[name].any()


@requires_triton
def test_double_backward_is_an_error_not_a_wrong_value(interpreter):
    inputs = {name: t.clone().requires_grad_() for name, t in make_inputs(1, 4, 4, 5, 2).items()}
    out = selective_scan_triton(**inputs, delta_softplus=True)
    (grad_u,) = torch.autograd.grad(out.square().sum(), inputs["u"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_u.sum().backward()


@requires_triton
def test_cpu_tensors_without_the_interpreter_are_a_named_error(monkeypatch):
    monkeypatch.delenv(scan_triton.INTERPRET_ENV_VAR, raising=False)
    available, reason = triton_status(torch.device("cpu"))
    assert not available
    assert "device 'cpu'" in reason and "TRITON_INTERPRET=1" in reason
    assert triton_status() == (True, "")  # triton itself imports
    with pytest.raises(RuntimeError, match=r"(?s)Triton selective-scan backend is unavailable.*device 'cpu'.*"
                                           r"TRITON_INTERPRET=1.*NNUNET_MAMBA_SCAN=auto or torch"):
        selective_scan_triton(**make_inputs(1, 4, 4, 5, 1))


@requires_triton
def test_status_by_device(monkeypatch):
    cpu_tensor = torch.zeros(1)
    monkeypatch.setenv(scan_triton.INTERPRET_ENV_VAR, "1")
    assert triton_status("cpu") == (True, "")
    assert triton_status(cpu_tensor) == (True, "")
    monkeypatch.setenv(scan_triton.INTERPRET_ENV_VAR, "0")
    assert not triton_status(cpu_tensor)[0]
    available, reason = triton_status(torch.device("meta"))
    assert not available and "device 'meta'" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert triton_status(torch.device("cuda", 0)) == (False, "triton imports but no CUDA device is visible")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert triton_status(torch.device("cuda", 0)) == (True, "")


def test_triton_that_fails_to_import_is_remembered_once_with_its_text(monkeypatch):
    for name in ("tl", "_scan_combine", "_sum_combine"):
        monkeypatch.setattr(scan_triton, name, getattr(scan_triton, name))
    monkeypatch.setattr(scan_triton.triton_import, "outcome", None)
    imports = []

    def failing_import(name):
        imports.append(name)
        raise ImportError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(scan_triton, "importlib", types.SimpleNamespace(import_module=failing_import))
    for device in (None, "cpu", "cuda"):
        available, reason = triton_status(device)
        assert not available
        assert reason == ("triton could not be imported (ImportError: libcuda.so.1: cannot open shared object "
                          "file); install it with `pip install triton` (it ships with the CUDA builds of torch "
                          "on Linux)")
    assert imports == ["triton"]
    assert not scan_triton.interpreter_enabled()
    with pytest.raises(RuntimeError, match="triton could not be imported"):
        selective_scan_triton(**make_inputs(1, 4, 4, 5, 1))


@requires_triton
def test_interpreter_works_when_triton_was_imported_before_it_was_switched_on(tmp_path):
    """Triton's own @jit helpers (tl.sum, tl.zeros) take their kind at import; the kernels must not use them."""
    script = (
        "import os, sys, torch, triton.language\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from nnunet_mamba.ops.scan_triton import selective_scan_triton\n"
        "from nnunet_mamba.ops import selective_scan_ref\nfrom support import make_inputs\n"
        "inputs = make_inputs(1, 4, 4, 6, 2)\n"
        "out = selective_scan_triton(**inputs, delta_softplus=True)\n"
        "ref = selective_scan_ref(**{n: t.double() for n, t in inputs.items()}, delta_softplus=True)\n"
        "print('max error', (out.double() - ref).abs().max().item())\n"
    )
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests_dir), tests_dir])}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("max error")[-1]) < 1e-5


@requires_triton
def test_kernels_compile_for_a_gpu_without_one(monkeypatch, tmp_path):
    """The interpreter accepts code that the compiler refuses; compile the GPU configuration (sm_90) too."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as error:
        pytest.skip(f"this triton has no ahead-of-time compile API: {error}")
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton's bundled ptxas is missing")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(scan_triton.INTERPRET_ENV_VAR, raising=False)
    # building compiled kernels may swap the module's sum combine; keep the interpreter tests' state
    monkeypatch.setattr(scan_triton, "_kernels", {})
    monkeypatch.setattr(scan_triton, "_sum_combine", scan_triton._sum_combine)
    kernels = scan_triton._build_kernels(False)
    config = scan_triton.launch_config(per_group=192, d_state=16, seq_len=4096, interpret=False)
    for kernel, block_d in ((kernels.forward, config.forward_block_d), (kernels.backward, config.backward_block_d)):
        constants = {"BLOCK_D": block_d, "BLOCK_N": config.block_n, "BLOCK_L": config.block_l}
        signature = {name: "constexpr" if name in constants else "*fp32" if name.endswith("_ptr") else "i32"
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
        assert compiled.asm.get("cubin"), f"no cubin for {kernel.fn.__name__}"


def test_launch_config_keeps_gpu_tiles_bounded():
    for per_group, d_state in ((192, 16), (768, 1), (3, 16), (64, 64), (512, 256)):
        config = scan_triton.launch_config(per_group, d_state, 1000, interpret=False)
        assert config.block_n >= d_state
        assert config.forward_block_d * config.block_n * config.block_l <= max(
            scan_triton.CUDA_FORWARD_TILE, config.block_n * scan_triton.CUDA_MIN_BLOCK_L)
        assert config.backward_block_d * config.block_n * config.block_l <= max(
            scan_triton.CUDA_BACKWARD_TILE, config.block_n * scan_triton.CUDA_MIN_BLOCK_L)
        assert config.n_chunks * config.block_l >= 1000
    interpreted = scan_triton.launch_config(6, 3, 37, interpret=True)
    assert (interpreted.forward_block_d, interpreted.block_n, interpreted.block_l) == (8, 4, 1)
    assert interpreted.n_chunks == 37


def test_dispatcher_picks_triton_on_cuda_without_mamba_ssm_and_names_forced_errors(monkeypatch):
    import importlib

    dispatch = importlib.import_module("nnunet_mamba.ops.selective_scan")

    monkeypatch.setattr(scan_cuda, "cuda_kernel_status", lambda: (False, "not installed"))
    monkeypatch.setattr(scan_triton, "triton_status", lambda device=None: (True, ""))
    cuda = torch.device("cuda")
    assert dispatch.resolve_backend(cuda, "auto", dtype=torch.float32) == "triton"
    assert dispatch.resolve_backend(cuda, "auto", dtype=torch.float64) == "torch"
    monkeypatch.setattr(scan_cuda, "cuda_kernel_status", lambda: (True, ""))
    assert dispatch.resolve_backend(cuda, "auto", dtype=torch.float32) == "cuda"  # mamba-ssm's kernel first
    monkeypatch.setattr(scan_triton, "triton_status", lambda device=None: (False, "CPU tensors run only under X"))
    with pytest.raises(RuntimeError, match="'triton' was forced but CPU tensors run only under X"):
        dispatch.resolve_backend(torch.device("cpu"), "triton", dtype=torch.float32)
