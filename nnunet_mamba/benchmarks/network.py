"""Training-step and inference time and peak memory of a registry network (a benchmark, not a test).

Both our network and, with ``compare_nnunet``, nnU-Net's default UNet (``PlainConvUNet`` with the default
planner's settings) are built from one plan-like configuration of the patch size
(:func:`~nnunet_mamba.architectures.synthetic_configuration`), timed side by side in the same process, so
that the ratio between them survives the noise of a shared machine.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import build_network, synthetic_configuration
from nnunet_mamba.ops import scan_backend_override

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
    """Time AdamW train steps (forward, cross-entropy, backward, step) and inference forward passes
    (``no_grad``, eval) per scan backend; with ``compare_nnunet`` also nnU-Net's default UNet from the same
    plan, and each row's ratio to it.

    The models take turns: after ``warmup`` untimed calls of each, every one of ``steps`` rounds times each
    model once, so that a shared or throttled machine slows them alike; times are the medians over rounds.
    """
    configuration = synthetic_configuration(patch_size)
    candidates = []
    if compare_nnunet:
        torch.manual_seed(0)
        candidates.append(({"network": NNUNET_UNET, "backend": "-"},
                           _Timed(nnunet_default_unet(configuration, input_channels, num_classes), None,
                                  configuration.patch_size, batch, input_channels, num_classes, device, amp)))
    for backend in backends:
        with scan_backend_override(backend):
            torch.manual_seed(0)
            model = build_network(network, configuration, input_channels, num_classes, deep_supervision=False)
        candidates.append(({"network": network, "backend": backend},
                           _Timed(model, backend, configuration.patch_size, batch, input_channels, num_classes,
                                  device, amp)))
    for _, timed in candidates:
        timed.warm_up(warmup)
    for mode in ("train_step", "inference"):
        for _ in range(steps):
            for _, timed in candidates:
                timed.time(mode)
    rows = [{**label, **timed.summary()} for label, timed in candidates]
    if compare_nnunet:
        for row in rows[1:]:
            row["train_ratio"] = row["step_ms"] / rows[0]["step_ms"]
            row["inference_ratio"] = row["inference_ms"] / rows[0]["inference_ms"]
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



class _Timed:
    """One model with its optimizer and inputs; times its train steps and inference calls one at a time."""

    def __init__(self, model: nn.Module, backend, patch_size, batch, input_channels, num_classes, device, amp):
        self.model = model.to(device)
        self.backend = backend  # None: the model runs no selective scan
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, input_channels, *patch_size, device=device)
        self.target = torch.randint(0, num_classes, (batch, *patch_size), device=device)
        self.patch_size, self.batch, self.device = list(patch_size), batch, device
        self.on_cuda = device.startswith("cuda")
        self.use_amp = amp and self.on_cuda
        self.seconds = {"train_step": [], "inference": []}
        self.peak_mib = float("nan")

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            loss = F.cross_entropy(self.model(self.x), self.target)
        loss.backward()
        self.optimizer.step()

    def inference(self) -> None:
        self.model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            self.model(self.x)

    def _call(self, mode: str) -> None:
        with contextlib.nullcontext() if self.backend is None else scan_backend_override(self.backend):
            getattr(self, mode)()

    def warm_up(self, calls: int) -> None:
        """Untimed calls of both modes; on CUDA the peak memory of the training steps among them (this model's
        own: the other models, resident on the same GPU, are not counted)."""
        if self.on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            own = sum(t.numel() * t.element_size() for t in (*self.model.parameters(), self.x, self.target))
            others = torch.cuda.memory_allocated() - own
        for _ in range(calls):
            self._call("train_step")
        if self.on_cuda and calls:
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - others) / 2**20
        for _ in range(calls):
            self._call("inference")

    def time(self, mode: str) -> None:
        if self.on_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        self._call(mode)
        if self.on_cuda:
            torch.cuda.synchronize()
        self.seconds[mode].append(time.perf_counter() - started)

    def summary(self) -> Dict:
        step = statistics.median(self.seconds["train_step"])
        return {"patch": self.patch_size, "batch": self.batch, "amp": self.use_amp, "step_ms": step * 1e3,
                "inference_ms": statistics.median(self.seconds["inference"]) * 1e3, "peak_mib": self.peak_mib,
                "samples_per_s": self.batch / step}
