"""Converters on tiny fake source trees laid out like the official downloads."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_mamba.datasets import CONVERTERS, ConversionError, SourceOptions, convert
from support import (
    OFFICIAL_AMOS_LABELS,
    SPACING_XYZ,
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


def read_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def verify(folder: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)


def dataset_json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def case_ids(folder: Path, subset: str) -> list[str]:
    ending = dataset_json(folder)["file_ending"]
    return sorted(p.name[: -len("_0000" + ending)] for p in (folder / f"images{subset}").iterdir())


# --- Synapse -------------------------------------------------------------------------------------

SYNAPSE_CASES = list(range(1, 11)) + list(range(21, 41))


@pytest.fixture(scope="module")
def synapse_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synapse")
    rng = np.random.default_rng(0)
    training = root / "RawData" / "Training"
    for number in SYNAPSE_CASES:
        write_nifti(training / "img" / f"img{number:04d}.nii.gz", ct_volume(rng))
        write_nifti(training / "label" / f"label{number:04d}.nii.gz", label_volume(13))
    for number in (61, 62):
        write_nifti(root / "RawData" / "Testing" / "img" / f"img{number:04d}.nii.gz", ct_volume(rng))
    return root


TRANSUNET_TEST = ["synapse_0001", "synapse_0002", "synapse_0003", "synapse_0004", "synapse_0008", "synapse_0022",
                  "synapse_0025", "synapse_0029", "synapse_0032", "synapse_0035", "synapse_0036", "synapse_0038"]


def test_synapse13_keeps_labels_and_places_the_transunet_split(synapse_src, tmp_path):
    folder = convert("synapse", synapse_src, 11, tmp_path / "raw", 2, preprocessed_root=tmp_path / "pre")
    assert folder.name == "Dataset011_Synapse"
    verify(folder)
    assert len(case_ids(folder, "Tr")) == 30 and case_ids(folder, "Ts") == ["synapse_0061", "synapse_0062"]
    assert dataset_json(folder)["labels"]["aorta"] == 8 and len(dataset_json(folder)["labels"]) == 14
    np.testing.assert_array_equal(read_array(folder / "labelsTr" / "synapse_0021.nii.gz"), label_volume(13))
    split = json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text())
    assert len(split) == 1 and sorted(split[0]["val"]) == TRANSUNET_TEST
    assert len(split[0]["train"]) == 18 and not set(split[0]["train"]) & set(TRANSUNET_TEST)
    assert (folder / "splits_final.json").read_text() == (tmp_path / "pre" / folder.name / "splits_final.json").read_text()


def test_synapse8_remaps_labels_and_passes_nnunet_fingerprinting(synapse_src, tmp_path):
    raw, pre, results = tmp_path / "raw", tmp_path / "pre", tmp_path / "results"
    folder = convert("synapse8", synapse_src, 12, raw, 2, preprocessed_root=pre)
    labels = dataset_json(folder)["labels"]
    assert list(labels) == ["background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver",
                            "pancreas", "spleen", "stomach"]
    converted = read_array(folder / "labelsTr" / "synapse_0001.nii.gz").reshape(-1)[:14]
    # source value v (0..13) -> 8-organ value
    expected = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
    assert converted.tolist() == [expected.get(v, 0) for v in range(14)]

    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results)}
    command = [str(Path(sys.executable).with_name("nnUNetv2_extract_fingerprint")), "-d", "12",
               "--verify_dataset_integrity", "-np", "1"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert (pre / folder.name / "dataset_fingerprint.json").is_file()
    assert (pre / folder.name / "splits_final.json").is_file()


def test_synapse_missing_label_names_the_file_and_writes_nothing(synapse_src, tmp_path):
    broken = tmp_path / "src"
    shutil.copytree(synapse_src, broken)
    (broken / "RawData" / "Training" / "label" / "label0022.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"label0022\.nii\.gz"):
        convert("synapse", broken, 13, tmp_path / "raw", 1)
    assert_nothing_written(tmp_path / "raw")


def test_existing_dataset_and_clashing_ids_are_refused(synapse_src, tmp_path):
    raw = tmp_path / "raw"
    convert("synapse8", synapse_src, 14, raw, 2, options=SourceOptions(include_unlabelled_test=False))
    with pytest.raises(ConversionError, match="already exists"):
        convert("synapse8", synapse_src, 14, raw, 2)
    with pytest.raises(ConversionError, match="already used"):
        convert("synapse", synapse_src, 14, raw, 2)
    folder = convert("synapse8", synapse_src, 14, raw, 2, overwrite=True)
    assert case_ids(folder, "Ts") == ["synapse_0061", "synapse_0062"]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset014_Synapse8"]


# --- AMOS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amos_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("amos")
    amos = root / "amos22"
    rng = np.random.default_rng(1)
    sections = {"training": ("Tr", [1, 5, 507]), "validation": ("Va", [8, 510]), "test": ("Ts", [2, 512])}
    official = {"name": "AMOS", "labels": {str(i): n for i, n in enumerate(OFFICIAL_AMOS_LABELS)}}
    for section, (suffix, numbers) in sections.items():
        official[section] = []
        for number in numbers:
            name = f"amos_{number:04d}.nii.gz"
            write_nifti(amos / f"images{suffix}" / name, ct_volume(rng))
            entry = {"image": f"./images{suffix}/{name}"}
            if suffix != "Ts":
                write_nifti(amos / f"labels{suffix}" / name, label_volume(15))
                entry["label"] = f"./labels{suffix}/{name}"
            official[section].append(entry)
    (amos / "dataset.json").write_text(json.dumps(official))
    return root


def test_amos_ct_keeps_only_ct_and_names_labels_correctly(amos_src, tmp_path):
    folder = convert("amos-ct", amos_src, 21, tmp_path / "raw", 2, preprocessed_root=tmp_path / "pre")
    verify(folder)
    content = dataset_json(folder)
    assert content["channel_names"] == {"0": "CT"}
    assert content["labels"]["aorta"] == 8 and content["labels"]["inferior_vena_cava"] == 9
    assert "arota" not in content["labels"] and content["labels"]["prostate_uterus"] == 15
    assert case_ids(folder, "Tr") == ["amos_0001", "amos_0005", "amos_0008"]
    assert case_ids(folder, "Ts") == ["amos_0002"]
    split = json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text())
    assert split == [{"train": ["amos_0001", "amos_0005"], "val": ["amos_0008"]}]


def test_amos_ctmr_adds_mri_with_per_image_normalisation(amos_src, tmp_path):
    folder = convert("amos-ctmr", amos_src / "amos22", 22, tmp_path / "raw", 2)
    verify(folder)
    assert dataset_json(folder)["channel_names"] == {"0": "zscore"}
    assert case_ids(folder, "Tr") == ["amos_0001", "amos_0005", "amos_0008", "amos_0507", "amos_0510"]
    assert case_ids(folder, "Ts") == ["amos_0002", "amos_0512"]
    split = json.loads((folder / "splits_final.json").read_text())
    assert split[0]["val"] == ["amos_0008", "amos_0510"]


def test_amos_unexpected_label_value_names_the_file(amos_src, tmp_path):
    broken = tmp_path / "src"
    shutil.copytree(amos_src, broken)
    bad = label_volume(15)
    bad[0, 0, 0] = 16
    write_nifti(broken / "amos22" / "labelsVa" / "amos_0008.nii.gz", bad)
    with pytest.raises(ConversionError, match=r"labelsVa/amos_0008\.nii\.gz.*16"):
        convert("amos-ct", broken, 23, tmp_path / "raw", 2)
    assert_nothing_written(tmp_path / "raw")


# --- LiTS ----------------------------------------------------------------------------------------


LITS_ORIGIN = (-150.0, -120.0, -300.0)


@pytest.fixture(scope="module")
def lits_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lits")
    rng = np.random.default_rng(2)
    for number in range(131):
        batch = root / ("Training Batch 1" if number < 28 else "Training Batch 2")
        write_nifti(batch / f"volume-{number}.nii", ct_volume(rng, (4, 6, 6)), origin=LITS_ORIGIN)
        labels, origin, direction = label_volume(2, (4, 6, 6)), LITS_ORIGIN, None
        if number == 3:  # a header that drifts within nnU-Net's tolerance: the image's is written
            origin = (LITS_ORIGIN[0], LITS_ORIGIN[1], LITS_ORIGIN[2] + 1e-4)
        if number == 4:  # the same voxels stored with the x axis reversed: reoriented, not mirrored
            labels = labels[:, :, ::-1]
            origin = (LITS_ORIGIN[0] + 5 * SPACING_XYZ[0], LITS_ORIGIN[1], LITS_ORIGIN[2])
            direction = X_FLIPPED
        write_nifti(batch / f"segmentation-{number}.nii", labels, origin=origin, direction=direction)
    write_nifti(root / "Test" / "test-volume-0.nii", ct_volume(rng, (4, 6, 6)), origin=LITS_ORIGIN)
    return root


def test_lits_converts_all_cases_with_the_fixed_seeded_split(lits_src, tmp_path):
    from nnunet_mamba.datasets import lits

    folder = convert("lits", lits_src, 31, tmp_path / "raw", 2)
    verify(folder)
    assert dataset_json(folder)["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert len(case_ids(folder, "Tr")) == 131 and case_ids(folder, "Ts") == ["lits_test_000"]
    split = json.loads((folder / "splits_final.json").read_text())[0]
    assert len(split["train"]) == 105 and len(split["val"]) == 26
    assert split["val"] == [f"lits_{n:03d}" for n in lits.TEST_CASE_NUMBERS]
    drawn = np.random.default_rng(lits.SPLIT_SEED).permutation(131)[: round(131 * lits.TEST_FRACTION)]
    assert sorted(drawn.tolist()) == list(lits.TEST_CASE_NUMBERS)
    import SimpleITK as sitk

    for case in ("lits_003", "lits_004"):
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        assert (label.GetOrigin(), label.GetDirection()) == (image.GetOrigin(), image.GetDirection())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), label_volume(2, (4, 6, 6)))


def test_lits_unexpected_label_and_size_mismatch(lits_src, tmp_path):
    broken = tmp_path / "src"
    shutil.copytree(lits_src, broken)
    bad = label_volume(2, (4, 6, 6))
    bad[1, 1, 1] = 3
    write_nifti(broken / "Training Batch 1" / "segmentation-5.nii", bad, origin=LITS_ORIGIN)
    with pytest.raises(ConversionError, match=r"segmentation-5\.nii.*\[3\]"):
        convert("lits", broken, 32, tmp_path / "raw", 2)
    write_nifti(broken / "Training Batch 1" / "segmentation-5.nii", label_volume(2, (4, 6, 7)), origin=LITS_ORIGIN)
    with pytest.raises(ConversionError, match=r"segmentation-5\.nii: size"):
        convert("lits", broken, 32, tmp_path / "raw", 1)
    assert_nothing_written(tmp_path / "raw")


# --- ISIC and PH2 --------------------------------------------------------------------------------


@pytest.fixture
def isic2017_src(tmp_path) -> Path:
    root = tmp_path / "isic2017"
    make_isic_part(root, "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", [0, 1, 3], True)
    (root / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age\n")
    make_isic_part(root, "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth", [10], True)
    make_isic_part(root, "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth", [20, 21], True)
    return root


def test_isic2017_skips_superpixels_writes_rgb_png_and_binary_masks(isic2017_src, tmp_path):
    from PIL import Image

    folder = convert("isic2017", isic2017_src, 41, tmp_path / "raw", 2, preprocessed_root=tmp_path / "pre")
    verify(folder)
    content = dataset_json(folder)
    assert content["file_ending"] == ".png" and content["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    names = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert names == [f"ISIC_{c:07d}_0000.png" for c in (0, 1, 3, 10, 20, 21)]
    with Image.open(folder / "imagesTr" / "ISIC_0000000_0000.png") as image:
        assert image.mode == "RGB" and image.size == (20, 16)
    mask = np.asarray(Image.open(folder / "labelsTr" / "ISIC_0000000.png"))
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 60
    split = json.loads((tmp_path / "pre" / folder.name / "splits_final.json").read_text())
    assert split == [{"train": ["ISIC_0000000", "ISIC_0000001", "ISIC_0000003", "ISIC_0000010"],
                      "val": ["ISIC_0000020", "ISIC_0000021"]}]


def test_isic2018_unlabelled_test_goes_to_imagests_and_resize(tmp_path):
    from PIL import Image

    root = tmp_path / "isic2018" / "download"  # one level of nesting, as an unzip leaves it
    make_isic_part(root, "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", [0, 1])
    make_isic_part(root, "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth", [5])
    make_isic_part(root, "ISIC2018_Task1-2_Test_Input", None, [7])
    folder = convert("isic2018", tmp_path / "isic2018", 42, tmp_path / "raw", 1, options=SourceOptions(resize=(8, 10)))
    verify(folder)
    assert case_ids(folder, "Tr") == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000005"]
    assert case_ids(folder, "Ts") == ["ISIC_0000007"]
    assert json.loads((folder / "splits_final.json").read_text())[0]["val"] == ["ISIC_0000005"]
    with Image.open(folder / "labelsTr" / "ISIC_0000001.png") as mask:
        assert mask.size == (10, 8)


def test_isic_mask_size_mismatch_and_bad_values_name_the_file(isic2017_src, tmp_path):
    mask_folder = isic2017_src / "ISIC-2017_Training_Part1_GroundTruth"
    write_mask(mask_folder / "ISIC_0000001_segmentation.png", size=(21, 16))
    with pytest.raises(ConversionError, match=r"ISIC_0000001_segmentation\.png: size 21x16"):
        convert("isic2017", isic2017_src, 43, tmp_path / "raw", 2)
    write_mask(mask_folder / "ISIC_0000001_segmentation.png", value=128)
    with pytest.raises(ConversionError, match=r"ISIC_0000001_segmentation\.png: unexpected label value\(s\) \[128\]"):
        convert("isic2017", isic2017_src, 43, tmp_path / "raw", 2)
    (mask_folder / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(ConversionError, match=r"missing file: .*ISIC_0000001_segmentation\.png"):
        convert("isic2017", isic2017_src, 43, tmp_path / "raw", 2)
    assert_nothing_written(tmp_path / "raw")


@pytest.fixture
def ph2_src(tmp_path) -> Path:
    root = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    for case in ("IMD002", "IMD003", "IMD004"):
        write_rgb(root / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", fmt="BMP")
        write_mask(root / case / f"{case}_lesion" / f"{case}_lesion.bmp")
        write_rgb(root / case / f"{case}_roi" / f"{case}_R1_Label4.bmp", fmt="BMP")
    return tmp_path / "PH2Dataset"


def test_ph2_command_converts_bmp_cases(ph2_src, tmp_path, capsys):
    assert run_convert(["ph2", "--src", str(ph2_src), "-d", "51", "--out", str(tmp_path / "raw")]) == 0
    folder = tmp_path / "raw" / "Dataset051_PH2"
    verify(folder)
    assert case_ids(folder, "Tr") == ["IMD002", "IMD003", "IMD004"]
    assert not (folder / "splits_final.json").exists()
    assert "wrote" in capsys.readouterr().out


def test_ph2_missing_lesion_fails_the_command_with_the_file_name(ph2_src, tmp_path, capsys):
    (ph2_src / "PH2 Dataset images" / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp").unlink()
    assert run_convert(["ph2", "--src", str(ph2_src), "-d", "52", "--out", str(tmp_path / "raw")]) == 1
    assert "IMD003_lesion.bmp" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "raw")


def test_registry_names():
    assert list(CONVERTERS) == ["synapse", "synapse8", "amos-ct", "amos-ctmr", "lits", "isic2017", "isic2018", "ph2"]
