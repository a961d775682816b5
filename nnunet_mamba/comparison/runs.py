"""The runs a comparison compares: each (trainer, plans) pair's cross-validation folds, as nnUNetv2_train leaves them.

A fold is looked up where nnU-Net itself puts it (``get_output_folder``). What is not finished can be trained here,
printed as commands, or written as a SLURM job array; plans a baseline needs can be made by nnU-Net's own planners.
Before anything is scored, :func:`check_comparable` refuses runs that are not comparable in nnU-Net Revisited's
sense: every fold present, the same validation cases (the dataset's splits) and the same preprocessing for every
model. :func:`score_runs` then scores every fold's validation predictions with our evaluation.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_PLANS = "nnUNetPlans"

FINISHED = "finished"
NEEDS_VALIDATION = "needs_validation"
INTERRUPTED = "interrupted"
MISSING = "missing"

#: the plans nnU-Net's own planners make, and the planner (nnUNetv2_plan_experiment -pl) that makes each
PLANNER_OF_PLANS = {
    "nnUNetPlans": "ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
    "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
    "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL",
}

#: the fields of a configuration that decide what its network sees (patch, batch and architecture differ between
#: presets by design and are not compared)
PREPROCESSING_FIELDS = (
    "spacing", "normalization_schemes", "use_mask_for_norm", "preprocessor_name",
    "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs",
    "resampling_fn_probabilities", "resampling_fn_probabilities_kwargs",
)
#: the same for the fields of the whole plans file
PLANS_PREPROCESSING_FIELDS = ("transpose_forward", "foreground_intensity_properties_per_channel")

_ENTRY_POINTS = "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints"
#: how a command this module prints runs in this interpreter, so that nothing needs the console scripts on PATH
_IN_THIS_PYTHON = {
    "nnunet-mamba": ["-m", "nnunet_mamba.cli"],
    "nnUNetv2_plan_experiment": ["-c", f"from {_ENTRY_POINTS} import plan_experiment_entry as m; m()"],
    "nnUNetv2_preprocess": ["-c", f"from {_ENTRY_POINTS} import preprocess_entry as m; m()"],
}

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class ComparisonError(RuntimeError):
    """Runs that cannot be compared (or trained, or scored): one sentence naming what is at fault and the fix."""


@dataclass(frozen=True)
class TrainerRun:
    trainer: str
    plans: str = DEFAULT_PLANS

    @classmethod
    def parse(cls, text: str) -> TrainerRun:
        """``TRAINER`` or ``TRAINER:PLANS``, as given to ``--trainers``."""
        trainer, separator, plans = text.partition(":")
        if not trainer.strip() or (separator and not plans.strip()):
            raise ComparisonError(
                f"--trainers {text!r}: the trainer or the plans name is empty; write TRAINER or TRAINER:PLANS, "
                f"e.g. nnUNetTrainer:nnUNetResEncUNetMPlans")
        run = cls(trainer.strip(), plans.strip() if separator else DEFAULT_PLANS)
        for what, name in (("trainer", run.trainer), ("plans", run.plans)):
            if not _NAME.fullmatch(name):
                raise ComparisonError(
                    f"--trainers {text!r}: the {what} name {name!r} holds characters no trainer class or plans file "
                    f"has (letters, digits, '_', '.', '-'); write TRAINER or TRAINER:PLANS")
        return run

    def __str__(self) -> str:
        return self.trainer if self.plans == DEFAULT_PLANS else f"{self.trainer}:{self.plans}"


# --- where nnU-Net keeps things ---------------------------------------------------------------------------------


def _require_folder(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        raise ComparisonError(f"{variable} is not set: export nnU-Net's folders first "
                              f"(export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...)")
    return Path(value)


def dataset_name(dataset) -> str:
    """nnU-Net's folder name of ``dataset`` (an ID or a name)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    _require_folder("nnUNet_preprocessed")
    try:
        return maybe_convert_to_dataset_name(dataset if isinstance(dataset, int) else str(dataset))
    except ValueError:
        raise ComparisonError(f"dataset {dataset!r} is neither an ID nor a name starting with 'Dataset': give e.g. "
                              f"8 or Dataset008_HepaticVessel") from None
    except RuntimeError as error:
        if "More than one" in str(error):
            raise ComparisonError(f"dataset {dataset}: more than one dataset folder has this ID in nnU-Net's folders: "
                                  f"rename or remove the others") from None
        raise ComparisonError(f"dataset {dataset} not found in nnUNet_raw, nnUNet_preprocessed or nnUNet_results: "
                              f"check the ID and where those variables point") from None


