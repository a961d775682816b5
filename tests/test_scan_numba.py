"""The compiled CPU selective scan (numba backend): selection, loading, gradcheck, and its building blocks.

Its values and all eight gradients against the float64 reference, for every shape the torch backend is
tested on (L=1, odd and long L, groups 1/2/4/6, with and without z, D, bias and softplus) and for huge
steps (1e5) among small ones, are checked by the backend-parametrised tests in test_selective_scan.py.
"""
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_mamba.ops import (SCAN_ENV_VAR, available_backends, numba_status, resolve_backend, scan_numba,
                              selective_scan, selective_scan_ref)
from support import INPUT_NAMES, assert_close, make_inputs, run_with_grads

requires_numba = pytest.mark.skipif(not numba_status()[0], reason=f"numba unavailable: {numba_status()[1]}")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def numba_missing(monkeypatch):
    """Pretend numba failed to import, with the reason numba_status remembers."""
    monkeypatch.setattr(scan_numba.kernels_import, "outcome",
                        (None, "numba could not be imported (ModuleNotFoundError: No module named 'numba')"))


@requires_numba
@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64])
def test_auto_picks_numba_for_cpu_tensors(dtype, monkeypatch):
    monkeypatch.delenv(SCAN_ENV_VAR, raising=False)
    assert resolve_backend(torch.device("cpu"), dtype=dtype) == "numba"
    assert resolve_backend(torch.device("cpu"), "auto", dtype=dtype) == "numba"
    assert available_backends()["numba"] == ""


def test_auto_never_picks_numba_for_gpu_tensors(monkeypatch):
    monkeypatch.delenv(SCAN_ENV_VAR, raising=False)
    assert resolve_backend(torch.device("cuda", 0)) in ("cuda", "torch")
    assert resolve_backend(torch.device("meta")) == "torch"


def test_auto_falls_back_to_torch_without_numba(numba_missing, monkeypatch):
    monkeypatch.delenv(SCAN_ENV_VAR, raising=False)
    assert resolve_backend(torch.device("cpu")) == "torch"
    assert "No module named 'numba'" in available_backends()["numba"]
    inputs = make_inputs(1, 4, 4, 10, 2)
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True),
                               selective_scan_ref(**inputs, delta_softplus=True), rtol=1e-5, atol=1e-5)


def test_forcing_numba_without_numba_explains_how_to_fix(numba_missing, monkeypatch):
    inputs = make_inputs(1, 4, 4, 10, 1)
    with pytest.raises(RuntimeError, match=r"(?s)'numba' was forced.*No module named 'numba'.*pip install numba"
                                           r".*NNUNET_MAMBA_SCAN=torch"):
        selective_scan(**inputs, backend="numba")
    monkeypatch.setenv(SCAN_ENV_VAR, "numba")
    with pytest.raises(RuntimeError, match="No module named 'numba'"):
        selective_scan(**inputs)


def test_forcing_numba_for_gpu_tensors_or_other_dtypes_explains_how_to_fix():
    with pytest.raises(RuntimeError, match=r"(?s)'numba' was forced.*'cuda:0'.*only runs on CPU tensors.*"
                                           r"NNUNET_MAMBA_SCAN=auto"):
        resolve_backend(torch.device("cuda", 0), "numba")
    with pytest.raises(RuntimeError, match=r"(?s)'numba' was forced.*torch\.float16.*float32 and float64"):
        resolve_backend(torch.device("cpu"), "numba", dtype=torch.float16)


