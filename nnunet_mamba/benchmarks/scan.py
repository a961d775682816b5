"""Forward+backward and inference (``torch.no_grad``) time and peak memory of the selective-scan
implementations.

Compared: our pure-PyTorch backend, our compiled CPU backend (numba, on CPU where it imports), mambapy's
parallel scan (``mambapy.pscan``, assembled the way mambapy's own ``selective_scan`` does it, extended to
grouped B/C and the z gate so both compute the same function) and, on a CUDA device, our Triton kernels and
the mamba-ssm kernel, where each imports.

Times of all backends at one length come from one fresh Python process that takes turns: every round
times each backend once, so that a shared or throttled machine slows them all alike, and the ratios hold.
Peak memory is measured in a fresh process per backend and mode: on CPU that process's ru_maxrss minus its
ru_maxrss once inputs are built, which a long-lived process (allocator caches, earlier peaks) would hide.
Before that baseline each process makes one tiny call, so that loading code (numba's cached kernels and
LLVM) is not counted as the scan's memory; numba's one-time compile runs in a process of its own first.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from nnunet_mamba.resident_memory import lifetime_peak_rss_bytes

BACKENDS = ("torch", "numba", "mambapy", "triton", "cuda")
BACKEND_LABELS = {"torch": "nnunet_mamba (torch)", "numba": "nnunet_mamba (numba)", "mambapy": "mambapy pscan",
                  "triton": "nnunet_mamba (triton)", "cuda": "mamba-ssm CUDA"}
# outputs and gradients of every backend must agree with the torch backend's to this (relative to their max)
AGREEMENT_TOLERANCE = 1e-3


def make_inputs(batch, dim, d_state, groups, seq_len, device, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    return {
        "u": randn(batch, dim, seq_len),
        "delta": randn(batch, dim, seq_len) - 2.0,
        "A": -torch.exp(randn(dim, d_state)),
        "B": randn(batch, groups, d_state, seq_len),
        "C": randn(batch, groups, d_state, seq_len),
        "D": randn(dim),
        "z": randn(batch, dim, seq_len),
        "delta_bias": 0.1 * randn(dim),
    }


def mambapy_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mambapy's selective scan (deltaA, deltaB*x, pscan, C contraction, + D*u) with grouped B/C and z."""
    import torch
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    batch, dim, seq_len = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = dim // groups
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # mambapy works in (batch, L, channels[, N])
    x = u.transpose(1, 2)
    delta = delta.transpose(1, 2)
    B_ = B.permute(0, 3, 1, 2).unsqueeze(3)  # (batch, L, groups, 1, N)
    C_ = C.permute(0, 3, 1, 2).unsqueeze(-1)  # (batch, L, groups, N, 1)
    deltaA = torch.exp(delta.unsqueeze(-1) * A)
    deltaB = (delta.reshape(batch, seq_len, groups, per_group, 1) * B_).reshape(batch, seq_len, dim, d_state)
    BX = deltaB * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs.view(batch, seq_len, groups, per_group, d_state) @ C_).reshape(batch, seq_len, dim)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * F.silu(z.transpose(1, 2))
    return y.transpose(1, 2)


def _scan_function(backend: str):
    if backend == "mambapy":
        return mambapy_selective_scan
    from nnunet_mamba.ops.backends import BACKEND_NAMES

    if backend in BACKEND_NAMES:
        from nnunet_mamba.ops import selective_scan

        return lambda **kw: selective_scan(**kw, backend=backend)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def _warm_up(backend, d_state, groups, device) -> None:
    """One tiny call, before memory is measured: loads the backend's code (numba's compiled kernels), and
    torch's first backward with a given gradient allocates about 35 MiB once per process."""
    import torch

    scan = _scan_function(backend)
    leaves = {name: t.requires_grad_() for name, t in make_inputs(1, 2 * groups, d_state, groups, 8, device).items()}
    out = scan(**leaves, delta_softplus=True)
    out.backward(torch.ones_like(out))


