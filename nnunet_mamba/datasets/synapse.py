"""Synapse multi-organ CT (MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault", BTCV).

Source layout: ``RawData/Training/img/img00NN.nii.gz`` and ``RawData/Training/label/label00NN.nii.gz``
for the 30 labelled cases, optionally ``RawData/Testing/img/img00NN.nii.gz`` (unlabelled).

All 30 labelled cases go to ``imagesTr``; the TransUNet train/test split is fold 0 of
``splits_final.json`` (train = 18 cases, val = the 12 test cases), so ``nnUNetv2_train ... 0`` trains
on the paper's training set and its validation predictions are the paper's test set.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import organs
from .common import CaseJob, ConversionError, DatasetPlan, SourceOptions, identity_label_map, require_directory

LABELLED_CASE_NUMBERS = tuple(range(1, 11)) + tuple(range(21, 41))
TRANSUNET_TEST_CASE_NUMBERS = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)

# Official BTCV label values 1..13.
SYNAPSE13_LABELS = (
    organs.SPLEEN,
    organs.KIDNEY_RIGHT,
    organs.KIDNEY_LEFT,
    organs.GALLBLADDER,
    organs.ESOPHAGUS,
    organs.LIVER,
    organs.STOMACH,
    organs.AORTA,
    organs.INFERIOR_VENA_CAVA,
    organs.PORTAL_SPLENIC_VEIN,
    organs.PANCREAS,
    organs.ADRENAL_GLAND_RIGHT,
    organs.ADRENAL_GLAND_LEFT,
)

# The 8-organ protocol of TransUNet and its successors, in the column order of their tables;
# the new label value is the position + 1.
SYNAPSE8_ORGANS = (
    organs.AORTA,
    organs.GALLBLADDER,
    organs.KIDNEY_LEFT,
    organs.KIDNEY_RIGHT,
    organs.LIVER,
    organs.PANCREAS,
    organs.SPLEEN,
    organs.STOMACH,
)


def case_identifier(number: int) -> str:
    return f"synapse_{number:04d}"


def transunet_split() -> list[dict[str, list[str]]]:
    test = [case_identifier(n) for n in TRANSUNET_TEST_CASE_NUMBERS]
    train = [case_identifier(n) for n in LABELLED_CASE_NUMBERS if n not in TRANSUNET_TEST_CASE_NUMBERS]
    return [{"train": train, "val": test}]


def synapse8_label_map() -> dict[int, int]:
    official = {name: value for value, name in enumerate(SYNAPSE13_LABELS, start=1)}
    mapping = {value: 0 for value in range(len(SYNAPSE13_LABELS) + 1)}
    for new_value, name in enumerate(SYNAPSE8_ORGANS, start=1):
        mapping[official[name]] = new_value
    return mapping


def _training_folder(src: Path) -> Path:
    for candidate in (src / "RawData" / "Training", src / "Training", src):
        if (candidate / "img").is_dir() or (candidate / "label").is_dir():
            return candidate
    raise ConversionError(f"missing folder: {src / 'RawData' / 'Training' / 'img'}")


def _plan(src: Path, options: SourceOptions, name: str, labels: tuple[str, ...], label_map: dict[int, int]) -> DatasetPlan:
    training = _training_folder(src)
    image_folder = require_directory(training / "img")
    label_folder = require_directory(training / "label")
    cases = [
        CaseJob(
            identifier=case_identifier(number),
            subset="Tr",
            kind="volume",
            image=image_folder / f"img{number:04d}.nii.gz",
            label=label_folder / f"label{number:04d}.nii.gz",
            label_map=label_map,
        )
        for number in LABELLED_CASE_NUMBERS
    ]
    testing = training.parent / "Testing" / "img"
    if options.include_unlabelled_test and testing.is_dir():
        for path in sorted(testing.glob("img*.nii.gz")):
            match = re.fullmatch(r"img(\d+)\.nii\.gz", path.name)
            if match:
                cases.append(CaseJob(case_identifier(int(match.group(1))), "Ts", "volume", path, None))
    return DatasetPlan(
        name=name,
        channel_names={"0": "CT"},
        labels={"background": 0, **{organ: value for value, organ in enumerate(labels, start=1)}},
        file_ending=".nii.gz",
        cases=cases,
        splits=transunet_split(),
        description="Synapse multi-organ CT (BTCV); fold 0 = TransUNet split (18 train / 12 test)",
    )


def plan_synapse13(src: Path, options: SourceOptions) -> DatasetPlan:
    return _plan(src, options, "Synapse", SYNAPSE13_LABELS, identity_label_map(len(SYNAPSE13_LABELS) + 1))


def plan_synapse8(src: Path, options: SourceOptions) -> DatasetPlan:
    return _plan(src, options, "Synapse8", SYNAPSE8_ORGANS, synapse8_label_map())
