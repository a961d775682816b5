"""One comparison from start to end: plan and train what is missing, refuse what is not comparable, score every
fold, measure every trainer the same way, and write the report (``nnunet-mamba compare`` calls :func:`compare`).

The order follows nnU-Net Revisited's protocol: the same splits and preprocessing for every model (checked before
anything is scored), the novel block ablated (a ``...NoMamba`` trainer next to its network), baselines matched in
memory (``match_memory``), memory and run time reported for every row (a profile of each trainer, measured here on
one device for all of them), and the result for this dataset alone.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnunet_mamba import discovery
from nnunet_mamba.comparison.profile import ProfileError, profile_in_new_process, training_resources
from nnunet_mamba.comparison.report import TrainerResult, summarize, write_reports
from nnunet_mamba.comparison.runs import (
    ComparisonError,
    TrainerRun,
    check_comparable,
    dataset_name,
    fold_folder,
    missing_plans,
    plan_missing,
    score_runs,
    train_missing,
)
from nnunet_mamba.files import write_json_atomically

#: the figures a profile contributes to a row
PROFILED = ("parameters", "flops", "peak_memory_mib", "seconds_per_iteration", "inference_seconds_per_case")


@dataclass
class Comparison:
    """What :func:`compare` did: the report's rows, its files and the commands it ran."""

    rows: list[dict]
    files: dict[str, Path]
    ran: list[list[str]]


def default_output(dataset, configuration: str) -> Path:
    """``nnUNet_results/DatasetXXX_Name/nnunet_mamba_compare/CONFIGURATION``, next to the runs it compares."""
    return fold_folder(dataset, configuration, TrainerRun("nnUNetTrainer"), 0).parents[1] / "nnunet_mamba_compare" \
        / configuration


def is_baseline(trainer: str) -> bool:
    """A trainer of one of nnU-Net's own networks (nnU-Net's trainers, and ours of its networks such as
    nnUNetTrainerQuickCPU): no registered ``network_name``. The candidates of the memory match."""
    found, _ = discovery.find_with_nnunet(trainer)
    return getattr(found, "network_name", None) is None


def _profile(dataset, configuration: str, run: TrainerRun, fold, device: str, iterations: int,
             cache: Path) -> dict:
    """The run's profile, read back from ``cache`` when this device measured it before (a profile takes minutes on
    a large patch; a rerun of the comparison should not repeat it)."""
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("device") == device and cached.get("iterations") == iterations:
                return cached
        except (OSError, ValueError):
            pass  # measured again below
    try:
        profile = profile_in_new_process(dataset, configuration, run.trainer, run.plans,
                                         int(fold) if str(fold).isdigit() else 0, device, iterations)
    except ProfileError as error:
        raise ComparisonError(f"profiling {run.trainer} (plans {run.plans}): {error}") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(cache, {**profile, "iterations": iterations})
    return profile


def _resources(dataset, configuration: str, run: TrainerRun, folds: Sequence, profile: dict | None) -> dict:
    """The profile's figures and what the folds logged: their GPU-hours summed (device-hours on CPU)."""
    resources: dict = {key: profile.get(key) for key in PROFILED} if profile else {}
    logged = [training_resources(fold_folder(dataset, configuration, run, fold)) for fold in folds]
    resources["gpu_hours"] = sum(entry["gpu_hours"] for entry in logged)
    if not profile:  # our trainers log their peak memory; nnU-Net's do not
        peaks = [entry["peak_memory_mib"] for entry in logged if entry["peak_memory_mib"] is not None]
        resources["peak_memory_mib"] = max(peaks) if peaks else None
    return resources


def compare(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence, *, output: Path | None = None,
            train: bool = False, plan: bool = False, device: str = "cuda", profile: bool = True,
            profile_iterations: int = 3, match_memory: bool = False, reference: int = 0, resamples: int = 10000,
            seed: int = 0, num_processes: int = 2, run_command: Callable = subprocess.run) -> Comparison:
    """Compare ``runs`` (trainer and plans pairs) on the ``folds`` of ``dataset``'s ``configuration``; the first run
    (or ``reference``) is the one the others are compared with. Raises :class:`ComparisonError`."""
    if len(set(runs)) != len(runs):
        raise ComparisonError(f"a trainer and plans pair is given twice in --trainers "
                              f"({', '.join(str(run) for run in runs)}): give each once")
    if not 0 <= reference < len(runs):
        raise ComparisonError(f"--reference {reference} is not the index of a trainer (0 to {len(runs) - 1})")
    ran = []
    missing = missing_plans(dataset, runs)
    if missing and not plan:
        raise ComparisonError(f"plans {', '.join(missing)} of {dataset_name(dataset)} do not exist yet: add "
                              f"--plan-missing to make them with nnU-Net's planners")
    if missing:
        ran += plan_missing(dataset, configuration, runs, run_command=run_command)
    if train:
        ran += train_missing(dataset, configuration, runs, folds, device=device, run_command=run_command)
    check_comparable(dataset, configuration, runs, folds)
    scores = score_runs(dataset, configuration, runs, folds, num_processes=num_processes)

    output = Path(output) if output is not None else default_output(dataset, configuration)
    results = []
    for run in runs:
        measured = _profile(dataset, configuration, run, folds[0], device, profile_iterations,
                            output / "profiles" / f"{run.trainer}__{run.plans}.json") if profile else None
        results.append(TrainerResult(run.trainer, run.plans, tuple(folds), scores[run],
                                     _resources(dataset, configuration, run, folds, measured),
                                     baseline=is_baseline(run.trainer)))
    rows = summarize(results, reference=reference, resamples=resamples, seed=seed, match_memory=match_memory)
    title = f"{dataset_name(dataset)}, {configuration}, folds {', '.join(map(str, folds))}"
    try:
        files = write_reports(output, rows, results, title=title)
    except OSError as error:
        raise ComparisonError(f"cannot write the report to {output}: {error}") from None
    return Comparison(rows, files, ran)
