"""``nnunet-mamba plan -d ID --network NAME --gpu-memory-gb GB``: plans for one of our networks, then preprocessing.

The command line and what it prints; the planning itself is :mod:`nnunet_mamba.planning.api` (nnU-Net's
``plan_and_preprocess_entrypoints`` over ``plan_and_preprocess_api``). Like ``nnUNetv2_plan_and_preprocess`` it
plans a dataset nnU-Net has fingerprinted and preprocesses the configurations asked for.
"""
from __future__ import annotations

import argparse
import math
import sys


def _gpu_memory_gib(text: str) -> float:
    """--gpu-memory-gb: a positive, finite number of GiB (argparse names the option and exits with 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no GPU memory budget: give the GPU's memory in GiB, a "
                                         f"positive number such as 8, 24 or 80")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="nnU-Net plans fitted to a GPU memory budget for one of our networks, then preprocessing",
        description=(
            "Plan a fingerprinted dataset for one registered network (see `nnunet-mamba models`) with nnU-Net's "
            "spacing, normalisation and cascade rules, but patch and batch size fitted to --gpu-memory-gb with the "
            "network's own memory model; then preprocess. Writes nnUNetMambaPlans_<network>_<GB>G.json next to "
            "nnU-Net's plans. Train with: nnUNetv2_train ID CONFIGURATION FOLD -tr TRAINER -p PLANS."))
    parser.add_argument("-d", dest="dataset_ids", nargs="+", required=True, help="dataset ID(s) or name(s)")
    parser.add_argument("--network", required=True, help="registered network to plan for, e.g. vm_unet")
    parser.add_argument("-c", dest="configurations", nargs="+", default=None,
                        help="configurations to preprocess, of those the plans have (default: 2d 3d_fullres "
                             "3d_lowres where planned; all are planned)")
    parser.add_argument("--gpu-memory-gb", type=_gpu_memory_gib, default=8.0,
                        help="memory of the GPU to train on, in GiB (default 8); e.g. 8, 24, 40, 80")
    parser.add_argument("--plans-name", default=None,
                        help="plans identifier (default nnUNetMambaPlans_<network>_<GB>G)")
    parser.add_argument("-np", dest="num_processes", type=int, default=None,
                        help="processes for preprocessing (default: nnU-Net's default)")
    parser.add_argument("--no-preprocess", action="store_true", help="write the plans only")
    parser.set_defaults(func=run)


def _trainer_hint(network_name: str) -> str:
    from nnunet_mamba import discovery

    return discovery.trainer_for_network(network_name) or "TRAINER"


def run(args) -> int:
    from nnunet_mamba.planning.api import BudgetTooSmallError, PlanningError, plan_dataset

    for dataset_id in args.dataset_ids:
        try:
            plans_name, plans = plan_dataset(dataset_id, args.network, args.gpu_memory_gb, args.configurations,
                                             args.plans_name, args.num_processes, not args.no_preprocess)
        except (PlanningError, BudgetTooSmallError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        trainer = _trainer_hint(args.network)
        print(f"\n{plans['dataset_name']}: plans {plans_name} for {args.network} on {args.gpu_memory_gb:g} GiB")
        for configuration, plan in plans["configurations"].items():
            if "patch_size" not in plan:
                continue  # 3d_cascade_fullres inherits from 3d_fullres
            planned = plan["nnunet_mamba"]
            print(f"  {configuration:<11} patch {list(plan['patch_size'])}, batch {plan['batch_size']}, "
                  f"estimated {planned['estimated_training_step_gib']:.2f} GiB")
        print(f"train: nnUNetv2_train {dataset_id} CONFIGURATION FOLD -tr {trainer} -p {plans_name}")
    return 0