def preprocessed_folder(dataset) -> Path:
    """The dataset's folder in nnUNet_preprocessed (plans, splits_final.json, gt_segmentations)."""
    return _require_folder("nnUNet_preprocessed") / dataset_name(dataset)


def plans_file(dataset, plans: str) -> Path:
    return preprocessed_folder(dataset) / f"{plans}.json"


def fold_folder(dataset, configuration: str, run: TrainerRun, fold) -> Path:
    """``nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION/fold_F``, by nnU-Net's own rule."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    _require_folder("nnUNet_results")
    name = dataset_name(dataset)
    return Path(get_output_folder(name, run.trainer, run.plans, configuration, fold))


def fold_state(dataset, configuration: str, run: TrainerRun, fold) -> str:
    """:data:`FINISHED` (final checkpoint and validation summary, as nnUNetv2_train leaves a fold),
    :data:`NEEDS_VALIDATION` (final checkpoint only), :data:`INTERRUPTED` (latest or best checkpoint only: resume
    with --c) or :data:`MISSING`."""
    folder = fold_folder(dataset, configuration, run, fold)
    if (folder / "checkpoint_final.pth").is_file():
        return FINISHED if (folder / "validation" / "summary.json").is_file() else NEEDS_VALIDATION
    if (folder / "checkpoint_latest.pth").is_file() or (folder / "checkpoint_best.pth").is_file():
        return INTERRUPTED
    return MISSING


# --- training what is missing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldCommand:
    """The ``nnunet-mamba train`` command that brings one fold of one run to :data:`FINISHED`."""

    run: TrainerRun
    fold: object
    state: str
    command: list[str]


# the options that take a fold in each state to finished
_OPTIONS_FOR_STATE = {MISSING: [], INTERRUPTED: ["--c"], NEEDS_VALIDATION: ["--val"]}


def fold_commands(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence,
                  device: str = "cuda") -> list[FoldCommand]:
    """One command per fold that is not finished, run by run and fold by fold; none for a finished fold."""
    commands = []
    for run in runs:
        for fold in folds:
            state = fold_state(dataset, configuration, run, fold)
            if state == FINISHED:
                continue
            # --npz as in nnU-Net's own instructions: find_best_configuration's ensembles need the probabilities
            command = ["nnunet-mamba", "train", str(dataset), configuration, str(fold), "-tr", run.trainer,
                       "-p", run.plans, "-device", device, "--npz", *_OPTIONS_FOR_STATE[state]]
            commands.append(FoldCommand(run, fold, state, command))
    return commands


def training_commands(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence,
                      device: str = "cuda") -> list[list[str]]:
    """``nnunet-mamba train`` for every fold that is not finished: ``--c`` for an interrupted one, ``--val`` for one
    that needs its validation only."""
    return [fold.command for fold in fold_commands(dataset, configuration, runs, folds, device)]


def in_this_python(command: Sequence[str]) -> list[str]:
    """``command`` (nnunet-mamba or an nnUNetv2_ entry point) as a run of this interpreter."""
    program, *arguments = command
    return [sys.executable, *_IN_THIS_PYTHON[program], *arguments]


def train_missing(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence, device: str = "cuda",
                  run_command: Callable = subprocess.run) -> list[list[str]]:
    """Train every fold that is not finished, one after the other; returns the commands it ran.

    The first failure stops it with a :class:`ComparisonError`: the folds finished before are kept, and a rerun
    resumes the failed one (it is then interrupted and gets --c)."""
    ran = []
    for fold_command in fold_commands(dataset, configuration, runs, folds, device):
        command = in_this_python(fold_command.command)
        ran.append(command)
        result = run_command(command)
        if result.returncode != 0:
            raise ComparisonError(
                f"training {fold_command.run.trainer} (plans {fold_command.run.plans}) fold {fold_command.fold} "
                f"failed with exit code {result.returncode} (its log is in "
                f"{fold_folder(dataset, configuration, fold_command.run, fold_command.fold)}): fix the cause and "
                f"run again; the folds finished so far are kept, and this one resumes from its latest checkpoint if it "
                f"wrote one")
    return ran


def _bash_words(values) -> str:
    return " ".join(shlex.quote(str(value)) for value in values)


def slurm_array(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence) -> str:
    """A SLURM job-array script for the folds that are not finished: task ``i`` trains the ``i``-th of
    :func:`training_commands` on one GPU (the table at its top says which (trainer, plans, fold) that is)."""
    commands = fold_commands(dataset, configuration, runs, folds, "cuda")
    if not commands:
        raise ComparisonError(
            f"every fold {', '.join(str(f) for f in folds)} of {', '.join(str(r) for r in runs)} is finished: "
            f"there is nothing to submit; compare them without --emit-slurm")
    table = [f"#   task {index}: {c.run.trainer} -p {c.run.plans} fold {c.fold} ({c.state.replace('_', ' ')})"
             for index, c in enumerate(commands)]
    options = _bash_words(" ".join(_OPTIONS_FOR_STATE[c.state]) for c in commands)
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# The folds of `nnunet-mamba compare -d {dataset} -c {configuration}` that are not finished, as one SLURM",
        "# job array: each task trains one (trainer, plans, fold) on one GPU. Saved as compare_folds.sh, submit it",
        "# from the login node:",
        "#",
        "#   sbatch compare_folds.sh",
        "#",
        "# A task that failed can be resubmitted alone; --c resumes it from its latest checkpoint (e.g. task 3):",
        "#",
        "#   sbatch --array=3 compare_folds.sh --c",
        "#",
        "# Tasks:",
        *table,
        "#SBATCH --job-name=nnunet-mamba-compare",
        f"#SBATCH --array=0-{len(commands) - 1}",
        "#SBATCH --gpus=1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --time=48:00:00",
        "set -euo pipefail",
        ': "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"',
        'eval "$(nnunet-mamba env)"',
        "",
        "# one entry per task",
        f"trainers=({_bash_words(c.run.trainer for c in commands)})",
        f"plans=({_bash_words(c.run.plans for c in commands)})",
        f"folds=({_bash_words(c.fold for c in commands)})",
        f"options=({options})  # --c: interrupted, --val: trained but not validated",
        "",
        'task=${SLURM_ARRAY_TASK_ID:?submit with sbatch, which sets the task}',
        'read -r -a extra <<< "${options[$task]}"',
        f"nnunet-mamba train {shlex.quote(str(dataset))} {shlex.quote(configuration)} \"${{folds[$task]}}\" "
        f"-tr \"${{trainers[$task]}}\" -p \"${{plans[$task]}}\" -device cuda --npz ${{extra[@]+\"${{extra[@]}}\"}} "
        f"\"$@\"",
        "",
    ])


# --- plans the baselines need -----------------------------------------------------------------------------------


def missing_plans(dataset, runs: Sequence[TrainerRun]) -> list[str]:
    """The plans of ``runs`` that have no plans file in nnUNet_preprocessed yet, each once."""
    return [plans for plans in dict.fromkeys(run.plans for run in runs) if not plans_file(dataset, plans).is_file()]


def _how_to_make(dataset, plans: str) -> str:
    if plans in PLANNER_OF_PLANS:
        return f"--plan-missing makes it (nnUNetv2_plan_experiment -d {dataset} -pl {PLANNER_OF_PLANS[plans]})"
    if plans.startswith("nnUNetMambaPlans"):
        return f"our planner makes it: run `nnunet-mamba plan -d {dataset} --network NAME` and use the plans it names"
    return (f"no nnU-Net planner makes it (they make {', '.join(PLANNER_OF_PLANS)}): plan it yourself or correct "
            f"the plans name in --trainers")


def planning_commands(dataset, configuration: str, plans_names: Sequence[str]) -> list[list[str]]:
    """nnU-Net's commands that make ``plans_names`` and preprocess ``configuration`` for them."""
    commands = []
    for plans in plans_names:
        if plans not in PLANNER_OF_PLANS:
            raise ComparisonError(f"plans file {plans_file(dataset, plans)} does not exist and "
                                  f"{_how_to_make(dataset, plans)}")
        commands.append(["nnUNetv2_plan_experiment", "-d", str(dataset), "-pl", PLANNER_OF_PLANS[plans]])
        commands.append(["nnUNetv2_preprocess", "-d", str(dataset), "-plans_name", plans, "-c", configuration])
    return commands


