"""Training-step time and peak memory of a registry network at a given patch size (a benchmark, not a test)."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.ops import ENV_VAR


def run_network_benchmark(network: str = "vm_unet", patch_size: Sequence[int] = (256, 256), batch: int = 8,
                          input_channels: int = 1, num_classes: int = 4, device: str = "cuda",
                          amp: bool = True, backends: Sequence[str] = ("auto",), steps: int = 10,
                          warmup: int = 3) -> List[Dict]:
    """Time ``steps`` AdamW train steps (forward, cross-entropy, backward, step) per scan backend.

    The network is built by the registry for a plan-like configuration of ``patch_size``.
    """
    rows = []
    for backend in backends:
        with _scan_backend(backend):
            rows.append(_time_train_steps(network, patch_size, batch, input_channels, num_classes, device, amp,
                                          steps, warmup))
        rows[-1]["backend"] = backend
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def format_network_table(rows: List[Dict]) -> str:
    lines = ["| network | scan backend | patch | batch | AMP (bf16) | train step ms | samples/s | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['backend']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | "
                     f"{'yes' if r['amp'] else 'no'} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | "
                     f"{r['peak_mib']:.0f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def _scan_backend(backend: str):
    """NNUNET_MAMBA_SCAN set to ``backend`` within the block, the user's value restored after it."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def _time_train_steps(network, patch_size, batch, input_channels, num_classes, device, amp, steps, warmup) -> Dict:
    torch.manual_seed(0)
    model = build_network(network, synthetic_configuration(patch_size), input_channels, num_classes,
                          deep_supervision=False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, input_channels, *patch_size, device=device)
    target = torch.randint(0, num_classes, (batch, *patch_size), device=device)
    use_amp = amp and device.startswith("cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return {"network": network, "patch": list(patch_size), "batch": batch, "amp": use_amp,
            "step_ms": elapsed * 1e3, "peak_mib": peak, "samples_per_s": batch / elapsed}
