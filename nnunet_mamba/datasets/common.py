"""Shared machinery for the dataset converters.

A converter only *plans* a dataset (which source file becomes which case, the labels, the split);
:func:`write_dataset` does the rest the same way for every source: it checks that every source file
exists before any work starts, converts the cases in parallel behind a progress bar into a hidden
staging folder next to the destination, writes ``dataset.json`` (and ``splits_final.json``), and only
then renames the staging folder into place. An interrupted or failed conversion therefore never
leaves a folder that nnU-Net would mistake for a finished dataset.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

SPLITS_FILENAME = "splits_final.json"


class ConversionError(RuntimeError):
    """A source tree that cannot be converted as it is; the message names the offending file."""


@dataclass(frozen=True)
class SourceOptions:
    """Options that only some converters use (the others ignore them)."""

    include_unlabelled_test: bool = True
    resize: tuple[int, int] | None = None  # (height, width) for 2D images; None keeps the original size


@dataclass(frozen=True)
class CaseJob:
    """One case to write: ``images<subset>/<identifier>_0000<ending>`` (+ ``labels<subset>/<identifier><ending>``).

    ``label_map`` maps every label value allowed in the source to its value in the output; a source
    value missing from it is an error, so the same map both remaps and validates.
    """

    identifier: str
    subset: str  # "Tr" or "Ts"
    kind: str  # "volume" (medical image, SimpleITK) or "rgb" (2D natural image, PNG)
    image: Path
    label: Path | None
    label_map: Mapping[int, int] | None = None
    resize: tuple[int, int] | None = None

    def source_files(self) -> list[Path]:
        return [self.image] + ([self.label] if self.label is not None else [])


@dataclass
class DatasetPlan:
    name: str  # folder becomes Dataset<id>_<name>
    channel_names: dict[str, str]
    labels: dict[str, int]  # nnU-Net order: name -> value, background first
    file_ending: str
    cases: list[CaseJob]
    splits: list[dict[str, list[str]]] | None = None
    description: str = ""
    extra_json: dict = field(default_factory=dict)

    def cases_in(self, subset: str) -> list[CaseJob]:
        return [c for c in self.cases if c.subset == subset]


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be between 1 and 999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def default_raw_root() -> Path:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ConversionError("nnUNet_raw is not set; set it or pass --out DIR")
    return Path(raw)


# ----------------------------------------------------------------------------------------------
# Per-case writers. They run in worker processes, so they are module-level functions that take
# only picklable arguments and import their heavy dependencies themselves.
# ----------------------------------------------------------------------------------------------


def remap_labels(values: np.ndarray, label_map: Mapping[int, int], source: Path) -> np.ndarray:
    present = np.unique(values)
    unexpected = [v for v in present.tolist() if v != int(v) or int(v) not in label_map]
    if unexpected:
        raise ConversionError(
            f"{source}: unexpected label value(s) {unexpected}; expected only {sorted(label_map)}"
        )
    lookup = np.zeros(max(label_map) + 1, dtype=np.uint8)
    for source_value, target_value in label_map.items():
        lookup[source_value] = target_value
    return lookup[values.astype(np.int64)]


def _write_volume_case(job: CaseJob, staging: Path, file_ending: str) -> list[str]:
    import SimpleITK as sitk

    warnings: list[str] = []
    image_out = staging / f"images{job.subset}" / f"{job.identifier}_0000{file_ending}"
    header = sitk.ImageFileReader()
    header.SetFileName(str(job.image))
    try:
        header.ReadImageInformation()
    except RuntimeError as error:
        raise ConversionError(f"{job.image}: cannot be read as an image ({error})") from error
    if header.GetDimension() != 3 or header.GetNumberOfComponents() != 1:
        raise ConversionError(
            f"{job.image}: expected a single-channel 3D volume, got {header.GetDimension()}D with "
            f"{header.GetNumberOfComponents()} component(s)"
        )
    # Re-encoding costs minutes on big CTs, so files already in the target format are copied as-is.
    if str(job.image).endswith(file_ending):
        shutil.copyfile(job.image, image_out)
    else:
        sitk.WriteImage(sitk.ReadImage(str(job.image)), str(image_out), useCompression=True)

    if job.label is None:
        return warnings
    label = sitk.ReadImage(str(job.label))
    if label.GetSize() != header.GetSize():
        raise ConversionError(
            f"{job.label}: size {label.GetSize()} does not match its image {job.image} ({header.GetSize()})"
        )
    if not np.allclose(label.GetSpacing(), header.GetSpacing(), rtol=1e-3, atol=1e-4) or not np.allclose(
        label.GetOrigin(), header.GetOrigin(), atol=1e-2
    ):
        warnings.append(
            f"{job.label}: spacing/origin differ slightly from {job.image}; the image geometry was kept"
        )
    remapped = remap_labels(sitk.GetArrayViewFromImage(label), job.label_map or {}, job.label)
    label_out = sitk.GetImageFromArray(remapped)
    # Some public label files carry headers that drift from their image (LiTS is known for it); nnU-Net
    # needs identical geometry, and the voxel grids are equal (checked above), so the image's wins.
    label_out.SetSpacing(header.GetSpacing())
    label_out.SetOrigin(header.GetOrigin())
    label_out.SetDirection(header.GetDirection())
    sitk.WriteImage(label_out, str(staging / f"labels{job.subset}" / f"{job.identifier}{file_ending}"), True)
    return warnings


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as mask:
        # 1-bit masks would come back as booleans; "L" gives them the documented 0/255 values.
        mask = mask.convert("L") if mask.mode in ("1", "P") else mask.copy()
    values = np.asarray(mask)
    if values.ndim == 3:
        if not all(np.array_equal(values[..., 0], values[..., c]) for c in range(1, min(values.shape[-1], 3))):
            raise ConversionError(f"{path}: colour mask, expected a grey-level mask with values 0/255")
        values = values[..., 0]
    return values


def _write_rgb_case(job: CaseJob, staging: Path, file_ending: str) -> list[str]:
    from PIL import Image

    try:
        with Image.open(job.image) as source:
            image = source.convert("RGB")
    except OSError as error:
        raise ConversionError(f"{job.image}: cannot be read as an image ({error})") from error
    label_image = None
    if job.label is not None:
        mask = _read_mask(job.label)
        if mask.shape != (image.height, image.width):
            raise ConversionError(
                f"{job.label}: size {mask.shape[1]}x{mask.shape[0]} does not match its image {job.image} "
                f"({image.width}x{image.height})"
            )
        label_image = Image.fromarray(remap_labels(mask, job.label_map or {}, job.label))
    if job.resize is not None:
        height, width = job.resize
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        if label_image is not None:
            label_image = label_image.resize((width, height), Image.Resampling.NEAREST)
    # PNG because nnU-Net refuses lossy JPEG; one RGB file per case is read as three channels.
    image.save(staging / f"images{job.subset}" / f"{job.identifier}_0000{file_ending}")
    if label_image is not None:
        label_image.save(staging / f"labels{job.subset}" / f"{job.identifier}{file_ending}")
    return []


_CASE_WRITERS: dict[str, Callable[[CaseJob, Path, str], list[str]]] = {
    "volume": _write_volume_case,
    "rgb": _write_rgb_case,
}


def _write_case(job: CaseJob, staging: Path, file_ending: str) -> list[str]:
    return _CASE_WRITERS[job.kind](job, staging, file_ending)


# ----------------------------------------------------------------------------------------------
# Dataset writing
# ----------------------------------------------------------------------------------------------


def _check_plan(plan: DatasetPlan) -> None:
    if not plan.cases_in("Tr"):
        raise ConversionError(f"no labelled training case found for {plan.name}")
    seen: dict[tuple[str, str], CaseJob] = {}
    for case in plan.cases:
        key = (case.subset, case.identifier)
        if key in seen:
            raise ConversionError(f"{case.image} and {seen[key].image} both map to case {case.identifier}")
        seen[key] = case
        for path in case.source_files():
            if not path.is_file():
                raise ConversionError(f"missing file: {path}")
    training = {c.identifier for c in plan.cases_in("Tr")}
    for fold in plan.splits or []:
        outside = sorted((set(fold["train"]) | set(fold["val"])) - training)
        if outside:
            raise ConversionError(f"split refers to cases that are not in imagesTr: {outside}")


def _dataset_json(plan: DatasetPlan) -> dict:
    content = {
        "name": plan.name,
        "description": plan.description,
        "channel_names": plan.channel_names,
        "labels": plan.labels,
        "numTraining": len(plan.cases_in("Tr")),
        "file_ending": plan.file_ending,
        "converted_by": "nnunet-mamba convert",
    }
    content.update(plan.extra_json)
    return content


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


def _run_jobs(jobs: Sequence[CaseJob], staging: Path, file_ending: str, num_processes: int, desc: str) -> list[str]:
    from tqdm import tqdm

    warnings: list[str] = []
    with tqdm(total=len(jobs), desc=desc, unit="case", file=sys.stderr) as progress:
        if num_processes <= 1:
            for job in jobs:
                warnings += _write_case(job, staging, file_ending)
                progress.update()
            return warnings
        # spawn: the parent may hold torch/OpenMP threads, which fork does not copy safely.
        with ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = {pool.submit(_write_case, job, staging, file_ending) for job in jobs}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise future.exception()
                    warnings += future.result()
                    progress.update()
    return warnings


def write_splits(splits: list[dict[str, list[str]]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPLITS_FILENAME
    _write_json(path, splits)
    return path


def write_dataset(
    plan: DatasetPlan,
    dataset_id: int,
    out_root: Path | None = None,
    num_processes: int = 2,
    overwrite: bool = False,
    preprocessed_root: Path | None = None,
) -> Path:
    """Write ``plan`` as ``<out_root>/Dataset<id>_<name>`` and return that folder.

    The split (if the plan has one) is written next to ``dataset.json`` as a record and, when
    ``preprocessed_root`` is given, to ``<preprocessed_root>/Dataset<id>_<name>/splits_final.json``
    where nnU-Net's trainer looks for it.
    """
    out_root = Path(out_root) if out_root is not None else default_raw_root()
    folder_name = dataset_folder_name(dataset_id, plan.name)
    destination = out_root / folder_name
    _check_plan(plan)

    # nnU-Net resolves a dataset id by folder prefix, so two names for one id would be ambiguous.
    prefix = f"Dataset{dataset_id:03d}_"
    if out_root.is_dir():
        clashes = [p.name for p in out_root.iterdir() if p.name.startswith(prefix) and p.name != folder_name]
        if clashes:
            raise ConversionError(f"dataset id {dataset_id} is already used by {out_root / clashes[0]}")
    if destination.exists() and not overwrite:
        raise ConversionError(f"{destination} already exists (pass --overwrite to replace it)")

    out_root.mkdir(parents=True, exist_ok=True)
    staging = out_root / f".{folder_name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for subset in ("Tr", "Ts"):
            cases = plan.cases_in(subset)
            if cases:
                (staging / f"images{subset}").mkdir(parents=True)
            if any(c.label is not None for c in cases):
                (staging / f"labels{subset}").mkdir(parents=True)
        warnings = _run_jobs(plan.cases, staging, plan.file_ending, num_processes, f"Converting {folder_name}")
        _write_json(staging / "dataset.json", _dataset_json(plan))
        if plan.splits:
            write_splits(plan.splits, staging)
        _move_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if plan.splits and preprocessed_root is not None:
        write_splits(plan.splits, Path(preprocessed_root) / folder_name)
    return destination


def _move_into_place(staging: Path, destination: Path) -> None:
    if not destination.exists():
        os.replace(staging, destination)
        return
    # A directory cannot be replaced atomically; keep the old one until the new one is in place.
    retired = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    os.replace(destination, retired)
    os.replace(staging, destination)
    shutil.rmtree(retired)


# ----------------------------------------------------------------------------------------------
# Helpers for locating official files
# ----------------------------------------------------------------------------------------------


def find_directory(root: Path, pattern: str, required: bool = True, depth: int = 2) -> Path | None:
    """The unique directory under ``root`` (up to ``depth`` levels) whose name fully matches ``pattern``."""
    regex = re.compile(pattern, re.IGNORECASE)
    candidates: list[Path] = []
    level: Iterable[Path] = [root]
    for _ in range(depth):
        next_level = [child for parent in level for child in sorted(parent.iterdir()) if child.is_dir()]
        candidates += [d for d in next_level if regex.fullmatch(d.name)]
        level = next_level
    if len(candidates) > 1:
        raise ConversionError(f"several folders under {root} match {pattern!r}: {[str(c) for c in candidates]}")
    if not candidates:
        if required:
            raise ConversionError(f"no folder matching {pattern!r} under {root}")
        return None
    return candidates[0]


def require_directory(path: Path) -> Path:
    if not path.is_dir():
        raise ConversionError(f"missing folder: {path}")
    return path


def identity_label_map(num_labels: int) -> dict[int, int]:
    return {value: value for value in range(num_labels)}
