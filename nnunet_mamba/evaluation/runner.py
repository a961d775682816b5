"""Evaluate a folder of predictions against a folder of references, case by case in parallel."""
from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .metrics import score_region
from .protocols import EvalClass, resolve_classes, summarize

SEGMENTATION_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".bmp", ".tif", ".tiff")


class EvaluationError(RuntimeError):
    pass


@dataclass
class EvaluationResult:
    protocol: str
    transunet_compat: bool
    classes: list[EvalClass]
    rows: list[dict]  # one per case and class
    summary: dict
    warnings: list[str] = field(default_factory=list)


def case_files(folder: Path) -> dict[str, Path]:
    """Segmentation files in ``folder`` keyed by case identifier (file name without its ending)."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        ending = next((e for e in SEGMENTATION_ENDINGS if path.name.lower().endswith(e)), None)
        if path.is_file() and ending is not None:
            files[path.name[: -len(ending)]] = path
    return files


def read_segmentation(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label array (numpy axis order) and spacing in the same axis order."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} channels, expected a label map")
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def evaluate_case(
    case: str, pred_path: Path, ref_path: Path, classes: Sequence[EvalClass], transunet_compat: bool
) -> tuple[list[dict], list[str]]:
    import torch

    torch.set_num_threads(1)  # parallelism is over cases
    pred, pred_spacing = read_segmentation(pred_path)
    ref, spacing = read_segmentation(ref_path)
    if pred.shape != ref.shape:
        raise EvaluationError(f"{pred_path}: shape {pred.shape} differs from the reference {ref_path} {ref.shape}")
    warnings = []
    if not np.allclose(pred_spacing, spacing, rtol=1e-3):
        warnings.append(f"{pred_path}: spacing {pred_spacing} differs from the reference's {spacing}; used the latter")
    rows = []
    for eval_class in classes:
        scores = score_region(
            np.isin(pred, eval_class.labels),
            np.isin(ref, eval_class.labels),
            spacing,
            eval_class.nsd_tolerance,
            transunet_compat,
        )
        rows.append({"case": case, "class": eval_class.name, **scores.as_dict()})
    return rows, warnings


def _labels_in(path: Path) -> list[int]:
    return np.unique(read_segmentation(path)[0]).astype(int).tolist()


def find_dataset_json(pred_dir: Path, ref_dir: Path) -> Path | None:
    # nnUNetv2_predict copies dataset.json into its output; a labelsTr/labelsTs folder has it one up.
    for candidate in (Path(pred_dir) / "dataset.json", Path(ref_dir).parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def _map(function, argument_tuples: list[tuple], num_processes: int, desc: str) -> list:
    from tqdm import tqdm

    with tqdm(total=len(argument_tuples), desc=desc, unit="case", file=sys.stderr) as progress:
        if num_processes <= 1 or len(argument_tuples) <= 1:
            results = []
            for arguments in argument_tuples:
                results.append(function(*arguments))
                progress.update()
            return results
        # spawn: torch is loaded in the parent and does not survive fork reliably.
        with ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(function, *arguments) for arguments in argument_tuples]
            for future in futures:
                future.add_done_callback(lambda _: progress.update())
            return [future.result() for future in futures]


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    protocol: str = "nnunet",
    dataset_json: Path | None = None,
    transunet_compat: bool = False,
    nsd_tolerances: Mapping[str, float] | None = None,
    num_processes: int = 2,
) -> EvaluationResult:
    """Score every prediction in ``pred_dir`` against the file of the same case in ``ref_dir``.

    The predictions decide which cases are evaluated (a validation fold is a subset of labelsTr),
    but each of them must have a reference.
    """
    predictions, references = case_files(pred_dir), case_files(ref_dir)
    if not predictions:
        raise EvaluationError(f"no segmentation file in {pred_dir}")
    missing = [case for case in predictions if case not in references]
    if missing:
        raise EvaluationError(f"no reference in {ref_dir} for {len(missing)} prediction(s), e.g. {missing[0]}")

    dataset_json = dataset_json or find_dataset_json(pred_dir, ref_dir)
    label_names = json.loads(Path(dataset_json).read_text())["labels"] if dataset_json else None
    found: set[int] = set()
    if label_names is None and protocol == "nnunet":
        for labels in _map(_labels_in, [(references[c],) for c in predictions], num_processes, "Reading labels"):
            found.update(labels)
    classes = resolve_classes(protocol, label_names, sorted(found), nsd_tolerances)

    jobs = [(case, pred, references[case], classes, transunet_compat) for case, pred in predictions.items()]
    rows: list[dict] = []
    warnings: list[str] = []
    for case_rows, case_warnings in _map(evaluate_case, jobs, num_processes, "Evaluating"):
        rows += case_rows
        warnings += case_warnings
    if len(references) > len(predictions):
        warnings.append(f"{len(references) - len(predictions)} reference case(s) have no prediction and were skipped")
    return EvaluationResult(protocol, transunet_compat, classes, rows, summarize(protocol, classes, rows), warnings)