def _data_already_preprocessed(dataset, configuration: str, plans: str) -> bool:
    # nnU-Net's residual encoder presets share nnUNetPlans' 2d and 3d_fullres data (same data_identifier):
    # preprocessing it again would rewrite files that runs of the other plans may be reading.
    try:
        content = json.loads(plans_file(dataset, plans).read_text())
        identifier = content["configurations"][configuration]["data_identifier"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (preprocessed_folder(dataset) / identifier).is_dir()


@contextlib.contextmanager
def _planner_environment():
    """nnU-Net's planners pass nnUNet_n_proc_DA to torch.set_num_threads, which refuses the 0 that CPU machines set
    (no augmentation workers): while planning it is the planner's setting of our pipeline."""
    from nnunet_mamba.pipeline import PLANNER_ENV

    saved = os.environ.get("nnUNet_n_proc_DA")
    if saved is not None and saved.strip() == "0":
        os.environ.update(PLANNER_ENV)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved


def plan_missing(dataset, configuration: str, runs: Sequence[TrainerRun],
                 run_command: Callable = subprocess.run) -> list[list[str]]:
    """Plan and preprocess the plans of ``runs`` that do not exist yet with nnU-Net's own planners; returns the
    commands it ran. A plans file no planner makes is refused before anything runs."""
    missing = missing_plans(dataset, runs)
    commands = planning_commands(dataset, configuration, missing)
    fingerprint = preprocessed_folder(dataset) / "dataset_fingerprint.json"
    if missing and not fingerprint.is_file():
        raise ComparisonError(
            f"plans {', '.join(missing)} cannot be planned: {fingerprint} does not exist; run "
            f"`nnUNetv2_extract_fingerprint -d {dataset}` (or nnUNetv2_plan_and_preprocess) first")
    ran = []
    for plans, plan_command, preprocess_command in zip(missing, commands[::2], commands[1::2]):
        for command in (plan_command, preprocess_command):
            if command is preprocess_command and _data_already_preprocessed(dataset, configuration, plans):
                continue
            ran.append(in_this_python(command))
            with _planner_environment():
                result = run_command(ran[-1])
            if result.returncode != 0:
                raise ComparisonError(
                    f"`{shlex.join(command)}` failed with exit code {result.returncode}: fix what it printed and run "
                    f"again (plans that were made are kept)")
    return ran


# --- refusing runs that are not comparable ----------------------------------------------------------------------


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ComparisonError(f"{what} {path} cannot be read as JSON ({error}): write it again") from None


def _same(a, b) -> bool:
    """Equal, floats up to rounding (planners may compute the same spacing in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
    return a == b


def preprocessing_of(dataset, configuration: str, plans: str) -> dict:
    """The fields of ``plans`` that decide how ``configuration``'s data were preprocessed (inheritance resolved,
    as nnU-Net's PlansManager resolves it)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    path = plans_file(dataset, plans)
    if not path.is_file():
        raise ComparisonError(f"plans file {path} does not exist: {_how_to_make(dataset, plans)}")
    content = _read_json(path, "plans file")
    configurations = content.get("configurations", {}) if isinstance(content, dict) else {}
    if configuration not in configurations:
        raise ComparisonError(
            f"plans {plans} have no configuration {configuration!r} (they have {', '.join(configurations)}): "
            f"compare a configuration every plans file has, or plan it")
    resolved = PlansManager(content).get_configuration(configuration).configuration
    fields = {name: resolved.get(name) for name in PREPROCESSING_FIELDS}
    fields.update({name: content.get(name) for name in PLANS_PREPROCESSING_FIELDS})
    return fields


def validation_cases(dataset, configuration: str, run: TrainerRun, fold) -> set[str]:
    """The cases of a fold's validation predictions."""
    from nnunet_mamba.evaluation.runner import EvaluationError, case_files

    folder = fold_folder(dataset, configuration, run, fold) / "validation"
    if not folder.is_dir():
        raise ComparisonError(f"{run.trainer} (plans {run.plans}) fold {fold} has no validation folder {folder}: "
                              f"validate it with `nnunet-mamba train ... --val --npz`")
    try:
        return set(case_files(folder))
    except EvaluationError as error:
        raise ComparisonError(str(error)) from None


def _first_differences(a: set[str], b: set[str]) -> str:
    only_a, only_b = sorted(a - b), sorted(b - a)
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} case(s) only there, e.g. {only_a[0]}")
    if only_b:
        parts.append(f"{len(only_b)} case(s) missing, e.g. {only_b[0]}")
    return "; ".join(parts)


