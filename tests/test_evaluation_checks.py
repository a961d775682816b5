"""`evaluate` must refuse (or flag) inputs that would give wrong numbers, naming the file or option."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from support import X_FLIPPED, run_evaluate

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SPACING_XYZ = (0.8, 0.9, 2.5)


def write_labels(path, array, origin=(0.0, 0.0, 0.0), direction=IDENTITY, spacing=SPACING_XYZ):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def reference() -> np.ndarray:
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1:3, 1:4, 0:3] = 1  # on the low-x side only: a mirrored copy does not overlap it
    return labels


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    write_labels(ref_dir / "case_1.nii.gz", reference())
    write_labels(pred_dir / "case_1.nii.gz", reference())
    (pred_dir / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    return pred_dir, ref_dir


def evaluate(pred_dir, ref_dir, *extra):
    return run_evaluate(["--pred", str(pred_dir), "--ref", str(ref_dir), "-np", "1", "--no-plot", *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def dice(pred_dir) -> float:
    report = json.loads((pred_dir / "evaluation_nnunet" / "metrics.json").read_text())
    return report["summary"]["per_class"]["liver"]["dice"]["mean"]


def test_truncated_or_unreadable_prediction_is_an_error_naming_it(folders, capsys):
    pred_dir, ref_dir = folders
    prediction = pred_dir / "case_1.nii.gz"
    data = prediction.read_bytes()
    prediction.write_bytes(data[: len(data) * 2 // 3])
    assert evaluate(pred_dir, ref_dir) == 1
    assert f"{prediction}: truncated" in error_line(capsys)
    prediction.unlink()
    (pred_dir / "case_1.mha").write_bytes(os.urandom(300))
    assert evaluate(pred_dir, ref_dir) == 1
    assert f"{pred_dir / 'case_1.mha'}: cannot be read as a segmentation" in error_line(capsys)


def test_mirrored_prediction_is_refused_and_a_reoriented_one_is_aligned(folders, capsys):
    pred_dir, ref_dir = folders
    write_labels(pred_dir / "case_1.nii.gz", reference(), direction=X_FLIPPED)  # same voxels, mirrored in space
    assert evaluate(pred_dir, ref_dir) == 1
    error = error_line(capsys)
    assert f"{pred_dir / 'case_1.nii.gz'}: size 8x6x4" in error and f"reference {ref_dir / 'case_1.nii.gz'}" in error
    # The same segmentation stored with the x axis reversed lies where the reference does: Dice 1.
    write_labels(pred_dir / "case_1.nii.gz", reference()[:, :, ::-1], origin=(7 * 0.8, 0.0, 0.0), direction=X_FLIPPED)
    assert evaluate(pred_dir, ref_dir) == 0
    assert "reoriented onto it" in capsys.readouterr().err
    assert dice(pred_dir) == 1.0


def test_prediction_on_another_spacing_is_refused(folders, capsys):
    pred_dir, ref_dir = folders
    write_labels(pred_dir / "case_1.nii.gz", reference(), spacing=(2.0, 0.9, 2.5))
    assert evaluate(pred_dir, ref_dir) == 1
    assert "spacing (2, 0.9, 2.5)" in error_line(capsys)


def test_label_values_outside_dataset_json_are_an_error(tmp_path, capsys):
    from PIL import Image

    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 1
    Image.fromarray(mask).save(ref_dir / "ISIC_0000001.png")
    Image.fromarray(mask * 255).save(pred_dir / "ISIC_0000001.png")  # a 0/255 mask scored 0 before
    assert evaluate(pred_dir, ref_dir, "--protocol", "isic") == 1
    error = error_line(capsys)
    assert f"{pred_dir / 'ISIC_0000001.png'}: label value(s) [255]" in error and "0/255" in error
    (ref_dir.parent / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    assert evaluate(pred_dir, ref_dir, "--protocol", "isic") == 1
    assert f"the labels of {ref_dir.parent / 'dataset.json'}" in error_line(capsys)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
@pytest.mark.parametrize("role, name", [("pred", "case_1.nii.gz"), ("ref", "case_1.nii.gz"), ("pred", "case_1.nrrd")])
def test_non_finite_voxels_are_refused_naming_the_file(folders, capsys, bad_value, role, name):
    import SimpleITK as sitk

    pred_dir, ref_dir = folders
    folder = pred_dir if role == "pred" else ref_dir
    (folder / "case_1.nii.gz").unlink()
    labels = reference().astype(np.float32)
    labels[0, 0, 7] = bad_value  # in the background; SimpleITK reads a NIfTI NaN as 0, so it scored as background
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(folder / name))
    assert evaluate(pred_dir, ref_dir) == 1
    assert error_line(capsys) == (
        f"error: {folder / name}: 1 voxel(s) are NaN or infinite, which is no label value; a segmentation "
        f"holds the integer labels of dataset.json: write it again from the network's output (argmax)")
    assert not (pred_dir / "evaluation_nnunet").exists()


def test_unknown_prediction_labels_without_dataset_json_are_flagged(folders, capsys):
    pred_dir, ref_dir = folders
    (pred_dir / "dataset.json").unlink()
    labels = reference()
    labels[0, 0, 7] = 5
    write_labels(pred_dir / "case_1.nii.gz", labels)
    assert evaluate(pred_dir, ref_dir) == 0
    assert f"{pred_dir / 'case_1.nii.gz'}: label value(s) [5]" in capsys.readouterr().err


def test_two_files_of_one_case_are_an_error(folders, capsys):
    pred_dir, ref_dir = folders
    write_labels(pred_dir / "case_1.nrrd", reference())
    assert evaluate(pred_dir, ref_dir) == 1
    error = error_line(capsys)
    assert str(pred_dir / "case_1.nii.gz") in error and str(pred_dir / "case_1.nrrd") in error


def test_missing_or_invalid_dataset_json_is_named(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    missing = tmp_path / "nowhere" / "dataset.json"
    assert evaluate(pred_dir, ref_dir, "--dataset-json", str(missing)) == 1
    assert f"--dataset-json {missing}: no such file" in error_line(capsys)
    (pred_dir / "dataset.json").write_text("{\"labels\": ")
    assert evaluate(pred_dir, ref_dir) == 1
    assert f"{pred_dir / 'dataset.json'}: cannot be read as JSON" in error_line(capsys)


def test_misspelt_nsd_tolerance_class_is_an_error(folders, capsys):
    pred_dir, ref_dir = folders
    assert evaluate(pred_dir, ref_dir, "--nsd-tolerance", "livr=3") == 1
    error = error_line(capsys)
    assert "--nsd-tolerance livr=3" in error and "liver" in error
    assert evaluate(pred_dir, ref_dir, "--nsd-tolerance", "liver=3", "--nsd-tolerance", "default=1") == 0


def test_out_pointing_at_a_file_is_an_error(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    a_file = tmp_path / "metrics.txt"
    a_file.write_text("")
    assert evaluate(pred_dir, ref_dir, "--out", str(a_file)) == 1
    assert f"--out {a_file} is a file" in error_line(capsys)
