"""Training-step and inference time and peak memory of a registry network (a benchmark, not a test).

Both our network and, with ``compare_nnunet``, nnU-Net's default UNet (``PlainConvUNet`` with the default
planner's settings) are built from one plan-like configuration of the patch size
(:func:`~nnunet_mamba.architectures.synthetic_configuration`), timed side by side in the same process, so
that the ratio between them survives the noise of a shared machine.

Efficiency, not only time: every row carries the forward pass's multiply-accumulates at the patch and batch
(:func:`~nnunet_mamba.benchmarks.flops.count_flops`, the selective scan included) and the FLOP rate achieved,
2 x MACs per inference pass and 3 x that per train step (the usual convention: the backward costs about twice
the forward), so that a network that is slower because it does more arithmetic can be told from one that does
its arithmetic slowly.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration
from nnunet_mamba.benchmarks.flops import count_flops
from nnunet_mamba.cpu_allocator import keep_freed_memory
from nnunet_mamba.ops import scan_backend_override
from nnunet_mamba.resident_memory import ResidentPeak

NNUNET_UNET = "nnU-Net UNet"
NNUNET_RESENC_M = "nnU-Net ResEnc-M"
# nnU-Net's ResEncUNetPlanner sets these in its __init__ (which reads a dataset, so they are not read from it here)
RESENC_BLOCKS_PER_STAGE_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
RESENC_BLOCKS_PER_STAGE_DECODER = (1,) * 12
# FLOPs of a train step (forward, backward, update) per FLOP of the forward pass: the backward computes the
# gradients of the inputs and of the weights, each about as much arithmetic as the forward
TRAIN_FLOPS_PER_FORWARD_FLOP = 3


def error_summary(error: BaseException) -> str:
    """What a benchmark row that failed says: the error's type and the first line of its message."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


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