def test_a_failing_numba_import_is_remembered_once_with_its_text(tmp_path, monkeypatch):
    counter = tmp_path / "count.txt"
    (tmp_path / "broken_numba_kernels.py").write_text(
        f"from pathlib import Path\np = Path({str(counter)!r})\n"
        "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n"
        "raise ImportError('numba 0.1 needs numpy < 2')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(scan_numba, "KERNEL_MODULE", "broken_numba_kernels")
    monkeypatch.setattr(scan_numba.kernels_import, "outcome", None)
    for _ in range(3):
        available, reason = numba_status()
        assert not available and reason == "numba could not be imported (ImportError: numba 0.1 needs numpy < 2)"
    assert resolve_backend(torch.device("cpu")) == "torch"
    assert counter.read_text() == "1"


def test_importing_the_package_does_not_import_numba():
    code = ("import sys, nnunet_mamba, nnunet_mamba.ops, nnunet_mamba.blocks.vss\n"
            "assert 'numba' not in sys.modules, 'numba imported'\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@requires_numba
@pytest.mark.parametrize("softplus,bc_3d,with_optional", [
    pytest.param(True, False, True, id="softplus-groups2-D-z-bias"),
    pytest.param(False, True, False, id="bare-3d-BC"),
])
def test_gradcheck_in_float64(softplus, bc_3d, with_optional):
    inputs = make_inputs(2, 4, 3, 7, 2, bc_3d=bc_3d, softplus=softplus, seed=4)
    names = [n for n in INPUT_NAMES if with_optional or n not in ("D", "z", "delta_bias")]
    leaves = [inputs[n].double().requires_grad_() for n in names]

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=softplus, backend="numba")

    assert scan(*leaves).dtype == torch.float64
    assert torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@requires_numba
def test_inference_runs_the_kernel_alone_and_saves_nothing(monkeypatch):
    inputs = make_inputs(2, 8, 4, 50, 2)
    expected = selective_scan(**inputs, delta_softplus=True, backend="numba")
    monkeypatch.setattr(scan_numba.NumbaSelectiveScan, "apply",
                        lambda *args: pytest.fail("the autograd Function ran without a backward to serve"))
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    with torch.no_grad():
        out = selective_scan(**leaves, delta_softplus=True, backend="numba")
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True, backend="numba"), expected,
                               rtol=0, atol=0)


@requires_numba
def test_training_and_inference_give_the_same_values():
    inputs = make_inputs(1, 12, 16, 300, 6)
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    train = selective_scan(**leaves, delta_softplus=True, backend="numba")
    assert train.grad_fn is not None
    with torch.no_grad():
        infer = selective_scan(**inputs, delta_softplus=True, backend="numba")
    torch.testing.assert_close(train.detach(), infer, rtol=0, atol=0)


@requires_numba
def test_strided_inputs_give_the_same_results_as_contiguous_ones():
    """Like SS2D's B and C, split from one projection: views with gaps between groups."""
    inputs = make_inputs(2, 8, 4, 40, 2)
    B, C = inputs["B"], inputs["C"]
    projected = torch.cat([B, C, torch.zeros_like(B)], dim=2)  # (batch, groups, 3N, L)
    B_view, C_view, _ = torch.split(projected, [4, 4, 4], dim=2)
    u_view = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not B_view.is_contiguous() and not u_view.is_contiguous()
    strided = dict(inputs, B=B_view, C=C_view, u=u_view)
    grad_out = torch.randn(2, 8, 40, generator=torch.Generator().manual_seed(1))
    out, grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, grad_out, torch.float32,
                                delta_softplus=True, backend="numba")
    out_s, grads_s = run_with_grads(selective_scan, strided, INPUT_NAMES, grad_out, torch.float32,
                                    delta_softplus=True, backend="numba")
    torch.testing.assert_close(out_s, out, rtol=0, atol=0)
    for name in INPUT_NAMES:
        torch.testing.assert_close(grads_s[name], grads[name], rtol=0, atol=0)


@requires_numba
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_many_blocks_chunks_and_threads_match_reference(monkeypatch, threads):
    """Blocks of 8 channels, 3-position forward chunks and 5-position backward chunks: no state may leak
    across block or chunk borders, and the per-block B/C gradient slices must add up."""
    monkeypatch.setattr(scan_numba, "MAX_BLOCK_WIDTH", 8)
    monkeypatch.setattr(scan_numba, "FORWARD_CHUNK", 3)
    monkeypatch.setattr(scan_numba, "BACKWARD_BUFFER_ELEMENTS", 4 * 8 * 5)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(3, 36, 4, 61, 2)  # 18 channels per group: blocks of 8, 8 and 2
        grad_out = torch.randn(3, 36, 61, generator=torch.Generator().manual_seed(2))
        out, grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, grad_out, torch.float32,
                                    delta_softplus=True, backend="numba")
    finally:
        torch.set_num_threads(previous)
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, INPUT_NAMES, grad_out, torch.float64,
                                        delta_softplus=True)
    assert_close(out, ref_out, "output")
    for name in INPUT_NAMES:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")


