"""Training-step and inference time and peak memory of a registry network (a benchmark, not a test).

Both our network and, with ``compare_nnunet``, nnU-Net's default UNet (``PlainConvUNet`` with the default
planner's settings) are built from one plan-like configuration of the patch size
(:func:`~nnunet_mamba.architectures.synthetic_configuration`), timed side by side in the same process, so
that the ratio between them survives the noise of a shared machine.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.ops import ENV_VAR

NNUNET_UNET = "nnU-Net UNet"


def nnunet_default_unet(configuration, input_channels: int, num_classes: int) -> nn.Module:
    """nnU-Net's default network for ``configuration``, with the default planner's architecture settings."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.building_blocks.helper import (
        convert_dim_to_conv_op,
        get_matching_instancenorm,
    )

    dims = len(configuration.patch_size)
    stages = len(configuration.pool_op_kernel_sizes)
    max_features = 512 if dims == 2 else 320  # ExperimentPlanner.UNet_max_features_2d / _3d
    conv_op = convert_dim_to_conv_op(dims)
    return PlainConvUNet(
        input_channels, stages, [min(max_features, 32 * 2**i) for i in range(stages)], conv_op,
        [list(k) for k in configuration.conv_kernel_sizes], [list(s) for s in configuration.pool_op_kernel_sizes],
        [2] * stages, num_classes, [2] * (stages - 1), conv_bias=True, norm_op=get_matching_instancenorm(conv_op),
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False)


def run_network_benchmark(network: str = "vm_unet", patch_size: Sequence[int] = (256, 256), batch: int = 8,
                          input_channels: int = 1, num_classes: int = 4, device: str = "cuda",
                          amp: bool = True, backends: Sequence[str] = ("auto",), steps: int = 10,
                          warmup: int = 3, compare_nnunet: bool = False) -> List[Dict]:
    """Time ``steps`` AdamW train steps (forward, cross-entropy, backward, step) and as many inference forward
    passes (``no_grad``, eval) per scan backend; with ``compare_nnunet`` also nnU-Net's default UNet from the
    same plan, and each row's ratio to it."""
    configuration = synthetic_configuration(patch_size)
    rows = []
    if compare_nnunet:
        torch.manual_seed(0)
        unet = nnunet_default_unet(configuration, input_channels, num_classes)
        rows.append({"network": NNUNET_UNET, "backend": "-",
                     **_time(unet, configuration.patch_size, batch, input_channels, num_classes, device, amp, steps,
                             warmup)})
    for backend in backends:
        with _scan_backend(backend):
            torch.manual_seed(0)
            model = build_network(network, configuration, input_channels, num_classes, deep_supervision=False)
            rows.append({"network": network, "backend": backend,
                         **_time(model, configuration.patch_size, batch, input_channels, num_classes, device, amp,
                                 steps, warmup)})
        if compare_nnunet:
            rows[-1]["train_ratio"] = rows[-1]["step_ms"] / rows[0]["step_ms"]
            rows[-1]["inference_ratio"] = rows[-1]["inference_ms"] / rows[0]["inference_ms"]
    return rows


def format_network_table(rows: List[Dict]) -> str:
    lines = ["| network | scan backend | patch | batch | AMP (bf16) | train step ms | x nnU-Net UNet | inference ms "
             "| x nnU-Net UNet | peak MiB (train) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = [f"{r[key]:.2f}" if key in r else "" for key in ("train_ratio", "inference_ratio")]
        lines.append(f"| {r['network']} | {r['backend']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | "
                     f"{'yes' if r['amp'] else 'no'} | {r['step_ms']:.1f} | {ratios[0]} | {r['inference_ms']:.1f} | "
                     f"{ratios[1]} | {r['peak_mib']:.0f} |")
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


def _time(model: nn.Module, patch_size, batch, input_channels, num_classes, device, amp, steps, warmup) -> Dict:
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, input_channels, *patch_size, device=device)
    target = torch.randint(0, num_classes, (batch, *patch_size), device=device)
    use_amp = amp and device.startswith("cuda")
    on_cuda = device.startswith("cuda")

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    def inference():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            model(x)

    def seconds_per_call(function) -> float:
        for _ in range(warmup):
            function()
        if on_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            function()
        if on_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    model.train()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    step_seconds = seconds_per_call(train_step)
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else float("nan")
    model.eval()
    inference_seconds = seconds_per_call(inference)
    del optimizer
    if on_cuda:
        torch.cuda.empty_cache()
    return {"patch": list(patch_size), "batch": batch, "amp": use_amp, "step_ms": step_seconds * 1e3,
            "inference_ms": inference_seconds * 1e3, "peak_mib": peak, "samples_per_s": batch / step_seconds}