def nnunet_resenc_m(configuration, input_channels: int, num_classes: int) -> nn.Module:
    """nnU-Net's ResEnc-M network for ``configuration``: the residual encoder planners' stage depths, with the
    default planner's widths (the M preset differs from L and XL in its memory target only, i.e. in the patch)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from dynamic_network_architectures.building_blocks.helper import (
        convert_dim_to_conv_op,
        get_matching_instancenorm,
    )

    dims = len(configuration.patch_size)
    stages = len(configuration.pool_op_kernel_sizes)
    max_features = 512 if dims == 2 else 320
    conv_op = convert_dim_to_conv_op(dims)
    return ResidualEncoderUNet(
        input_channels, stages, [min(max_features, 32 * 2**i) for i in range(stages)], conv_op,
        [list(k) for k in configuration.conv_kernel_sizes], [list(s) for s in configuration.pool_op_kernel_sizes],
        list(RESENC_BLOCKS_PER_STAGE_ENCODER[:stages]), num_classes,
        list(RESENC_BLOCKS_PER_STAGE_DECODER[:stages - 1]), conv_bias=True,
        norm_op=get_matching_instancenorm(conv_op), norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def run_network_benchmark(network: str | Sequence[str] = "vm_unet", patch_size: Sequence[int] = (256, 256),
                          batch: int = 8, input_channels: int = 1, num_classes: int = 4, device: str = "cuda",
                          amp: bool = True, backends: Sequence[str] = ("auto",), steps: int = 10,
                          warmup: int = 3, compare_nnunet: bool = False, compare_resenc: bool = False,
                          configuration=None, small: bool = False) -> List[Dict]:
    """Time AdamW train steps (forward, cross-entropy, backward, step) and inference forward passes
    (``no_grad``, eval) of one or several registry networks per scan backend; with ``compare_nnunet`` also
    nnU-Net's default UNet, with ``compare_resenc`` its ResEnc-M, built from the same plan, and each row's
    ratio to them: of time, of peak training memory, and of the FLOP rate achieved (``train_efficiency``,
    ``inference_efficiency``: 1 = as many FLOPs per second as the UNet). ``configuration`` (a plan's, see
    ``benchmarks.planner_gpu.configuration_from_plan``) replaces the one made for ``patch_size``; ``small``
    builds each network's registered small instance (rows keep the network's name).

    The models take turns: after ``warmup`` untimed calls of each, every one of ``steps`` rounds times each
    model once, so that a shared or throttled machine slows them alike; times are the medians over rounds.
    A model that fails in its warm-up (out of memory, say) gives a row with its ``error`` and is not timed.
    Peak memory is measured over the warm-up's train steps: on CUDA ``max_memory_allocated``, on CPU the growth
    of the resident set over the last one (:class:`~nnunet_mamba.resident_memory.ResidentPeak`; the row's
    ``step_growth_mib``: its activations and gradients, which it allocates afresh) plus what was resident for the
    model before it (parameters, optimizer state, inputs); nan with fewer than two warm-up steps on CPU (a first
    step also compiles kernels and fills caches) or none on CUDA.

    On CPU the process keeps the memory it frees from then on, as our trainers' processes do when they train on CPU
    (:func:`nnunet_mamba.cpu_allocator.keep_freed_memory`, unless ``NNUNET_MAMBA_KEEP_FREED_MEMORY=0``; every model
    timed here runs under it, nnU-Net's included); each row's ``freed_memory_kept`` says whether it was in force.
    """
    kept = keep_freed_memory() if torch.device(device).type == "cpu" else False
    configuration = configuration or synthetic_configuration(patch_size)
    networks = [network] if isinstance(network, str) else list(network)
    references = [(NNUNET_UNET, nnunet_default_unet, compare_nnunet),
                  (NNUNET_RESENC_M, nnunet_resenc_m, compare_resenc)]
    candidates = []
    for name, build, wanted in references:
        if wanted:
            torch.manual_seed(0)
            candidates.append(({"network": name, "backend": "-"},
                               TimedModel(build(configuration, input_channels, num_classes), None,
                                          configuration.patch_size, batch, input_channels, num_classes, device, amp)))
    for name in networks:
        for backend in backends:
            with scan_backend_override(backend):
                torch.manual_seed(0)
                model = build_network(get_network(name).small_instance if small else name, configuration,
                                      input_channels, num_classes, deep_supervision=False)
            candidates.append(({"network": name, "backend": backend},
                               TimedModel(model, backend, configuration.patch_size, batch, input_channels,
                                          num_classes, device, amp)))
    failed = {}
    for index, (_, timed) in enumerate(candidates):
        try:
            timed.warm_up(warmup)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
            failed[index] = error_summary(error)
            timed.release()
    working = [timed for index, (_, timed) in enumerate(candidates) if index not in failed]
    for mode in ("train_step", "inference"):
        for _ in range(steps):
            for timed in working:
                timed.time(mode)
    rows = [{**label, "patch": list(configuration.patch_size), "batch": batch, "error": failed[index]}
            if index in failed else {**label, **timed.summary(), "freed_memory_kept": kept}
            for index, (label, timed) in enumerate(candidates)]
    for reference, suffix in ((NNUNET_UNET, ""), (NNUNET_RESENC_M, "_resenc")):
        base = next((r for r in rows if r["network"] == reference and "error" not in r), None)
        if base is None:
            continue
        for row in rows:
            if row["backend"] != "-" and "error" not in row:
                row["train_ratio" + suffix] = row["step_ms"] / base["step_ms"]
                row["inference_ratio" + suffix] = row["inference_ms"] / base["inference_ms"]
                row["memory_ratio" + suffix] = row["peak_mib"] / base["peak_mib"]
                if not suffix:
                    row["train_efficiency"] = row["train_gflop_per_s"] / base["train_gflop_per_s"]
                    row["inference_efficiency"] = row["inference_gflop_per_s"] / base["inference_gflop_per_s"]
    return rows


def format_network_table(rows: List[Dict]) -> str:
    with_resenc = any("train_ratio_resenc" in r for r in rows)
    lines = ["| network | scan backend | patch | batch | AMP (bf16) | train step ms | x nnU-Net UNet | inference ms "
             "| x nnU-Net UNet | peak MiB (train) | GMACs (forward) | train GFLOP/s | x nnU-Net UNet "
             "| inference GFLOP/s | x nnU-Net UNet |" + (" train x ResEnc-M | peak x ResEnc-M |" if with_resenc else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if with_resenc else "")]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['network']} | {r['backend']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | "
                         f"| failed: {r['error']} | | | | | | | | | |" + (" | |" if with_resenc else ""))
            continue
        ratios = [f"{r[key]:.2f}" if key in r else "" for key in
                  ("train_ratio", "inference_ratio", "train_efficiency", "inference_efficiency")]
        line = (f"| {r['network']} | {r['backend']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | "
                f"{'yes' if r['amp'] else 'no'} | {r['step_ms']:.1f} | {ratios[0]} | {r['inference_ms']:.1f} | "
                f"{ratios[1]} | {r['peak_mib']:.0f} | {r['gmacs']:.2f} | {r['train_gflop_per_s']:.1f} | "
                f"{ratios[2]} | {r['inference_gflop_per_s']:.1f} | {ratios[3]} |")
        if with_resenc:
            line += "".join(f" {r[key]:.2f} |" if key in r else " |"
                            for key in ("train_ratio_resenc", "memory_ratio_resenc"))
        lines.append(line)
    return "\n".join(lines)


class TimedModel:
    """One model with its optimizer (AdamW) and random inputs and labels; times its train steps (forward, cross-entropy,
    backward, optimizer step) and inference calls (``no_grad``, eval mode) one at a time. The examples' A/B
    scripts call ``train_step`` and ``inference`` themselves. ``backend``: the scan backend both run under (a
    :func:`~nnunet_mamba.ops.scan_backend_override` block), None for a model without a selective scan."""

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
        self.step_growth_mib = float("nan")  # CPU: what a train step adds to the resident set
        self.forward_macs = 0

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._backend_scope():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
                loss = F.cross_entropy(self.model(self.x), self.target)
            loss.backward()
        self.optimizer.step()

    def inference(self) -> torch.Tensor:
        """The model's output (the examples compare it between variants)."""
        self.model.eval()
        with self._backend_scope(), torch.no_grad():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
                return self.model(self.x)

    def _backend_scope(self):
        return contextlib.nullcontext() if self.backend is None else scan_backend_override(self.backend)

    def count_macs(self) -> None:
        """The forward pass's multiply-accumulates at the patch, for the whole batch (counted on one sample:
        every layer's work is proportional to the batch)."""
        self.model.eval()
        with self._backend_scope():
            self.forward_macs = count_flops(self.model, self.x[:1]).total_macs * self.batch

    def _resident_bytes(self) -> int:
        """Parameters, optimizer state and inputs: this model's share of memory between steps, once the gradients
        are freed (as :meth:`warm_up` does before it measures a step)."""
        tensors = [*self.model.parameters(), self.x, self.target]
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def warm_up(self, calls: int) -> None:
        """Untimed calls of both modes, and the peak memory of the training steps among them: on CUDA over all
        of them (this model's own: the other models, resident on the same GPU, are not counted), on CPU over the
        last one (the first calls allocate the optimizer's state and, in a fresh process, compile kernels and
        fill libraries' caches, which is no step's working memory)."""
        self.count_macs()
        if self.on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            own = sum(t.numel() * t.element_size() for t in (*self.model.parameters(), self.x, self.target))
            others = torch.cuda.memory_allocated() - own
        measure_last_on_cpu = not self.on_cuda and calls >= 2  # a first step is never the one measured
        for _ in range(calls - 1 if measure_last_on_cpu else calls):
            self.train_step()
        if measure_last_on_cpu:
            # the gradients are freed before the measure: freed inside the step, their resident pages would hold
            # some of its activations unseen, by chance of the allocator's reuse
            self.optimizer.zero_grad(set_to_none=True)
            resident = self._resident_bytes()
            with ResidentPeak() as peak:
                self.train_step()
            if peak.growth_bytes is not None:
                self.step_growth_mib = peak.growth_bytes / 2**20
                self.peak_mib = self.step_growth_mib + resident / 2**20
        if self.on_cuda and calls:
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - others) / 2**20
        for _ in range(calls):
            self.inference()

    def release(self) -> None:
        """Drops the model, its optimizer state and inputs (after a failure), so the others have the memory."""
        self.model = self.optimizer = self.x = self.target = None
        if self.on_cuda:
            torch.cuda.empty_cache()

    def time(self, mode: str) -> None:
        if self.on_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        getattr(self, mode)()
        if self.on_cuda:
            torch.cuda.synchronize()
        self.seconds[mode].append(time.perf_counter() - started)

    def summary(self) -> Dict:
        step = statistics.median(self.seconds["train_step"])
        inference = statistics.median(self.seconds["inference"])
        forward_gflop = 2 * self.forward_macs / 1e9
        return {"patch": self.patch_size, "batch": self.batch, "amp": self.use_amp, "step_ms": step * 1e3,
                "inference_ms": inference * 1e3, "peak_mib": self.peak_mib, "step_growth_mib": self.step_growth_mib,
                "samples_per_s": self.batch / step,
                "gmacs": self.forward_macs / 1e9,
                "train_gflop_per_s": TRAIN_FLOPS_PER_FORWARD_FLOP * forward_gflop / step,
                "inference_gflop_per_s": forward_gflop / inference}
