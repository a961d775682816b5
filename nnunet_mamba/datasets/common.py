"""Shared machinery for the dataset converters.

A converter only *plans* a dataset (which source file becomes which case, the labels, the split);
:func:`write_dataset` does the rest the same way for every source: it checks that every source file
exists before any work starts, converts the cases in parallel behind a progress bar into a hidden
staging folder next to the destination, writes ``dataset.json`` (and ``splits_final.json``), and only
then renames the staging folder into place. An interrupted or failed conversion therefore never
leaves a folder that nnU-Net would mistake for a finished dataset: errors, Ctrl-C and SIGTERM remove
the staging folder, and one left by a killed process (SIGKILL, power loss) is removed by the next
conversion into the same root.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from nnunet_mamba.files import process_alive, write_json_atomically
from nnunet_mamba.parallel import parallel_map
from nnunet_mamba.volumes import Geometry, VolumeError, check_complete, onto_grid, read_image, reader_error

SPLITS_FILENAME = "splits_final.json"
# Test hook: seconds each case waits before it is written, so that a test can interrupt a conversion.
CASE_DELAY_ENV = "NNUNET_MAMBA_TEST_CASE_DELAY"
_STAGING_NAME = re.compile(r"\.(?P<dataset>Dataset\d{3}_.+)\.(?P<kind>partial|old)-(?P<pid>\d+)")
_OWNER_FILE = ".nnunet-mamba-staging-owner"  # host of the process that made a staging folder


class ConversionError(RuntimeError):
    """A source tree that cannot be converted as it is; the message names the offending file."""


class ConversionInterrupted(ConversionError):
    """The conversion was stopped by a signal; the partial output has been removed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class SourceOptions:
    """Options that only some converters use (the others ignore them)."""

    include_unlabelled_test: bool = True
    resize: tuple[int, int] | None = None  # (height, width) for 2D images; None keeps the original size

    def __post_init__(self):
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) <= 0):
            sizes = " ".join(str(n) for n in self.resize)
            raise ConversionError(f"--resize {sizes}: give a positive HEIGHT and WIDTH, e.g. --resize 256 256")


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


@contextlib.contextmanager
def _as_conversion_error() -> Iterator[None]:
    try:
        yield
    except VolumeError as error:
        raise ConversionError(str(error)) from None


def _write_volume_case(job: CaseJob, staging: Path, file_ending: str) -> list[str]:
    import SimpleITK as sitk

    warnings: list[str] = []
    image_out = staging / f"images{job.subset}" / f"{job.identifier}_0000{file_ending}"
    header = sitk.ImageFileReader()
    header.SetFileName(str(job.image))
    with _as_conversion_error():
        # SimpleITK reads a cut-off file without complaint (zeros where voxels are missing), so check first.
        check_complete(job.image)
        try:
            header.ReadImageInformation()
        except RuntimeError as error:
            raise reader_error(job.image, error) from None
    if header.GetDimension() != 3 or header.GetNumberOfComponents() != 1:
        raise ConversionError(
            f"{job.image}: expected a single-channel 3D volume, got {header.GetDimension()}D with "
            f"{header.GetNumberOfComponents()} component(s)"
        )
    # Re-encoding costs minutes on big CTs, so files already in the target format are copied as-is.
    if str(job.image).endswith(file_ending):
        shutil.copyfile(job.image, image_out)
    else:
        with _as_conversion_error():
            image = read_image(job.image)
        _write_volume(image, image_out)

    if job.label is None:
        return warnings
    with _as_conversion_error():
        label = read_image(job.label)
        values, reoriented = onto_grid(
            sitk.GetArrayViewFromImage(label), Geometry.of(label), job.label, Geometry.of(header), job.image
        )
    if reoriented:
        warnings.append(
            f"{job.label}: stored in another axis order or direction than {job.image}; reoriented onto the image grid"
        )
    label_out = sitk.GetImageFromArray(remap_labels(values, job.label_map or {}, job.label))
    # The grids match within nnU-Net's tolerances (or were made to); the image's header is written so
    # that both files carry identical geometry, as nnU-Net wants.
    label_out.SetSpacing(header.GetSpacing())
    label_out.SetOrigin(header.GetOrigin())
    label_out.SetDirection(header.GetDirection())
    _write_volume(label_out, staging / f"labels{job.subset}" / f"{job.identifier}{file_ending}")
    return warnings


def _write_volume(image, path: Path) -> None:
    """``SimpleITK.WriteImage``, verified: on a full disk its NIfTI writer prints a line and leaves a short file."""
    import SimpleITK as sitk

    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:  # the C++ source location first, what went wrong last
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise OSError(errno.EIO, lines[-1] if lines else "SimpleITK cannot write it", str(path)) from None
    try:
        check_complete(path)
    except VolumeError:
        raise OSError(errno.EIO, "written incomplete (is the disk full?)", str(path)) from None