@requires_numba
@pytest.mark.parametrize("batch,dim,d_state,seq_len,groups", [
    pytest.param(1, 96, 16, 300, 2, id="blocks-of-48-N16"),  # whole 8 x 8 transposes, and their edges
    pytest.param(2, 64, 80, 70, 1, id="N80-narrower-blocks"),  # 80 states: blocks cut to fit the stack
    pytest.param(1, 40, 5, 9, 1, id="N5-L9"),  # a state left over after the groups of four
])
def test_wide_blocks_and_many_states_match_reference(batch, dim, d_state, seq_len, groups):
    """The kernels' 8 x 8 transposes and stack buffers at the block widths real networks use (the shared
    cases above are a few channels wide)."""
    inputs = make_inputs(batch, dim, d_state, seq_len, groups)
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(3))
    out, grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, grad_out, torch.float32,
                                delta_softplus=True, backend="numba")
    ref_out, ref_grads = run_with_grads(selective_scan_ref, inputs, INPUT_NAMES, grad_out, torch.float64,
                                        delta_softplus=True)
    assert_close(out, ref_out, "output")
    for name in INPUT_NAMES:
        assert_close(grads[name], ref_grads[name], f"grad of {name}")
    with torch.no_grad():
        assert_close(selective_scan(**inputs, delta_softplus=True, backend="numba"), ref_out, "no_grad output")


@requires_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,cols", [(1, 1), (8, 8), (13, 21), (16, 40), (3, 64), (64, 5)])
def test_blocked_transpose_matches_numpy(dtype, rows, cols):
    kernels = scan_numba._get_kernels()
    wide = np.random.default_rng(0).standard_normal((rows + 2, cols + 7)).astype(dtype)
    source = wide[1:rows + 1, 3:cols + 3]  # a view whose rows are contiguous but not adjacent
    target = np.full((cols + 1, rows + 9), -1.0, dtype)
    kernels._transpose(source, rows, cols, target)
    np.testing.assert_array_equal(target[:cols, :rows], source.T)
    assert (target[cols:] == -1).all() and (target[:, rows:] == -1).all()  # nothing written outside


@requires_numba
def test_too_many_states_for_the_numba_scan_name_the_state_size():
    inputs = make_inputs(1, 2, 4097, 3, 1)
    with pytest.raises(ValueError, match=r"N = 4097.*NNUNET_MAMBA_SCAN=torch"):
        selective_scan(**inputs, backend="numba")


@requires_numba
def test_kernels_refuse_a_block_wider_than_their_stack_buffers():
    kernels = scan_numba._get_kernels()
    inputs = {name: t.numpy() for name, t in make_inputs(1, 80, 16, 5, 1).items()}
    out = np.empty_like(inputs["u"])
    with pytest.raises(ValueError, match="too wide"):
        kernels.scan_forward(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                             inputs["z"], inputs["delta_bias"], True, True, True, True, 80, 1, 5, 1, out,
                             np.empty((0, 0, 0, 0), np.float32))


@pytest.mark.parametrize("batch,groups,per_group,threads,max_width", [
    (1, 4, 48, 2, None), (1, 1, 192, 2, None), (2, 6, 192, 16, None), (1, 1, 3, 8, None), (1, 1, 1, 2, None),
    (1, 3, 50, 2, None), (4, 4, 768, 1, None), (1, 1, 192, 2, 51), (1, 2, 100, 1, 4),
])
def test_channel_blocks_cover_every_channel_with_work_for_every_thread(batch, groups, per_group, threads,
                                                                       max_width):
    width, blocks = scan_numba.channel_blocks(batch, groups, per_group, threads, max_width)
    assert 1 <= width <= (max_width or scan_numba.MAX_BLOCK_WIDTH)
    assert (blocks - 1) * width < per_group <= blocks * width  # every channel, no empty block
    if width > 8:
        assert width % 8 == 0  # whole SIMD vectors
    if batch * groups * per_group >= threads:
        assert batch * groups * blocks >= threads


