"""Planning a fingerprinted dataset for one of our networks, then preprocessing: what ``nnunet-mamba plan`` runs.

nnU-Net splits its planning the same way (``plan_and_preprocess_api`` under ``plan_and_preprocess_entrypoints``):
this module plans and raises named errors; :mod:`nnunet_mamba.commands.plan` parses the command line and prints.
nnU-Net's ``-pl`` finds planners only inside nnunetv2, so ours (``planners/``) are loaded by
:func:`planners_package`. The plans get their own name (``nnUNetMambaPlans_vm_unet_24G``) and their own
preprocessed folders; nnU-Net's plans are left as they are.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from nnunet_mamba.planning.patch_search import BudgetTooSmallError

#: what is preprocessed when no configuration is asked for, of those the plans have
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")

__all__ = ["BudgetTooSmallError", "DEFAULT_CONFIGURATIONS", "PlanningError", "configurations_to_preprocess",
           "fingerprinted_dataset_name", "plan_dataset", "planners_package"]


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


def fingerprinted_dataset_name(dataset_id: str) -> str:
    """nnU-Net's name of dataset ``dataset_id`` (an ID or a name); a :class:`PlanningError` when it is unknown or
    has no fingerprint yet."""
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


def configurations_to_preprocess(requested, plans: dict, plans_name: str) -> list[str]:
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
    """Plan (and preprocess) one dataset; returns the plans identifier and the plans. Raises
    :class:`PlanningError` or :class:`BudgetTooSmallError` for what the user has to fix."""
    from nnunet_mamba.architectures import get_network

    try:
        get_network(network_name)
    except KeyError as error:
        raise PlanningError(error.args[0]) from None
    _check_environment()
    dataset_name = fingerprinted_dataset_name(dataset_id)
    planner = planners_package().MambaExperimentPlanner(dataset_name, gpu_memory_gb, plans_name=plans_name,
                                                        network_name=network_name)
    plans = planner.plan_experiment()
    configurations = configurations_to_preprocess(configurations, plans, planner.plans_identifier)
    if preprocess:
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

        processes = [num_processes or default_num_processes] * len(configurations)
        preprocess_dataset(convert_dataset_name_to_id(dataset_name), planner.plans_identifier, list(configurations),
                           processes)
    return planner.plans_identifier, plans
