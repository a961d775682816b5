"""Does a training step at the planned patch and batch fit the budget? Measured on a CUDA GPU.

    nnunet-mamba benchmark planner-gpu --budgets 8 24 [--networks vm_unet ...] [-c 2d 3d_fullres]

For every network and budget: plans the typical CT fingerprint of :mod:`nnunet_mamba.benchmarks.planner` with
``MambaExperimentPlanner``, caps this process at the budget (``torch.cuda.set_per_process_memory_fraction``, so a
plan above it fails with an out-of-memory error instead of passing on a larger card), and runs three training
steps as nnU-Net's ``train_step`` does them: AMP (float16 autocast, GradScaler), Dice + CE with deep supervision
(nnU-Net's loss and weights), gradient clipping at 12, AdamW. Prints a markdown table of the estimate and the
measured peaks; the planner's target is peak reserved + the CUDA context within [80%, 100%] of the budget.
"""
from __future__ import annotations

import numpy as np

STEPS = 3


def train_steps(network, plan: dict, input_channels: int, num_classes: int, deep_supervision: bool, device,
                steps: int = STEPS, amp_dtype=None) -> list:
    """``steps`` training steps as nnU-Net's ``train_step`` does them; the loss of each step (a float).

    ``amp_dtype`` float16 (the default, nnU-Net's) scales the loss with a GradScaler; bfloat16 needs none."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    amp_dtype = amp_dtype or torch.float16
    loss = DC_and_CE_loss({"batch_dice": plan.get("batch_dice", True), "smooth": 1e-5, "do_bg": False, "ddp": False},
                          {}, weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    patch, batch = list(plan["patch_size"]), int(plan["batch_size"])
    scales = network.deep_supervision_scales() if deep_supervision else [[1.0] * len(patch)]
    if deep_supervision:
        weights = np.array([1 / (2**i) for i in range(len(scales))])
        weights[-1] = 0
        loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    data = torch.randn(batch, input_channels, *patch, device=device)
    targets = [torch.randint(0, num_classes, (batch, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]),
                             device=device).float() for scale in scales]
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype):
            output = network(data)
            value = loss(output, targets if deep_supervision else targets[0])
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()
        losses.append(value.detach())  # read after the loop: a float() here would wait for the GPU every step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return [float(value) for value in losses]


def configuration_from_plan(plan: dict):
    """The :class:`~nnunet_mamba.architectures.plans.PlanTopology` one planned configuration records (patch,
    strides, kernels, spacing)."""
    from nnunet_mamba.architectures import PlanTopology

    return PlanTopology(tuple(plan["patch_size"]), tuple(map(tuple, plan["architecture"]["arch_kwargs"]["strides"])),
                        tuple(map(tuple, plan["architecture"]["arch_kwargs"]["kernel_sizes"])),
                        tuple(plan["spacing"]))


def plan_key(network_name: str, budget: float) -> str:
    return f"{network_name}@{budget:g}"


def plan_all(networks, budgets) -> dict:
    """``plan_key(network, budget)`` -> the plans of the typical CT dataset (run inside typical_ct_workspace)."""
    from nnunet_mamba.benchmarks.planner import DATASET_ID, quietly
    from nnunet_mamba.planning.api import planners_package

    return {plan_key(name, budget): quietly(planners_package().MambaExperimentPlanner(DATASET_ID, budget,
                                                                                      network_name=name))
            for name in networks for budget in budgets}


def measure(networks, budgets, configurations, plans: dict | None = None) -> list:
    """One row (a dict) per network, budget and planned configuration: the plan, its estimate, and the measured
    peaks of three training steps under the budget's cap. ``plans`` (from :func:`plan_all`) saves planning
    again; without it this process plans, inside typical_ct_workspace."""
    import torch

    from nnunet_mamba.architectures import build_network, get_network
    from nnunet_mamba.planning.memory_model import GIB, TrainingMemoryModel

    if not torch.cuda.is_available():
        raise SystemExit("benchmark planner-gpu needs a CUDA GPU: it measures what a training step allocates "
                         "there")
    plans = plans if plans is not None else plan_all(networks, budgets)
    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    context = TrainingMemoryModel().cuda_context_bytes
    rows = []
    for network_name in networks:
        deep_supervision = get_network(network_name).network_class.supports_deep_supervision
        for budget in budgets:
            for configuration in configurations:
                plan = plans[plan_key(network_name, budget)]["configurations"].get(configuration)
                if plan is None:
                    continue
                row = {"network": network_name, "budget_gb": budget, "configuration": configuration,
                       "patch_size": list(plan["patch_size"]), "batch_size": plan["batch_size"],
                       "estimate_gib": plan["nnunet_mamba"]["estimated_training_step_gib"]}
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(1.0, (budget * GIB - context) / total), device)
                torch.cuda.reset_peak_memory_stats(device)
                network = None
                try:
                    network = build_network(network_name, configuration_from_plan(plan), 1, 3,
                                            deep_supervision).to(device)
                    train_steps(network, plan, 1, 3, deep_supervision, device)
                    row["allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
                    row["reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
                    row["fraction_of_budget"] = (row["reserved_gib"] + context / GIB) / budget
                except torch.cuda.OutOfMemoryError:
                    row["out_of_memory"] = True
                del network
                rows.append(row)
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    return rows


def format_rows(rows) -> str:
    lines = ["| network | budget | configuration | patch, batch | estimate | peak allocated | peak reserved | "
             "(reserved + context) / budget |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        measured = ("out of memory | | above 100%" if row.get("out_of_memory") else
                    f"{row['allocated_gib']:.2f} GiB | {row['reserved_gib']:.2f} GiB | {row['fraction_of_budget']:.0%}")
        lines.append(f"| {row['network']} | {row['budget_gb']:g} GB | {row['configuration']} | {row['patch_size']}, "
                     f"b {row['batch_size']} | {row['estimate_gib']:.2f} GiB | {measured} |")
    return "\n".join(lines)


def check(networks, budgets, configurations) -> str:
    return format_rows(measure(networks, budgets, configurations))