@requires_numba
def test_numba_runs_on_torchs_thread_count():
    import numba

    previous = torch.get_num_threads()
    inputs = make_inputs(1, 8, 4, 20, 2)
    try:
        torch.set_num_threads(1)
        selective_scan(**inputs, backend="numba")
        assert numba.get_num_threads() == 1
        torch.set_num_threads(2)
        selective_scan(**inputs, backend="numba")
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(previous)


@requires_numba
def test_concurrent_calls_from_threads_give_the_same_results():
    inputs = make_inputs(2, 16, 8, 300, 4)
    expected = selective_scan(**inputs, delta_softplus=True, backend="numba")
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(selective_scan(**inputs, delta_softplus=True, backend="numba"))
        except Exception as error:  # surfaced below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors and len(results) == 15
    for out in results:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@requires_numba
def test_float32_exp_softplus_and_sigmoid_are_accurate():
    from numba import njit

    from nnunet_mamba.ops import numba_kernels as kernels

    @njit
    def apply(values, which):
        out = np.empty_like(values)
        for i in range(values.shape[0]):
            if which == 0:
                out[i] = kernels.exp_(values[i])
            elif which == 1:
                out[i] = kernels.softplus_(values[i])
            else:
                out[i] = kernels.sigmoid_(values[i])
        return out

    x = np.concatenate([np.linspace(-87, 88, 200001), -np.logspace(-8, 1.9, 2001)]).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(apply(x, 0) / exact - 1)) < 4e-7
    # clamped to [-87, 88]: 1.6e-38 stands for anything smaller, 1.7e38 for anything larger; nan stays nan
    special = np.array([-np.inf, -1e5, -87.5, np.nan, 1e5, np.inf], np.float32)
    out = apply(special, 0)
    assert np.all(out[:3] <= 1.7e-38) and np.isnan(out[3]) and np.all(out[4:] >= 1.6e38)
    assert np.all(np.isfinite(out[[0, 1, 2, 4, 5]]))

    # relative error where float32 has normal numbers (softplus and sigmoid >= 1.7e-38), else absolute
    v = np.linspace(-100, 100, 200001).astype(np.float32)
    v64 = v.astype(np.float64)
    softplus = np.maximum(v64, 0) + np.log1p(np.exp(-np.abs(v64)))
    sigmoid = 1 / (1 + np.exp(-v64))
    for which, exact in ((1, softplus), (2, sigmoid)):
        error = np.abs(apply(v, which) - exact)
        normal = exact > 1.7e-38
        assert np.max(error[normal] / exact[normal]) < 1e-6 and np.max(error[~normal]) < 1.7e-38
    # float64 keeps libm's functions
    assert apply(np.array([-1.0]), 0)[0] == np.exp(-1.0)


@requires_numba
def test_float32_decay_is_accurate_and_exact_near_zero():
    """decay_(step, A log2(e)) = exp(step A): the scan's decays, computed as 2**(step A log2(e))."""
    from numba import njit

    from nnunet_mamba.ops import numba_kernels as kernels

    @njit
    def decays(steps, rates):
        scale = kernels.decay_scale_(rates[0])
        out = np.empty_like(steps)
        for i in range(steps.shape[0]):
            out[i] = kernels.decay_(steps[i], rates[i] * scale)
        return out

    rng = np.random.default_rng(0)
    steps = np.concatenate([np.logspace(-8, 2, 20001), rng.uniform(0, 5, 20001)]).astype(np.float32)
    rates = -np.concatenate([rng.uniform(0, 17, 20001), np.logspace(-6, 1.2, 20001)]).astype(np.float32)
    exponent = steps.astype(np.float64) * rates.astype(np.float64)
    exact = np.exp(exponent)
    normal = exact > 1.2e-38
    relative = np.abs(decays(steps, rates)[normal] / exact[normal] - 1)
    # the same polynomial as _exp32; rounding step * A and A log2(e) adds |step A| 6e-8 each
    assert np.all(relative <= 2e-7 + 1.3e-7 * np.abs(exponent[normal]))
    tiny = np.abs(exponent[normal]) < 1e-3  # where the long-memory decays are: within 1.5 float32 ulp
    assert tiny.sum() > 1000 and np.max(relative[tiny]) < 1.8e-7
    # below 2**-126 the decay stays 1.2e-38 (never a denormal, a wrapped exponent or inf); nan stays nan
    special = decays(np.array([1e5, 1.0, np.nan, 1.0, 1.0], np.float32),
                     np.array([-1.0, -np.inf, -1.0, np.nan, 1e5], np.float32))
    assert np.all((special[:2] > 0) & (special[:2] <= 1.2e-38)) and np.all(np.isnan(special[2:4]))
    assert np.isfinite(special[4]) and special[4] >= 1.7e38
    # float64 keeps libm's exp
    assert decays(np.array([0.5]), np.array([-3.0]))[0] == np.exp(-1.5)