_PIL_READ_ERRORS = (OSError, SyntaxError, ValueError)  # truncated, not an image, broken chunks


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as mask:
            # 1-bit masks would come back as booleans; "L" gives them the documented 0/255 values.
            mask = mask.convert("L") if mask.mode in ("1", "P") else mask.copy()
    except _PIL_READ_ERRORS as error:
        raise ConversionError(str(reader_error(path, error, "a mask image"))) from None
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
    except _PIL_READ_ERRORS as error:
        raise ConversionError(str(reader_error(job.image, error))) from None
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
    delay = float(os.environ.get(CASE_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
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


def _run_jobs(jobs: Sequence[CaseJob], staging: Path, file_ending: str, num_processes: int, desc: str) -> list[str]:
    results = parallel_map(_write_case, [(job, staging, file_ending) for job in jobs], num_processes, desc)
    return [warning for warnings in results for warning in warnings]


def write_splits(splits: list[dict[str, list[str]]], folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConversionError(f"cannot create {folder} for {SPLITS_FILENAME}: {error}") from None
    path = folder / SPLITS_FILENAME
    write_json_atomically(path, splits)
    return path


def _require_folder(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConversionError(f"{path} is a file, not a folder; {option} must name a folder")


def _describe_os_error(error: OSError) -> str:
    """An OSError's cause and the file it names, without Python's ``[Errno N]`` decoration."""
    cause = error.strerror or str(error) or type(error).__name__
    # a full disk is the destination's; shutil.copyfile names its source then
    about_the_file = error.filename and error.errno not in (errno.ENOSPC, errno.EDQUOT)
    return f"{error.filename}: {cause}" if about_the_file else cause


def _require_writable(folder: Path, option: str) -> None:
    """Refuse a folder that cannot be written (read-only mount, no permission) before anything is written:
    a test file goes into ``folder`` or, where it does not exist yet, into the nearest folder above it (which
    its creation needs to write), and is removed again."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    try:
        handle, name = tempfile.mkstemp(dir=existing, prefix=".nnunet-mamba-write-test-")
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise ConversionError(
            f"cannot write to {folder} ({option}): {existing}: {error.strerror or error}; nothing was written"
        ) from None


def _check_id_is_free(dataset_id: int, folder_name: str, roots: Mapping[str, Path | None]) -> None:
    """nnU-Net resolves an id by folder prefix across raw, preprocessed and results, and refuses an id with
    two names; so must we, before it is too late."""
    prefix = f"Dataset{dataset_id:03d}"  # the prefix nnU-Net's own lookup matches
    for variable, root in roots.items():
        if root is None or not Path(root).is_dir():
            continue
        for entry in sorted(Path(root).iterdir()):
            if entry.name.startswith(prefix) and entry.name != folder_name and entry.is_dir():
                raise ConversionError(
                    f"dataset id {dataset_id} is already used by {entry} (in {variable}); nnU-Net refuses an id "
                    f"with two names: pick another --dataset-id, or remove that folder"
                )


def _check_split_replaceable(target: Path, splits: list[dict[str, list[str]]]) -> None:
    if not target.exists():
        return
    try:
        existing = json.loads(target.read_text())
    except (OSError, ValueError):
        existing = None
    if existing != splits:
        raise ConversionError(
            f"{target} already exists and holds a different split; pass --overwrite to replace it "
            f"(or move the file away to keep it)"
        )


def _stale_preprocessed_note(folder: Path, dataset_id: int, wrote_split: bool) -> str | None:
    """nnU-Net reuses an existing fingerprint and plans; after a (re)conversion they may describe other data."""
    if not folder.is_dir():
        return None
    stale = sorted(
        entry.name + ("/" if entry.is_dir() else "")
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and not (wrote_split and entry.name == SPLITS_FILENAME)
    )
    if not stale:
        return None
    return (
        f"{folder} still holds {', '.join(stale)} from before this conversion; nnU-Net would reuse them as they "
        f"are: rerun nnUNetv2_plan_and_preprocess -d {dataset_id} --clean (or delete them) before training"
    )


# --- staging folders ------------------------------------------------------------------------------


def sweep_stale_staging(root: Path) -> list[str]:
    """Remove the staging folders under ``root`` that a conversion killed outright (SIGKILL, power loss)
    left behind; returns one note per folder removed or left alone on purpose."""
    notes: list[str] = []
    host = socket.gethostname()
    for entry in sorted(Path(root).iterdir()):
        match = _STAGING_NAME.fullmatch(entry.name)
        if match is None or not entry.is_dir() or int(match["pid"]) == os.getpid():
            continue
        pid = int(match["pid"])
        try:
            owner = (entry / _OWNER_FILE).read_text().strip()
        except OSError:
            owner = host
        if owner != host or process_alive(pid):
            continue  # still being written, possibly by another machine sharing this folder
        if match["kind"] == "old" and not (Path(root) / match["dataset"]).exists():
            notes.append(
                f"{entry} holds the previous {match['dataset']} of an --overwrite that was killed; rename it to "
                f"{Path(root) / match['dataset']} to keep it, or delete it"
            )
            continue
        shutil.rmtree(entry, ignore_errors=True)
        notes.append(f"removed {entry}, left by a conversion (process {pid}) that was killed")
    return notes


@contextlib.contextmanager
def _staging_folder(staging: Path) -> Iterator[Path]:
    """Create ``staging``; remove it again if the block fails, is interrupted (Ctrl-C) or the process gets
    SIGTERM/SIGHUP, which are turned into :class:`ConversionInterrupted` while the block runs."""
    received: list[int] = []

    def on_signal(signum, frame):
        if received:
            return  # already on the way out
        received.append(signum)
        raise ConversionInterrupted(
            f"stopped by {signal.Signals(signum).name}; removed the unfinished output {staging}", 128 + signum
        )

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                previous[signum] = signal.signal(signum, on_signal)
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        (staging / _OWNER_FILE).write_text(socket.gethostname() + "\n")
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def write_dataset(
    plan: DatasetPlan,
    dataset_id: int,
    out_root: Path | None = None,
    num_processes: int = 2,
    overwrite: bool = False,
    preprocessed_root: Path | None = None,
    results_root: Path | None = None,
) -> Path:
    """Write ``plan`` as ``<out_root>/Dataset<id>_<name>`` and return that folder.

    The split (if the plan has one) is written next to ``dataset.json`` as a record and, when
    ``preprocessed_root`` is given, to ``<preprocessed_root>/Dataset<id>_<name>/splits_final.json``
    where nnU-Net's trainer looks for it; a different split already there is only replaced with
    ``overwrite``. The id must not be used by another name in any of the three nnU-Net roots given.
    """
    out_root = Path(out_root) if out_root is not None else default_raw_root()
    folder_name = dataset_folder_name(dataset_id, plan.name)
    destination = out_root / folder_name
    _require_folder(out_root, "--out (or $nnUNet_raw)")
    preprocessed_folder = Path(preprocessed_root) / folder_name if preprocessed_root is not None else None
    if preprocessed_folder is not None:
        _require_folder(preprocessed_folder.parent, "--preprocessed (or $nnUNet_preprocessed)")
        _require_folder(preprocessed_folder, "the dataset's preprocessed folder")
    _check_plan(plan)
    _check_id_is_free(
        dataset_id,
        folder_name,
        {"nnUNet_raw": out_root, "nnUNet_preprocessed": preprocessed_root, "nnUNet_results": results_root},
    )
    if destination.exists() and not overwrite:
        raise ConversionError(f"{destination} already exists (pass --overwrite to replace it)")
    split_target = preprocessed_folder / SPLITS_FILENAME if plan.splits and preprocessed_folder else None
    if split_target is not None and not overwrite:
        _check_split_replaceable(split_target, plan.splits)

    _require_writable(out_root, "--out or $nnUNet_raw")
    if split_target is not None:
        _require_writable(split_target.parent, "--preprocessed or $nnUNet_preprocessed")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConversionError(f"cannot create {out_root} (--out or $nnUNet_raw): {error}") from None
    for note in sweep_stale_staging(out_root):
        print(f"note: {note}", file=sys.stderr)
    try:
        with _staging_folder(out_root / f".{folder_name}.partial-{os.getpid()}") as staging:
            for subset in ("Tr", "Ts"):
                cases = plan.cases_in(subset)
                if cases:
                    (staging / f"images{subset}").mkdir()
                if any(c.label is not None for c in cases):
                    (staging / f"labels{subset}").mkdir()
            warnings = _run_jobs(plan.cases, staging, plan.file_ending, num_processes, f"Converting {folder_name}")
            write_json_atomically(staging / "dataset.json", _dataset_json(plan))
            if plan.splits:
                write_splits(plan.splits, staging)
            (staging / _OWNER_FILE).unlink()
            _move_into_place(staging, destination)
    except OSError as error:  # a full disk, a folder that turned read-only meanwhile
        kept = "the previous dataset there is unchanged" if destination.exists() else "nothing is left there"
        raise ConversionError(
            f"cannot write {folder_name} into {out_root} (--out or $nnUNet_raw): {_describe_os_error(error)}; "
            f"removed the unfinished output, {kept}"
        ) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if split_target is not None:
        try:
            write_splits(plan.splits, split_target.parent)
        except (ConversionError, OSError) as error:
            cause = (f"cannot write {SPLITS_FILENAME} into {split_target.parent}: {_describe_os_error(error)}"
                     if isinstance(error, OSError) else str(error))
            raise ConversionError(
                f"{cause}. The dataset {destination} is complete (with its split); place the split by hand: "
                f"mkdir -p {split_target.parent} && cp {destination / SPLITS_FILENAME} {split_target.parent}/"
            ) from None
    if preprocessed_folder is not None:
        note = _stale_preprocessed_note(preprocessed_folder, dataset_id, wrote_split=split_target is not None)
        if note:
            print(f"note: {note}", file=sys.stderr)
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