def check_comparable(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence) -> None:
    """Refuse (:class:`ComparisonError`) runs that nnU-Net Revisited would not put side by side: plans without the
    configuration or with other preprocessing, folds not finished, or validation cases that differ between the runs
    or from the dataset's splits_final.json."""
    if not runs:
        raise ComparisonError("no trainer to compare: give --trainers TRAINER[:PLANS] ...")
    reference_plans = runs[0].plans
    reference = preprocessing_of(dataset, configuration, reference_plans)
    for plans in dict.fromkeys(run.plans for run in runs[1:]):
        fields = preprocessing_of(dataset, configuration, plans)
        for name in (*PREPROCESSING_FIELDS, *PLANS_PREPROCESSING_FIELDS):
            if not _same(fields[name], reference[name]):
                raise ComparisonError(
                    f"plans {plans} preprocess {configuration} otherwise than {reference_plans} ({name}: "
                    f"{json.dumps(fields[name])} vs {json.dumps(reference[name])}): their networks see other data; "
                    f"compare plans made from the same fingerprint and target spacing")

    unfinished = []
    for run in runs:
        states = {fold: fold_state(dataset, configuration, run, fold) for fold in folds}
        late = [f"{fold} ({state.replace('_', ' ')})" for fold, state in states.items() if state != FINISHED]
        if late:
            unfinished.append(f"{run.trainer} (plans {run.plans}) fold{'s' * (len(late) > 1)} {', '.join(late)}")
    if unfinished:
        raise ComparisonError(
            f"not finished: {'; '.join(unfinished)}; train them with --train or print the commands with "
            f"--emit-commands")

    splits_path = preprocessed_folder(dataset) / "splits_final.json"
    if not splits_path.is_file():
        raise ComparisonError(
            f"{splits_path} does not exist, so the folds' validation cases cannot be checked against the splits they "
            f"were trained on: restore it (nnUNetv2_train writes it when it trains a first fold)")
    splits = _read_json(splits_path, "splits file")
    if not isinstance(splits, list) or not all(isinstance(split, dict) and "val" in split for split in splits):
        raise ComparisonError(f"{splits_path} is not nnU-Net's list of {{\"train\": [...], \"val\": [...]}} folds: "
                              f"write it again")
    for fold in folds:
        cases = {run: validation_cases(dataset, configuration, run, fold) for run in runs}
        index = int(fold) if str(fold).isdigit() else None
        if index is not None and index < len(splits):
            expected, source = set(splits[index]["val"]), f"fold {fold} of {splits_path}"
        else:
            # nnU-Net's fold 'all' and folds beyond the splits file (its seeded 80:20 split): runs against each other
            expected, source = cases[runs[0]], f"{runs[0].trainer} (plans {runs[0].plans}) fold {fold}"
        for run, found in cases.items():
            if found != expected:
                raise ComparisonError(
                    f"{run.trainer} (plans {run.plans}) fold {fold} was validated on other cases than {source} "
                    f"({_first_differences(found, expected)}): it was trained on other splits; train it again on "
                    f"the dataset's current splits_final.json")