@requires_numba
def test_kernels_compile_in_memory_when_no_cache_location_is_writable(tmp_path):
    """numba raises at decoration when it finds no writable cache location; the module must still load."""
    package = tmp_path / "package"
    package.mkdir()
    shutil.copy(REPO / "nnunet_mamba" / "ops" / "numba_kernels.py", package / "numba_kernels.py")
    (package / "__pycache__").write_text("a file where numba would create its cache folder")
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HOME=str(blocked), XDG_CACHE_HOME=str(blocked / "cache"), PYTHONDONTWRITEBYTECODE="1")
    code = ("import numpy as np, sys\nsys.path.insert(0, sys.argv[1])\nimport numba_kernels as k\n"
            "print(k.CACHE)\nprint(k.CACHE_NOTE)\nprint(k._exp32(np.float32(0.0)))")
    result = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    cache, note, value = result.stdout.strip().splitlines()
    assert cache == "False" and "compiled in memory" in note and float(value) == 1.0


def test_the_first_scan_leaves_torchs_thread_count_as_the_user_set_it():
    # numba's OpenMP layer resets OpenMP's thread count when it starts, and torch shares it: a process (a data
    # loader worker, one of two test processes) set to one thread ran on every core after its first scan
    code = ("import torch; torch.set_num_threads(1)\n"
            "from nnunet_mamba.ops import selective_scan\n"
            "u, delta = torch.randn(1, 8, 64), torch.rand(1, 8, 64)\n"
            "selective_scan(u, delta, -torch.rand(8, 4), torch.randn(1, 1, 4, 64), torch.randn(1, 1, 4, 64))\n"
            "print(torch.get_num_threads())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, SCAN_ENV_VAR: "numba", "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


@requires_numba
def test_backward_reads_a_transposed_gradient_as_it_reads_a_contiguous_one(monkeypatch):
    """The Mamba block's out_proj reads the scan's output transposed, so the gradient comes back (batch, L, dim) in
    memory: the kernel transposes it chunk by chunk (blocks of 8 and 2 channels, 5-position chunks, tiles cut at
    both edges) and must give the same bits as from a contiguous copy, and the reference's gradients."""
    monkeypatch.setattr(scan_numba, "MAX_BLOCK_WIDTH", 8)
    monkeypatch.setattr(scan_numba, "BACKWARD_BUFFER_ELEMENTS", 4 * 8 * 5)
    inputs = make_inputs(2, 36, 4, 43, 2)
    transposed = torch.randn(2, 43, 36, generator=torch.Generator().manual_seed(3)).transpose(1, 2)
    assert not transposed.is_contiguous() and transposed.transpose(1, 2).is_contiguous()
    out, grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, transposed, torch.float32,
                                delta_softplus=True, backend="numba")
    _, contiguous_grads = run_with_grads(selective_scan, inputs, INPUT_NAMES, transposed.contiguous(),
                                         torch.float32, delta_softplus=True, backend="numba")
    _, ref_grads = run_with_grads(selective_scan_ref, inputs, INPUT_NAMES, transposed, torch.float64,
                                  delta_softplus=True)
    for name in INPUT_NAMES:
        assert torch.equal(grads[name], contiguous_grads[name]), name
        assert_close(grads[name], ref_grads[name], name)
