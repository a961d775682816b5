"""Evaluate a folder of predictions against a folder of references, case by case in parallel.

Before a case is scored its two files are checked: complete (not truncated), on the same voxel grid
(a pure reorientation of the prediction is undone, any other difference is an error: a mirrored
prediction would otherwise score perfectly), and holding only known label values (0/255 masks would
otherwise score 0; NaN or infinite voxels would otherwise count as background).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_mamba.parallel import parallel_map
from nnunet_mamba.volumes import Geometry, VolumeError, count_non_finite, onto_grid, read_image

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
    files: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        ending = next((e for e in SEGMENTATION_ENDINGS if path.name.lower().endswith(e)), None)
        if not path.is_file() or ending is None:
            continue
        case = path.name[: -len(ending)]
        if case in files:
            raise EvaluationError(
                f"{files[case]} and {path} are both case {case!r}; move one of them out of {folder}"
            )
        files[case] = path
    return files


def read_segmentation(path: Path) -> tuple[np.ndarray, Geometry]:
    """Label array (numpy axis order) and the voxel grid it lies on."""
    import SimpleITK as sitk

    try:
        image = read_image(path, "a segmentation")
    except VolumeError as error:
        raise EvaluationError(str(error)) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} channels, expected a label map")
    array = sitk.GetArrayFromImage(image)
    non_finite = count_non_finite(path, array)
    if non_finite:
        raise EvaluationError(
            f"{path}: {non_finite} voxel(s) are NaN or infinite, which is no label value; a segmentation holds "
            f"the integer labels of dataset.json: write it again from the network's output (argmax)")
    return array, Geometry.of(image)


def spacing_of(geometry: Geometry) -> tuple[float, ...]:
    """The spacing in numpy axis order."""
    return tuple(reversed(geometry.spacing))


def label_values(array: np.ndarray) -> list:
    """The distinct values of a label array (fast for the usual small unsigned integers)."""
    if array.dtype.kind in "ub" and array.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(array.reshape(-1).astype(np.int64, copy=False))).tolist()
    return np.unique(array).tolist()


@dataclass(frozen=True)
class LabelCheck:
    """Which label values the files may hold; ``strict``: others are an error, else a warning."""

    allowed: frozenset[int]
    source: str  # where ``allowed`` comes from, for the message
    strict: bool = True

    def problem(self, path: Path, array: np.ndarray) -> str | None:
        unexpected = [v for v in label_values(array) if v != int(v) or int(v) not in self.allowed]
        if not unexpected:
            return None
        shown = [int(v) if v == int(v) else v for v in unexpected]
        return (
            f"{path}: label value(s) {shown} are not in {self.source} (expected {sorted(self.allowed)}); they "
            f"would score as wrong: remap them (e.g. a 0/255 mask to 0/1) or pass the matching --dataset-json"
        )


def evaluate_case(
    case: str,
    pred_path: Path,
    ref_path: Path,
    classes: Sequence[EvalClass],
    transunet_compat: bool,
    label_check: LabelCheck | None = None,
) -> tuple[list[dict], list[str]]:
    import torch

    torch.set_num_threads(1)  # parallelism is over cases
    pred, pred_geometry = read_segmentation(pred_path)
    ref, ref_geometry = read_segmentation(ref_path)
    warnings = []
    try:
        pred, reoriented = onto_grid(pred, pred_geometry, pred_path, ref_geometry, ref_path, role="reference")
    except VolumeError as error:
        raise EvaluationError(str(error)) from None
    if reoriented:
        warnings.append(f"{pred_path}: stored in another axis order or direction than {ref_path}; reoriented onto it")
    if label_check is not None:
        for path, array in ((pred_path, pred), (ref_path, ref)):
            problem = label_check.problem(path, array)
            if problem and label_check.strict:
                raise EvaluationError(problem)
            if problem:
                warnings.append(problem)
    spacing = spacing_of(ref_geometry)
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
    return [int(v) for v in label_values(read_segmentation(path)[0])]


def find_dataset_json(pred_dir: Path, ref_dir: Path) -> Path | None:
    # nnUNetv2_predict copies dataset.json into its output; a labelsTr/labelsTs folder has it one up.
    for candidate in (Path(pred_dir) / "dataset.json", Path(ref_dir).parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def read_label_names(path: Path, given: bool) -> dict:
    """dataset.json's ``labels``; ``given``: the path came from --dataset-json (named so in errors)."""
    option = "--dataset-json " if given else ""
    if not Path(path).is_file():
        raise EvaluationError(f"{option}{path}: no such file; give the dataset.json of the predicted dataset")
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise EvaluationError(f"{option}{path}: cannot be read as JSON ({error})") from None
    labels = content.get("labels") if isinstance(content, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise EvaluationError(
            f"{option}{path}: has no \"labels\" object; give the dataset.json of the predicted dataset"
        )
    return labels


def _allowed_values(label_names: Mapping) -> frozenset[int]:
    values: set[int] = {0}
    for value in label_names.values():
        values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return frozenset(values)


# Label values of the protocols that know their datasets without a dataset.json.
PROTOCOL_LABEL_VALUES = {
    "synapse": frozenset(range(9)),
    "amos": frozenset(range(16)),
    "lits": frozenset(range(3)),
    "isic": frozenset(range(2)),
}


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
    but each of them must have a reference. Both files of a case must lie on the same voxel grid
    (a pure reorientation is undone) and hold only the label values of dataset.json (of the
    protocol without one).
    """
    predictions, references = case_files(pred_dir), case_files(ref_dir)
    if not predictions:
        raise EvaluationError(f"no segmentation file in {pred_dir}")
    missing = [case for case in predictions if case not in references]
    if missing:
        raise EvaluationError(f"no reference in {ref_dir} for {len(missing)} prediction(s), e.g. {missing[0]}")

    given = dataset_json is not None
    dataset_json = dataset_json or find_dataset_json(pred_dir, ref_dir)
    label_names = read_label_names(dataset_json, given) if dataset_json else None
    found: set[int] = set()
    if label_names is None and protocol == "nnunet":
        reference_files = [(references[case],) for case in predictions]
        for labels in parallel_map(_labels_in, reference_files, num_processes, "Reading labels"):
            found.update(labels)
    classes = resolve_classes(protocol, label_names, sorted(found), nsd_tolerances)
    if label_names is not None:
        label_check = LabelCheck(_allowed_values(label_names), f"the labels of {dataset_json}")
    elif protocol in PROTOCOL_LABEL_VALUES:
        label_check = LabelCheck(PROTOCOL_LABEL_VALUES[protocol], f"the {protocol} protocol's labels")
    else:
        label_check = LabelCheck(frozenset(found | {0}), "any reference (and no dataset.json names them)", strict=False)

    jobs = [
        (case, pred, references[case], classes, transunet_compat, label_check) for case, pred in predictions.items()
    ]
    rows: list[dict] = []
    warnings: list[str] = []
    for case_rows, case_warnings in parallel_map(evaluate_case, jobs, num_processes, "Evaluating"):
        rows += case_rows
        warnings += case_warnings
    if len(references) > len(predictions):
        warnings.append(f"{len(references) - len(predictions)} reference case(s) have no prediction and were skipped")
    return EvaluationResult(protocol, transunet_compat, classes, rows, summarize(protocol, classes, rows), warnings)
