"""Does a training step at the planned patch and batch fit the budget? Measured on a CUDA GPU.

    python -m nnunet_mamba.planning.gpu_check --budgets 8 24 [--networks vm_unet ...] [-c 2d 3d_fullres]

For every network and budget: plans the typical CT fingerprint of :mod:`nnunet_mamba.planning.comparison` with
``MambaExperimentPlanner``, caps this process at the budget (``torch.cuda.set_per_process_memory_fraction``, so a
plan above it fails with an out-of-memory error instead of passing on a larger card), and runs three training
steps as nnU-Net's ``train_step`` does them: AMP (float16 autocast, GradScaler), Dice + CE with deep supervision
(nnU-Net's loss and weights), gradient clipping at 12, AdamW. Prints a markdown table of the estimate and the
measured peaks; the planner's target is peak reserved + the CUDA context within [80%, 100%] of the budget.
"""
from __future__ import annotations

import argparse

import numpy as np

STEPS = 3


def _train_steps(network, plan: dict, input_channels: int, num_classes: int, deep_supervision: bool, device) -> None:
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": plan.get("batch_dice", True), "smooth": 1e-5, "do_bg": False, "ddp": False},
                          {}, weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    patch, batch = list(plan["patch_size"]), int(plan["batch_size"])
    scales = network.deep_supervision_scales() if deep_supervision else [[1.0] * len(patch)]
    if deep_supervision:
        weights = np.array([1 / (2**i) for i in range(len(scales))])
        weights[-1] = 0
        loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    data = torch.randn(batch, input_channels, *patch, device=device)
    targets = [torch.randint(0, num_classes, (batch, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]),
                             device=device).float() for scale in scales]
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=True):
            output = network(data)
            value = loss(output, targets if deep_supervision else targets[0])
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(networks, budgets, configurations) -> str:
    import torch

    from nnunet_mamba.architectures import build_network, get_network
    from nnunet_mamba.architectures.registry import SyntheticConfiguration
    from nnunet_mamba.commands.plan import planners_package
    from nnunet_mamba.planning.comparison import DATASET_ID, _quietly
    from nnunet_mamba.planning.memory_model import GIB, TrainingMemoryModel

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU: it measures what a training step allocates there")
    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    context = TrainingMemoryModel().cuda_context_bytes
    rows = ["| network | budget | configuration | patch, batch | estimate | peak allocated | peak reserved | "
            "(reserved + context) / budget |", "|---|---|---|---|---|---|---|---|"]
    for network_name in networks:
        deep_supervision = get_network(network_name).network_class.supports_deep_supervision
        for budget in budgets:
            plans = _quietly(planners_package().MambaExperimentPlanner(DATASET_ID, budget, network_name=network_name))
            for configuration in configurations:
                plan = plans["configurations"].get(configuration)
                if plan is None:
                    continue
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(1.0, (budget * GIB - context) / total), device)
                torch.cuda.reset_peak_memory_stats(device)
                setup = SyntheticConfiguration(tuple(plan["patch_size"]),
                                               tuple(map(tuple, plan["architecture"]["arch_kwargs"]["strides"])),
                                               tuple(map(tuple, plan["architecture"]["arch_kwargs"]["kernel_sizes"])),
                                               tuple(plan["spacing"]))
                network = build_network(network_name, setup, 1, 3, deep_supervision).to(device)
                try:
                    _train_steps(network, plan, 1, 3, deep_supervision, device)
                    allocated = torch.cuda.max_memory_allocated(device) / GIB
                    reserved = torch.cuda.max_memory_reserved(device) / GIB
                    measured = (f"{allocated:.2f} GiB | {reserved:.2f} GiB | "
                                f"{(reserved + context / GIB) / budget:.0%}")
                except torch.cuda.OutOfMemoryError:
                    measured = "out of memory | | above 100%"
                del network
                rows.append(f"| {network_name} | {budget:g} GB | {configuration} | {plan['patch_size']}, "
                            f"b {plan['batch_size']} | {plan['nnunet_mamba']['estimated_training_step_gib']:.2f} GiB | "
                            f"{measured} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[8, 24])
    parser.add_argument("--networks", nargs="+", default=None, help="default: every registered network")
    parser.add_argument("-c", dest="configurations", nargs="+", default=["2d", "3d_fullres"])
    args = parser.parse_args(argv)
    from nnunet_mamba.planning.comparison import typical_ct_workspace

    with typical_ct_workspace():
        from nnunet_mamba.architectures import registered_networks

        print(check(args.networks or list(registered_networks()), args.budgets, args.configurations))


if __name__ == "__main__":
    main()