# --- scoring ----------------------------------------------------------------------------------------------------


def score_runs(dataset, configuration: str, runs: Sequence[TrainerRun], folds: Sequence,
               num_processes: int = 2) -> dict[TrainerRun, dict[str, dict[str, float]]]:
    """Dice of every validation case of every fold, per run: run -> case -> class name -> Dice.

    The predictions are scored against nnUNet_preprocessed's gt_segmentations, as nnU-Net's own validation does,
    with our evaluation (protocol "nnunet", the classes of the dataset's dataset.json). A class absent from both
    the prediction and the reference is NaN (nnU-Net's convention: no evidence either way), not our metrics'
    Dice 1. A case scored in two folds is refused: the folds must partition the cases."""
    from nnunet_mamba.evaluation.metrics import BOTH_EMPTY
    from nnunet_mamba.evaluation.runner import EvaluationError, evaluate_folders

    folder = preprocessed_folder(dataset)
    references, dataset_json = folder / "gt_segmentations", folder / "dataset.json"
    if not references.is_dir():
        raise ComparisonError(f"{references} does not exist: preprocess the dataset again "
                              f"(nnUNetv2_preprocess writes the reference segmentations there)")
    scores: dict[TrainerRun, dict[str, dict[str, float]]] = {}
    for run in runs:
        per_case: dict[str, dict[str, float]] = {}
        fold_of_case: dict[str, object] = {}
        for fold in folds:
            predictions = fold_folder(dataset, configuration, run, fold) / "validation"
            if not predictions.is_dir():
                raise ComparisonError(f"{run.trainer} (plans {run.plans}) fold {fold} has no validation folder "
                                      f"{predictions}: validate it with --train or --emit-commands")
            try:
                result = evaluate_folders(predictions, references, "nnunet", dataset_json,
                                          num_processes=num_processes)
            except EvaluationError as error:
                raise ComparisonError(f"{run.trainer} (plans {run.plans}) fold {fold}: {error}") from None
            for row in result.rows:
                case = row["case"]
                if fold_of_case.setdefault(case, fold) != fold:
                    raise ComparisonError(
                        f"{run.trainer} (plans {run.plans}): case {case} is a validation case of folds "
                        f"{fold_of_case[case]} and {fold}; each case belongs to one fold: check splits_final.json")
                dice = math.nan if row["mask_state"] == BOTH_EMPTY else float(row["dice"])
                per_case.setdefault(case, {})[row["class"]] = dice
        scores[run] = per_case
    return scores
