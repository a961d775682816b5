"""``nnunet-mamba plan -d ID --network NAME --gpu-memory-gb GB``: plans for one of our networks, then preprocessing.

nnU-Net's ``-pl`` finds planners only inside nnunetv2, so this command runs ours (``planners/``) directly, on a
dataset nnU-Net has fingerprinted, and preprocesses the configurations asked for, like
``nnUNetv2_plan_and_preprocess``. The plans get their own name (``nnUNetMambaPlans_vm_unet_24G``) and their own
preprocessed folders; nnU-Net's plans are left as they are.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")


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


class PlanningError(RuntimeError):
    """What the user has to fix before planning can run."""


def planners_package():
    """``nnunet_mamba_planners``: the installed package, else the source tree's ``planners/`` (an editable install
    made before the package existed maps only the packages it knew)."""
    try:
        return importlib.import_module("nnunet_mamba_planners")
    except ModuleNotFoundError:
        source = Path(__file__).resolve().parents[2] / "planners" / "__init__.py"
        if not source.is_file():
            raise
        spec = importlib.util.spec_from_file_location("nnunet_mamba_planners", source,
                                                      submodule_search_locations=[str(source.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


def _check_environment() -> None:
    missing = [name for name in ("nnUNet_raw", "nnUNet_preprocessed") if not os.environ.get(name)]
    if missing:
        raise PlanningError(f"{' and '.join(missing)} not set: export nnU-Net's folders first "
                            f"(export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...)")


def _fingerprinted_dataset_name(dataset_id: str) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(int(dataset_id) if dataset_id.isdigit() else dataset_id)
    except RuntimeError as error:
        raise PlanningError(f"dataset {dataset_id} not found: {error}") from None
    fingerprint = Path(nnUNet_preprocessed) / name / "dataset_fingerprint.json"
    if not fingerprint.is_file():
        raise PlanningError(
            f"dataset {name} is not fingerprinted (no {fingerprint}): "
            f"run `nnUNetv2_extract_fingerprint -d {dataset_id}` (or nnUNetv2_plan_and_preprocess) first")
    return name


def _trainer_hint(network_name: str) -> str:
    from nnunet_mamba import discovery

    return discovery.trainer_for_network(network_name) or "TRAINER"


def _configurations_to_preprocess(requested, plans: dict, plans_name: str) -> list[str]:
    """``requested`` (-c), each of which the plans must have; by default those of DEFAULT_CONFIGURATIONS they have
    (nnU-Net plans no 3d_lowres for small images)."""
    planned = list(plans["configurations"])
    if requested is None:
        return [name for name in DEFAULT_CONFIGURATIONS if name in planned]
    unknown = [name for name in requested if name not in planned]
    if unknown:
        raise PlanningError(
            f"-c {' '.join(unknown)}: the plans {plans_name} of {plans['dataset_name']} have no such configuration "
            f"(they have {', '.join(planned)}); nothing was preprocessed")
    return list(requested)


def plan_dataset(dataset_id: str, network_name: str, gpu_memory_gb: float, configurations=None, plans_name=None,
                 num_processes=None, preprocess: bool = True) -> tuple[str, dict]:
    """Plan (and preprocess) one dataset; returns the plans identifier and the plans."""
    from nnunet_mamba.architectures import get_network

    try:
        get_network(network_name)
    except KeyError as error:
        raise PlanningError(error.args[0]) from None
    _check_environment()
    dataset_name = _fingerprinted_dataset_name(dataset_id)
    planner = planners_package().MambaExperimentPlanner(dataset_name, gpu_memory_gb, plans_name=plans_name,
                                                        network_name=network_name)
    plans = planner.plan_experiment()
    configurations = _configurations_to_preprocess(configurations, plans, planner.plans_identifier)
    if preprocess:
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

        processes = [num_processes or default_num_processes] * len(configurations)
        preprocess_dataset(convert_dataset_name_to_id(dataset_name), planner.plans_identifier, list(configurations),
                           processes)
    return planner.plans_identifier, plans


def run(args) -> int:
    from nnunet_mamba.planning.patch_search import BudgetTooSmallError

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
