"""Forward+backward time and peak memory of the selective-scan implementations.

Compared: our pure-PyTorch backend, mambapy's parallel scan (``mambapy.pscan``, assembled the way mambapy's
own ``selective_scan`` does it, extended to grouped B/C and the z gate so both compute the same function)
and, on a CUDA device where it imports, the mamba-ssm kernel.

Every measurement runs in a fresh Python process: on CPU the peak is that process's ru_maxrss minus its
ru_maxrss once inputs are built, which a long-lived process (allocator caches, earlier peaks) would hide.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

BACKENDS = ("torch", "mambapy", "cuda")
BACKEND_LABELS = {"torch": "nnunet_mamba (torch)", "mambapy": "mambapy pscan", "cuda": "mamba-ssm CUDA"}


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
    if backend == "torch":
        from nnunet_mamba.ops import selective_scan

        return lambda **kw: selective_scan(**kw, backend="torch")
    if backend == "mambapy":
        return mambapy_selective_scan
    if backend == "cuda":
        from nnunet_mamba.ops import selective_scan

        return lambda **kw: selective_scan(**kw, backend="cuda")
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def _max_rss_mib() -> float:
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _measure_in_this_process(backend, seq_len, dim, d_state, groups, batch, repeats, device, threads) -> Dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    scan = _scan_function(backend)
    inputs = make_inputs(batch, dim, d_state, groups, seq_len, device)
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1)).to(device)
    on_cuda = torch.device(device).type == "cuda"

    def step():
        for t in leaves.values():
            t.grad = None
        out = scan(**leaves, delta_softplus=True)
        out.backward(grad_out)

    if on_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _max_rss_mib()
    times = []
    for i in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        step()
        if on_cuda:
            torch.cuda.synchronize()
        if i:
            times.append((time.perf_counter() - start) * 1000)
    if on_cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _max_rss_mib() - base
    return {"ms_min": min(times), "ms_median": statistics.median(times), "peak_mib": peak}


def _agreement_in_this_process(seq_len, dim, d_state, groups, batch, device, threads) -> Dict:
    """Max abs difference of outputs and every input gradient between our backend and mambapy."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    inputs = make_inputs(batch, dim, d_state, groups, seq_len, device)
    grad_out = torch.randn(batch, dim, seq_len, generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for backend in ("torch", "mambapy"):
        leaves = {name: t.clone().requires_grad_() for name, t in inputs.items()}
        out = _scan_function(backend)(**leaves, delta_softplus=True)
        out.backward(grad_out)
        results.append((out.detach(), {n: t.grad for n, t in leaves.items()}))
    (ours, our_grads), (theirs, their_grads) = results
    report = {"out": (ours - theirs).abs().max().item()}
    for name in our_grads:
        scale = max(1.0, their_grads[name].abs().max().item())
        report[f"grad_{name}"] = (our_grads[name] - their_grads[name]).abs().max().item() / scale
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
    if backend == "cuda":
        if not device.startswith("cuda"):
            return "needs a CUDA device"
        from nnunet_mamba.ops import cuda_kernel_status

        ok, reason = cuda_kernel_status()
        return None if ok else reason
    return None


def format_table(rows: List[Dict]) -> str:
    lines = ["| backend | L | fwd+bwd ms (min) | fwd+bwd ms (median) | peak MiB | speed-up vs mambapy |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {BACKEND_LABELS[row['backend']]} | {row['L']} | failed: {row['error']} | | | |")
            continue
        speedup = f"{row['speedup_vs_mambapy']:.2f}x" if row.get("speedup_vs_mambapy") else "-"
        lines.append(f"| {BACKEND_LABELS[row['backend']]} | {row['L']} | {row['ms_min']:.1f} | "
                     f"{row['ms_median']:.1f} | {row['peak_mib']:.0f} | {speedup} |")
    return "\n".join(lines)


def run_scan_benchmark(lengths: Sequence[int] = (1024, 4096, 16384), dim: int = 192, d_state: int = 16,
                       groups: int = 4, batch: int = 1, repeats: int = 5, device: str = "cpu",
                       include_mambapy: bool = True, include_cuda: bool = True,
                       threads: Optional[int] = None, check_agreement: bool = True, verbose: bool = True
                       ) -> List[Dict]:
    """Time forward+backward and peak memory per backend and length; prints and returns the rows."""
    backends = ["torch"]
    for name, wanted in (("mambapy", include_mambapy), ("cuda", include_cuda)):
        if not wanted:
            continue
        reason = _available(name, device)
        if reason is None:
            backends.append(name)
        elif verbose:
            print(f"skipping {BACKEND_LABELS[name]}: {reason}")
    rows = []
    for seq_len in lengths:
        common = {"L": seq_len, "dim": dim, "d_state": d_state, "groups": groups, "batch": batch,
                  "device": device, "threads": threads}
        if check_agreement and "mambapy" in backends:
            agreement = _run_worker({"task": "agree", **common}, threads)
            if verbose:
                print(f"L={seq_len}: torch vs mambapy max abs diff (grads relative to their max): "
                      + ", ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in agreement.items()))
            worst = max((v for v in agreement.values() if isinstance(v, float)), default=0.0)
            if "error" in agreement or worst > 1e-3:
                raise RuntimeError(f"torch backend and mambapy disagree at L={seq_len}: {agreement}")
        by_backend = {}
        for backend in backends:
            result = _run_worker({"task": "time", "backend": backend, "repeats": repeats, **common}, threads)
            row = {"backend": backend, "L": seq_len, "dim": dim, "d_state": d_state, "groups": groups,
                   "batch": batch, "device": device, **result}
            by_backend[backend] = row
            rows.append(row)
            if verbose:
                print(f"  {BACKEND_LABELS[backend]:22s} L={seq_len}: {result}", flush=True)
        reference = by_backend.get("mambapy")
        for row in by_backend.values():
            if reference and "error" not in reference and "error" not in row:
                row["speedup_vs_mambapy"] = reference["ms_min"] / row["ms_min"]
    if verbose:
        print()
        print(format_table(rows))
    return rows


def _worker_main(job_json: str) -> None:
    job = json.loads(job_json)
    args = (job["L"], job["dim"], job["d_state"], job["groups"], job["batch"])
    if job["task"] == "agree":
        result = _agreement_in_this_process(*args, job["device"], job["threads"])
    else:
        result = _measure_in_this_process(job["backend"], *args, job["repeats"], job["device"], job["threads"])
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        run_scan_benchmark()