def _step(backend, inputs, grad_out, inference: bool):
    """One timed unit of work: forward+backward, or with ``inference`` the forward under no_grad."""
    import torch

    scan = _scan_function(backend)
    leaves = {name: t.clone().requires_grad_(not inference) for name, t in inputs.items()}

    def step():
        if inference:
            with torch.no_grad():
                scan(**leaves, delta_softplus=True)
            return
        for t in leaves.values():
            t.grad = None
        scan(**leaves, delta_softplus=True).backward(grad_out)

    return step


def _times_in_this_process(backends, seq_len, dim, d_state, groups, batch, repeats, device, threads,
                           inference=True) -> Dict:
    """Per backend, milliseconds of forward+backward and of the no_grad forward: after one untimed call
    of each, ``repeats`` rounds that time every backend once each, so that all of them see the same state
    of a shared or throttled machine (their ratios are what the benchmark is for)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    inputs = make_inputs(batch, dim, d_state, groups, seq_len, device)
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1)).to(device)
    modes = ("fwd_bwd", "no_grad") if inference else ("fwd_bwd",)
    steps = {(b, m): _step(b, inputs, grad_out, m == "no_grad") for b in backends for m in modes}
    on_cuda = torch.device(device).type == "cuda"
    times: Dict = {key: [] for key in steps}
    for round_ in range(repeats + 1):  # round 0 warms up
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if on_cuda:
                torch.cuda.synchronize()
            if round_:
                times[key].append((time.perf_counter() - start) * 1000)
    return {backend: {mode: {"ms_min": min(times[(backend, mode)]),
                             "ms_median": statistics.median(times[(backend, mode)])} for mode in modes}
            for backend in backends}


def _memory_in_this_process(backend, seq_len, dim, d_state, groups, batch, device, threads,
                            inference=False) -> Dict:
    """Peak memory (MiB) of forward+backward, or with ``inference`` of the no_grad forward, above what the
    process held once its inputs were built."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    _warm_up(backend, d_state, groups, device)
    inputs = make_inputs(batch, dim, d_state, groups, seq_len, device)
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1)).to(device)
    step = _step(backend, inputs, grad_out, inference)
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = lifetime_peak_rss_bytes()
    for _ in range(2):
        step()
    if on_cuda:
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    peak = lifetime_peak_rss_bytes()
    return {"peak_mib": float("nan") if peak is None or base is None else (peak - base) / 2**20}


def _compile_in_this_process(backend, d_state, groups, device) -> Dict:
    """Seconds of the first call in a fresh process: numba's compile, or loading it from its disk cache."""
    start = time.perf_counter()
    _warm_up(backend, d_state, groups, device)
    return {"first_call_s": time.perf_counter() - start}


