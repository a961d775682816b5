"""Converters must never write silently wrong data, must clean up after interruptions, and must say
which file or option is at fault. Tiny synthetic source trees, mostly one or two cases."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import (
    OFFICIAL_AMOS_LABELS,
    X_FLIPPED,
    assert_nothing_written,
    ct_volume,
    label_volume,
    make_isic_part,
    run_convert,
    write_mask,
    write_nifti,
    write_rgb,
)

from nnunet_mamba.datasets import ConversionError, SourceOptions, convert
from nnunet_mamba.datasets.common import CASE_DELAY_ENV

SHAPE = (4, 6, 8)  # z, y, x


def make_amos(root: Path, training=(1,), validation=(), shape=SHAPE) -> Path:
    amos = root / "amos22"
    rng = np.random.default_rng(3)
    official = {"name": "AMOS", "labels": {str(i): n for i, n in enumerate(OFFICIAL_AMOS_LABELS)}}
    for section, suffix, numbers in (("training", "Tr", training), ("validation", "Va", validation)):
        official[section] = []
        for number in numbers:
            name = f"amos_{number:04d}.nii.gz"
            write_nifti(amos / f"images{suffix}" / name, ct_volume(rng, shape))
            write_nifti(amos / f"labels{suffix}" / name, label_volume(15, shape))
            official[section].append({"image": f"./images{suffix}/{name}", "label": f"./labels{suffix}/{name}"})
    official["test"] = []
    (amos / "dataset.json").write_text(json.dumps(official))
    return root


@pytest.fixture
def amos_mini(tmp_path) -> Path:
    return make_amos(tmp_path / "src", training=(1,), validation=(8,))


def amos_label(src: Path) -> Path:
    return src / "amos22" / "labelsTr" / "amos_0001.nii.gz"


def amos_image(src: Path) -> Path:
    return src / "amos22" / "imagesTr" / "amos_0001.nii.gz"


def cut(path: Path, keep: float = 0.7) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- 1. truncated volumes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lits_mini(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lits_mini")
    rng = np.random.default_rng(4)
    for number in range(131):
        write_nifti(root / f"volume-{number}.nii", ct_volume(rng, (2, 3, 4)))
        write_nifti(root / f"segmentation-{number}.nii", label_volume(2, (2, 3, 4)))
    return root


@pytest.fixture(scope="module")
def synapse_mini(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synapse_mini")
    rng = np.random.default_rng(5)
    for number in list(range(1, 11)) + list(range(21, 41)):
        write_nifti(root / "img" / f"img{number:04d}.nii.gz", ct_volume(rng, (2, 4, 4)))
        write_nifti(root / "label" / f"label{number:04d}.nii.gz", label_volume(13, (2, 4, 4)))
    return root


def regzip_short(path: Path) -> None:
    """A complete, valid gzip stream whose NIfTI content lacks its last voxels."""
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content[:-20]))


@pytest.mark.parametrize(
    "converter, relative, damage",
    [
        ("amos-ct", "amos22/imagesTr/amos_0001.nii.gz", cut),  # copied byte for byte before
        ("amos-ct", "amos22/labelsTr/amos_0001.nii.gz", cut),
        ("amos-ct", "amos22/imagesTr/amos_0001.nii.gz", regzip_short),
        ("synapse8", "img/img0001.nii.gz", cut),
        ("synapse", "label/label0001.nii.gz", regzip_short),
        ("lits", "volume-0.nii", lambda path: cut(path, 0.9)),
        ("lits", "segmentation-0.nii", lambda path: cut(path, 0.95)),
    ],
)
def test_truncated_volume_stops_the_conversion_naming_the_file(
    converter, relative, damage, tmp_path, lits_mini, synapse_mini
):
    sources = {"lits": lits_mini, "synapse8": synapse_mini, "synapse": synapse_mini}
    src = tmp_path / "src"
    if converter in sources:
        shutil.copytree(sources[converter], src)
    else:
        make_amos(src)
    damage(src / relative)
    with pytest.raises(ConversionError, match=re.escape(f"{src / relative}: truncated")):
        convert(converter, src, 61, tmp_path / "raw", 1)
    assert_nothing_written(tmp_path / "raw")


def test_unreadable_skin_images_and_masks_give_one_line_errors(tmp_path, capsys):
    root = tmp_path / "ph2"
    cases = ("IMD002", "IMD003", "IMD004")
    for case in cases:
        write_rgb(root / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", fmt="BMP")
        write_mask(root / case / f"{case}_lesion" / f"{case}_lesion.bmp")
    argv = ["ph2", "--src", str(root), "-d", "62", "--out", str(tmp_path / "raw"), "-np", "1"]

    cut(root / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.bmp", 0.5)
    assert run_convert(argv) == 1
    assert "IMD002.bmp: cannot be read as an image" in one_line_error(capsys.readouterr().err)
    write_rgb(root / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.bmp", fmt="BMP")

    (root / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp").write_bytes(os.urandom(400))
    assert run_convert(argv) == 1
    assert "IMD003_lesion.bmp: cannot be read as a mask image" in one_line_error(capsys.readouterr().err)
    assert_nothing_written(tmp_path / "raw")

    isic = tmp_path / "isic"
    make_isic_part(isic, "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", [0])
    cut(isic / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", 0.6)
    with pytest.raises(ConversionError, match=r"ISIC_0000000_segmentation\.png: cannot be read as a mask image"):
        convert("isic2018", isic, 63, tmp_path / "raw", 1)


# --- 2. label geometry ----------------------------------------------------------------------------


def test_mirrored_label_with_equal_origin_and_spacing_is_refused(amos_mini, tmp_path):
    write_nifti(amos_label(amos_mini), label_volume(15, SHAPE), direction=X_FLIPPED)
    with pytest.raises(ConversionError) as raised:
        convert("amos-ct", amos_mini, 64, tmp_path / "raw", 1)
    message = str(raised.value)
    assert message.startswith(f"{amos_label(amos_mini)}: size 8x6x4")
    assert "direction (-1, 0, 0, 0, 1, 0, 0, 0, 1)" in message and f"its image {amos_image(amos_mini)}" in message
    assert "direction (1, 0, 0, 0, 1, 0, 0, 0, 1)" in message
    assert_nothing_written(tmp_path / "raw")


def test_label_on_another_spacing_is_refused_not_called_slightly_different(amos_mini, tmp_path):
    write_nifti(amos_label(amos_mini), label_volume(15, SHAPE), spacing_xyz=(2.0, 0.8, 3.0))
    with pytest.raises(ConversionError, match=r"amos_0001\.nii\.gz: .*spacing \(2, 0\.8, 3\).*spacing \(0\.8, 0\.8, 3\)"):
        convert("amos-ct", amos_mini, 65, tmp_path / "raw", 1)


def test_label_stored_with_permuted_and_flipped_axes_is_reoriented_exactly(amos_mini, tmp_path, capsys):
    import SimpleITK as sitk

    expected = label_volume(15, SHAPE)
    expected[3, 5, 7] = 9  # an asymmetric voxel far from the others
    write_nifti(amos_image(amos_mini), ct_volume(np.random.default_rng(0), SHAPE), spacing_xyz=(0.7, 0.8, 3.0),
                origin=(5.0, -7.0, 11.0))
    # x and y swapped, z reversed: label axis 0 runs along image y, axis 1 along x, axis 2 down z.
    stored = expected.transpose(0, 2, 1)[::-1]
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    write_nifti(amos_label(amos_mini), stored, spacing_xyz=(0.8, 0.7, 3.0), origin=(5.0, -7.0, 11.0 + 3 * 3.0),
                direction=direction)
    folder = convert("amos-ct", amos_mini, 66, tmp_path / "raw", 1)
    label = sitk.ReadImage(str(folder / "labelsTr" / "amos_0001.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
    image = sitk.ReadImage(str(folder / "imagesTr" / "amos_0001_0000.nii.gz"))
    assert (label.GetSpacing(), label.GetOrigin(), label.GetDirection()) == (
        image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert "amos_0001.nii.gz: stored in another axis order or direction" in capsys.readouterr().err


# --- 3. the split in nnUNet_preprocessed ----------------------------------------------------------


def test_existing_split_is_kept_without_overwrite_and_stale_plans_are_named(amos_mini, tmp_path, capsys):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    folder = pre / "Dataset067_AMOS2022CT"
    folder.mkdir(parents=True)
    mine = [{"train": ["amos_0008"], "val": ["amos_0001"]}]
    (folder / "splits_final.json").write_text(json.dumps(mine))
    with pytest.raises(ConversionError, match=rf"{folder / 'splits_final.json'} already exists.*--overwrite"):
        convert("amos-ct", amos_mini, 67, raw, 1, preprocessed_root=pre)
    assert json.loads((folder / "splits_final.json").read_text()) == mine
    assert_nothing_written(raw)

    (folder / "dataset_fingerprint.json").write_text("{}")
    (folder / "nnUNetPlans.json").write_text("{}")
    convert("amos-ct", amos_mini, 67, raw, 1, overwrite=True, preprocessed_root=pre)
    official = [{"train": ["amos_0001"], "val": ["amos_0008"]}]
    assert json.loads((folder / "splits_final.json").read_text()) == official
    err = capsys.readouterr().err
    assert f"{folder} still holds dataset_fingerprint.json, nnUNetPlans.json" in err
    assert "nnUNetv2_plan_and_preprocess -d 67 --clean" in err
    # The same split again replaces nothing, so it needs no --overwrite.
    convert("amos-ct", amos_mini, 67, tmp_path / "raw2", 1, preprocessed_root=pre)


# --- 4. output folders that cannot be written ------------------------------------------------------


def test_unwritable_preprocessed_root_is_refused_before_the_raw_dataset_is_written(amos_mini, tmp_path, capsys):
    blocker = tmp_path / "a_file"  # a folder that cannot be made (as a read-only mount, without needing one)
    blocker.write_text("")
    raw = tmp_path / "raw"
    argv = ["amos-ct", "--src", str(amos_mini), "-d", "71", "--out", str(raw), "-np", "1"]
    assert run_convert([*argv, "--preprocessed", str(blocker / "pre")]) == 1
    assert one_line_error(capsys.readouterr().err) == (
        f"error: cannot write to {blocker / 'pre' / 'Dataset071_AMOS2022CT'} (--preprocessed or "
        f"$nnUNet_preprocessed): {blocker}: Not a directory; nothing was written")
    assert_nothing_written(raw)
    # so the same command with a usable folder needs no --overwrite
    assert run_convert([*argv, "--preprocessed", str(tmp_path / "pre")]) == 0
    assert (tmp_path / "pre" / "Dataset071_AMOS2022CT" / "splits_final.json").is_file()


def _read_only_below(root: Path, monkeypatch) -> None:
    """Make every file or folder creation under ``root`` fail as on a read-only mount (root ignores chmod)."""
    import errno

    for name in ("open", "mkdir"):
        real = getattr(os, name)

        def refuse(path, *args, _real=real, **kwargs):
            if Path(os.fsdecode(path)).is_relative_to(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, refuse)


def test_read_only_out_is_one_line_naming_it(amos_mini, tmp_path, monkeypatch, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    _read_only_below(read_only, monkeypatch)
    assert run_convert(["amos-ct", "--src", str(amos_mini), "-d", "72", "--out", str(read_only), "-np", "1"]) == 1
    assert one_line_error(capsys.readouterr().err) == (
        f"error: cannot write to {read_only} (--out or $nnUNet_raw): {read_only}: Read-only file system; "
        f"nothing was written")
    monkeypatch.undo()
    assert_nothing_written(read_only)


def test_full_disk_is_one_line_naming_the_folder_and_removes_the_staging(amos_mini, tmp_path, monkeypatch, capsys):
    import errno

    def disk_full(source, destination, *args, **kwargs):  # as a real ENOSPC: no file name in the error
        Path(destination).write_bytes(b"\x1f\x8b")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    raw = tmp_path / "raw"
    monkeypatch.setattr(shutil, "copyfile", disk_full)
    assert run_convert(["amos-ct", "--src", str(amos_mini), "-d", "73", "--out", str(raw), "-np", "1"]) == 1
    assert one_line_error(capsys.readouterr().err) == (
        f"error: cannot write Dataset073_AMOS2022CT into {raw} (--out or $nnUNet_raw): No space left on device; "
        f"removed the unfinished output, nothing is left there")
    assert_nothing_written(raw)


def test_a_split_that_cannot_be_placed_after_all_says_the_raw_dataset_is_complete(amos_mini, tmp_path, monkeypatch,
                                                                                   capsys):
    import errno

    raw, pre = tmp_path / "raw", tmp_path / "pre"
    real_replace = os.replace

    def disk_full_in_pre(source, destination, *args, **kwargs):  # after the write test passed
        if Path(destination).is_relative_to(pre):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(source))
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full_in_pre)
    argv = ["amos-ct", "--src", str(amos_mini), "-d", "75", "--out", str(raw), "--preprocessed", str(pre), "-np", "1"]
    assert run_convert(argv) == 1
    folder = raw / "Dataset075_AMOS2022CT"
    assert one_line_error(capsys.readouterr().err) == (
        f"error: cannot write splits_final.json into {pre / folder.name}: No space left on device. The dataset "
        f"{folder} is complete (with its split); place the split by "
        f"hand: mkdir -p {pre / folder.name} && cp {folder / 'splits_final.json'} {pre / folder.name}/")
    assert json.loads((folder / "splits_final.json").read_text()) == [{"train": ["amos_0001"], "val": ["amos_0008"]}]
    assert list((pre / folder.name).iterdir()) == []  # no half-written split


def test_a_volume_written_short_is_an_error_not_a_dataset(amos_mini, tmp_path, monkeypatch, capsys):
    """SimpleITK's NIfTI writer meets a full disk with a printed line and a short file, no exception."""
    import SimpleITK as sitk

    real_write = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        cut(Path(path), 0.5)

    raw = tmp_path / "raw"
    monkeypatch.setattr(sitk, "WriteImage", short_write)
    assert run_convert(["amos-ct", "--src", str(amos_mini), "-d", "74", "--out", str(raw), "-np", "1"]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert error.startswith(f"error: cannot write Dataset074_AMOS2022CT into {raw} (--out or $nnUNet_raw): {raw}/")
    assert error.endswith("/labelsTr/amos_0001.nii.gz: written incomplete (is the disk full?); removed the "
                          "unfinished output, nothing is left there")
    assert_nothing_written(raw)


# --- 5. dataset ids used elsewhere -----------------------------------------------------------------


def test_dataset_id_used_in_preprocessed_is_refused(amos_mini, tmp_path):
    (tmp_path / "pre" / "Dataset068_Other").mkdir(parents=True)
    with pytest.raises(ConversionError, match=r"already used by .*pre/Dataset068_Other \(in nnUNet_preprocessed\)"):
        convert("amos-ct", amos_mini, 68, tmp_path / "raw", 1, preprocessed_root=tmp_path / "pre")
    assert_nothing_written(tmp_path / "raw")


def test_dataset_id_used_in_results_is_refused_by_the_command(amos_mini, tmp_path, monkeypatch, capsys):
    (tmp_path / "results" / "Dataset069_Other").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert run_convert(["amos-ct", "--src", str(amos_mini), "-d", "69", "--out", str(tmp_path / "raw")]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert f"{tmp_path / 'results' / 'Dataset069_Other'} (in nnUNet_results)" in error
    assert_nothing_written(tmp_path / "raw")


# --- 9/10. options and source files that cannot work ----------------------------------------------


def test_bad_options_name_the_option(amos_mini, tmp_path, capsys):
    base = ["--src", str(amos_mini), "-d", "70"]
    assert run_convert(["amos-ct", *base, "--out", str(tmp_path / "raw"), "--resize", "64", "64"]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert "--resize" in error and "amos-ct is 3D" in error
    for sizes in (["0", "0"], ["-5", "10"]):
        assert run_convert(["ph2", *base, "--out", str(tmp_path / "raw"), "--resize", *sizes]) == 1
        assert f"--resize {' '.join(sizes)}: give a positive" in one_line_error(capsys.readouterr().err)
    with pytest.raises(ConversionError, match="--resize"):
        SourceOptions(resize=(256, 0))
    a_file = tmp_path / "raw.txt"
    a_file.write_text("")
    assert run_convert(["amos-ct", *base, "--out", str(a_file)]) == 1
    assert f"{a_file} is a file, not a folder; --out" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{\"labels\": {", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (None, "training entry {'label': './labelsTr/amos_0001.nii.gz'} names no image file"),
    ],
)
def test_invalid_amos_dataset_json_names_the_file(amos_mini, tmp_path, capsys, content, expected):
    path = amos_mini / "amos22" / "dataset.json"
    if content is None:
        official = json.loads(path.read_text())
        official["training"][0].pop("image")
        content = json.dumps(official)
    path.write_text(content)
    assert run_convert(["amos-ct", "--src", str(amos_mini), "-d", "71", "--out", str(tmp_path / "raw")]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert error.startswith(f"error: {path}: ") and expected in error


# --- 6/7. interruptions and progress --------------------------------------------------------------


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_slow_conversion(src: Path, raw: Path, dataset_id: int) -> tuple[subprocess.Popen, Path, list[int]]:
    """`convert` with two workers and 1.5 s per case, stopped once the first case is written."""
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_preprocessed", "nnUNet_results")}
    env[CASE_DELAY_ENV] = "1.5"
    command = [sys.executable, "-m", "nnunet_mamba.cli", "convert", "amos-ct", "--src", str(src),
               "-d", str(dataset_id), "--out", str(raw), "-np", "2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def first_case_written():
        for staging in raw.glob(f".Dataset{dataset_id:03d}_*.partial-{process.pid}"):
            if any((staging / "imagesTr").glob("*.nii.gz")):
                return staging
        assert process.poll() is None, process.communicate()
        return None

    staging = wait_until(first_case_written, 60, "the first converted case")
    workers = [pid for pid in children_of(process.pid) if running(pid)]
    assert len(workers) >= 2
    return process, staging, workers


@pytest.fixture
def amos_six(tmp_path) -> Path:
    return make_amos(tmp_path / "src6", training=(1, 2, 3, 4, 5, 6), shape=(2, 4, 4))


def test_sigterm_removes_the_staging_folder_and_the_workers(amos_six, tmp_path):
    raw = tmp_path / "raw"
    process, staging, workers = start_slow_conversion(amos_six, raw, 72)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert f"stopped by SIGTERM; removed the unfinished output {staging}" in stderr
    assert "Traceback" not in stderr
    assert not staging.exists() and list(raw.iterdir()) == []
    wait_until(lambda: not any(running(pid) for pid in workers), 10, "the workers to exit")


def test_sigkill_workers_exit_and_the_next_run_sweeps_the_staging_folder(amos_six, tmp_path, capsys):
    raw = tmp_path / "raw"
    process, staging, workers = start_slow_conversion(amos_six, raw, 73)
    process.kill()
    process.communicate(timeout=30)
    wait_until(lambda: not any(running(pid) for pid in workers), 10, "the orphaned workers to exit")
    assert staging.exists()
    folder = convert("amos-ct", amos_six, 73, raw, 1)
    assert f"removed {staging}, left by a conversion (process {process.pid}) that was killed" in capsys.readouterr().err
    assert sorted(p.name for p in raw.iterdir()) == [folder.name]


def test_sweep_keeps_staging_folders_of_live_processes_and_other_hosts(amos_mini, tmp_path, capsys):
    raw = tmp_path / "raw"
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = raw / f".Dataset099_Other.partial-{os.getppid()}"
    foreign = raw / f".Dataset098_Other.partial-{dead.pid}"
    stale = raw / f".Dataset097_Other.partial-{dead.pid}"
    for folder in (live, foreign, stale):
        (folder / "imagesTr").mkdir(parents=True)
    (foreign / ".nnunet-mamba-staging-owner").write_text("another-host\n")
    convert("amos-ct", amos_mini, 74, raw, 1)
    assert live.exists() and foreign.exists() and not stale.exists()
    err = capsys.readouterr().err
    assert f"removed {stale}" in err and str(live) not in err and str(foreign) not in err


def test_progress_advances_per_case(amos_six, tmp_path, monkeypatch):
    import tqdm

    updates: list[float] = []

    class RecordingBar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            updates.append(time.monotonic())

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    monkeypatch.setenv(CASE_DELAY_ENV, "0.4")
    convert("amos-ct", amos_six, 75, tmp_path / "raw", 2)
    assert len(updates) == 6
    # Two workers, 0.4 s per case: the bar moves three times over about 0.8 s, not once at the end.
    assert updates[-1] - updates[0] > 0.5


def test_a_pool_whose_terminate_hangs_does_not_hide_the_error(monkeypatch):
    """CPython's Pool.terminate can block for ever joining its task-feeding thread; the first error must
    still reach the user after a bounded wait."""
    import threading

    from nnunet_mamba import parallel

    monkeypatch.setattr(parallel, "_TERMINATE_WAIT_SECONDS", 0.2)
    terminated = threading.Event()

    class StuckPool:
        def terminate(self):
            terminated.set()
            threading.Event().wait()  # never returns

    start = time.monotonic()
    parallel._terminate(StuckPool())
    assert terminated.is_set()
    assert time.monotonic() - start < 5