def _agreement_in_this_process(seq_len, dim, d_state, groups, batch, device, threads, backends) -> Dict:
    """Max abs difference of outputs, and of every input gradient relative to its max, between the torch
    backend and each of ``backends``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    inputs = make_inputs(batch, dim, d_state, groups, seq_len, device)
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1)).to(device)
    results = {}
    for backend in ["torch"] + list(backends):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        out = _scan_function(backend)(**leaves, delta_softplus=True)
        out.backward(grad_out)
        results[backend] = (out.detach(), {n: t.grad for n, t in leaves.items()})
    ours, our_grads = results["torch"]
    report = {}
    for backend in backends:
        theirs, their_grads = results[backend]
        report[f"{backend}:out"] = (ours - theirs).abs().max().item()
        for name in our_grads:
            scale = max(1.0, their_grads[name].abs().max().item())
            report[f"{backend}:grad_{name}"] = (our_grads[name] - their_grads[name]).abs().max().item() / scale
    return report


def _run_worker(job: Dict, threads: Optional[int]) -> Dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    completed = subprocess.run(
        [sys.executable, "-m", "nnunet_mamba.benchmarks.scan", "--worker", json.dumps(job)],
        capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        return {"error": (completed.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _available(backend: str, device: str) -> Optional[str]:
    """None when the backend can run here, else why not."""
    if backend == "mambapy":
        try:
            import mambapy.pscan  # noqa: F401
        except ImportError as error:
            return f"mambapy not installed ({error}); pip install mambapy"
        return None
    from nnunet_mamba.ops.backends import get_backend

    return get_backend(backend).unavailable_reason(device) or None


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "-"


def format_table(rows: List[Dict]) -> str:
    """Markdown table; speed-ups compare minimum times (the torch backend's over this row's, etc.)."""
    lines = ["| backend | L | fwd+bwd ms (min) | fwd+bwd ms (median) | peak MiB | no_grad fwd ms (min) | "
             "no_grad peak MiB | fwd+bwd speed-up vs torch | no_grad speed-up vs torch | "
             "fwd+bwd speed-up vs mambapy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_length: Dict[int, Dict[str, Dict]] = {}
    for row in rows:
        by_length.setdefault(row["L"], {})[row["backend"]] = row
    for row in rows:
        label = BACKEND_LABELS[row["backend"]]
        if "error" in row:
            lines.append(f"| {label} | {row['L']} | failed: {row['error']} | | | | | | | |")
            continue
        torch_row = by_length[row["L"]].get("torch", {})
        mambapy_row = by_length[row["L"]].get("mambapy", {})
        infer = row.get("inference", {})
        infer_ms = f"{infer['ms_min']:.1f}" if "ms_min" in infer else "-"
        infer_peak = f"{infer['peak_mib']:.0f}" if "peak_mib" in infer else "-"
        lines.append(
            f"| {label} | {row['L']} | {row['ms_min']:.1f} | {row['ms_median']:.1f} | {row['peak_mib']:.0f} | "
            f"{infer_ms} | {infer_peak} | {_ratio(torch_row.get('ms_min'), row['ms_min'])} | "
            f"{_ratio(torch_row.get('inference', {}).get('ms_min'), infer.get('ms_min'))} | "
            f"{_ratio(mambapy_row.get('ms_min'), row['ms_min'])} |")
    return "\n".join(lines)


def run_scan_benchmark(lengths: Sequence[int] = (1024, 4096, 16384), dim: int = 192, d_state: int = 16,
                       groups: int = 4, batch: int = 1, repeats: int = 5, device: str = "cpu",
                       include_mambapy: bool = True, include_cuda: bool = True, include_numba: bool = True,
                       include_triton: bool = True,
                       threads: Optional[int] = None, check_agreement: bool = True, inference: bool = True,
                       verbose: bool = True) -> List[Dict]:
    """Time forward+backward (and, with ``inference``, the forward under no_grad) and peak memory per
    backend and length; prints and returns the rows."""
    too_short = [length for length in lengths if length < 1]
    if too_short:  # an empty sequence has nothing to time, and its failed timing read as a disagreement
        raise ValueError(f"scan lengths must be at least 1, got {too_short}")
    backends = ["torch"]
    for name, wanted in (("numba", include_numba), ("mambapy", include_mambapy), ("triton", include_triton),
                         ("cuda", include_cuda)):
        if not wanted:
            continue
        reason = _available(name, device)
        if reason is None:
            backends.append(name)
        elif verbose:
            print(f"skipping {BACKEND_LABELS[name]}: {reason}")
    if "numba" in backends:
        compiled = _run_worker({"task": "compile", "backend": "numba", "d_state": d_state, "groups": groups,
                                "device": device, "threads": threads}, threads)
        if verbose:
            print(f"numba kernels, first call in a fresh process (compile, or load from the disk cache): "
                  f"{compiled.get('first_call_s', float('nan')):.1f} s {compiled.get('error', '')}", flush=True)
    others = [b for b in backends if b != "torch"]
    rows = []
    for seq_len in lengths:
        common = {"L": seq_len, "dim": dim, "d_state": d_state, "groups": groups, "batch": batch,
                  "device": device, "threads": threads}
        if check_agreement and others:
            agreement = _run_worker({"task": "agree", "backends": others, **common}, threads)
            if verbose:
                print(f"L={seq_len}: max abs diff to the torch backend (grads relative to their max): "
                      + ", ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in agreement.items()))
            worst = max((v for v in agreement.values() if isinstance(v, float)), default=0.0)
            if "error" in agreement or worst > AGREEMENT_TOLERANCE:
                raise RuntimeError(f"scan backends disagree at L={seq_len}: {agreement}")
        timed = _run_worker({"task": "time", "backends": backends, "repeats": repeats, "inference": inference,
                             **common}, threads)
        # CUDA's peak counters see allocations alone, not what a cache holds, so one process can measure all
        # backends there; on CPU each measurement needs a fresh process (see the module's docstring)
        peaks = (_run_worker({"task": "memory_all", "backends": backends, "inference": inference, **common},
                             threads) if device.startswith("cuda") and "error" not in timed else None)
        for backend in backends:
            row = {"backend": backend, "L": seq_len, "dim": dim, "d_state": d_state, "groups": groups,
                   "batch": batch, "device": device}
            if "error" in timed:
                row["error"] = timed["error"]
            else:
                row.update(timed[backend]["fwd_bwd"], peak_mib=_peak_mib(peaks, backend, False, common, threads))
                if inference:
                    row["inference"] = dict(timed[backend]["no_grad"],
                                            peak_mib=_peak_mib(peaks, backend, True, common, threads))
            rows.append(row)
            if verbose:
                print(f"  {BACKEND_LABELS[backend]:22s} L={seq_len}: "
                      f"{ {k: v for k, v in row.items() if k in ('ms_min', 'ms_median', 'peak_mib', 'error')} } "
                      f"no_grad: {row.get('inference')}", flush=True)
    if verbose:
        print()
        print(format_table(rows))
    return rows


def _peak_mib(peaks: Optional[Dict], backend: str, inference: bool, common: Dict, threads) -> float:
    """Peak MiB of one backend and mode: from ``peaks`` (one CUDA process's measurements of every backend),
    else measured in a fresh process."""
    mode = "no_grad" if inference else "fwd_bwd"
    if peaks is not None:
        return peaks.get(backend, {}).get(mode, float("nan"))
    memory = _run_worker({"task": "memory", "backend": backend, "inference": inference, **common}, threads)
    return memory.get("peak_mib", float("nan"))


def _worker_main(job_json: str) -> None:
    job = json.loads(job_json)
    if job["task"] == "compile":
        if job["threads"]:
            import torch

            torch.set_num_threads(job["threads"])
        print(json.dumps(_compile_in_this_process(job["backend"], job["d_state"], job["groups"], job["device"])))
        return
    args = (job["L"], job["dim"], job["d_state"], job["groups"], job["batch"])
    if job["task"] == "agree":
        result = _agreement_in_this_process(*args, job["device"], job["threads"], job["backends"])
    elif job["task"] == "time":
        result = _times_in_this_process(job["backends"], *args, job["repeats"], job["device"], job["threads"],
                                        inference=job["inference"])
    elif job["task"] == "memory_all":
        modes = (False, True) if job["inference"] else (False,)
        result = {backend: {("no_grad" if inference else "fwd_bwd"): _memory_in_this_process(
            backend, *args, job["device"], job["threads"], inference=inference)["peak_mib"] for inference in modes}
            for backend in job["backends"]}
    else:
        result = _memory_in_this_process(job["backend"], *args, job["device"], job["threads"],
                                         inference=job["inference"])
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        run_scan_benchmark()
