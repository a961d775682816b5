"""Dermoscopy lesion segmentation: ISIC 2017, ISIC 2018 (task 1) and PH2.

ISIC parts are found by their official folder names anywhere up to two levels under ``--src``:

============  ======================================  ==========================================
part          images (``ISIC_XXXXXXX.jpg``)            masks (``ISIC_XXXXXXX_segmentation.png``)
============  ======================================  ==========================================
2017 train    ``ISIC-2017_Training_Data``              ``ISIC-2017_Training_Part1_GroundTruth``
2017 val      ``ISIC-2017_Validation_Data``            ``ISIC-2017_Validation_Part1_GroundTruth``
2017 test     ``ISIC-2017_Test_v2_Data``               ``ISIC-2017_Test_v2_Part1_GroundTruth``
2018 train    ``ISIC2018_Task1-2_Training_Input``      ``ISIC2018_Task1_Training_GroundTruth``
2018 val      ``ISIC2018_Task1-2_Validation_Input``    ``ISIC2018_Task1_Validation_GroundTruth``
2018 test     ``ISIC2018_Task1-2_Test_Input``          ``ISIC2018_Task1_Test_GroundTruth``
============  ======================================  ==========================================

The training part is required; validation and test are used when present. Every labelled case goes
to ``imagesTr``. Fold 0 of ``splits_final.json`` validates on the official test part when its masks
are there (training on training + validation), otherwise on the validation part. Parts without masks
go to ``imagesTs``. The ISIC 2017 image folders also hold ``*_superpixels.png`` files; they are not
images of the task and are skipped.

PH2: ``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` with ``IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp``.
It is an external test set: all 200 cases go to ``imagesTr`` with no split, so a model trained on
ISIC is applied to ``imagesTr`` and compared with ``labelsTr``.

Images become one RGB PNG per case (nnU-Net refuses lossy JPEG); masks map 255 -> 1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import organs
from .common import CaseJob, ConversionError, DatasetPlan, SourceOptions, find_directory

MASK_LABEL_MAP = {0: 0, 255: 1}
RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}
SKIN_LABELS = {"background": 0, organs.LESION: 1}
ISIC_IMAGE_NAME = re.compile(r"ISIC_\d{7}\.jpg", re.IGNORECASE)


@dataclass(frozen=True)
class IsicPart:
    name: str
    images: str  # folder-name pattern
    masks: str
    required: bool = False


ISIC2017_PARTS = (
    IsicPart("training", r"ISIC-2017_Training_Data", r"ISIC-2017_Training_Part1_GroundTruth", required=True),
    IsicPart("validation", r"ISIC-2017_Validation_Data", r"ISIC-2017_Validation_Part1_GroundTruth"),
    IsicPart("test", r"ISIC-2017_Test_v2_Data", r"ISIC-2017_Test_v2_Part1_GroundTruth"),
)
ISIC2018_PARTS = (
    IsicPart("training", r"ISIC2018_Task1-2_Training_Input", r"ISIC2018_Task1_Training_GroundTruth", required=True),
    IsicPart("validation", r"ISIC2018_Task1-2_Validation_Input", r"ISIC2018_Task1_Validation_GroundTruth"),
    IsicPart("test", r"ISIC2018_Task1-2_Test_Input", r"ISIC2018_Task1_Test_GroundTruth"),
)


def _rgb_case(identifier: str, subset: str, image: Path, label: Path | None, options: SourceOptions) -> CaseJob:
    return CaseJob(identifier, subset, "rgb", image, label, MASK_LABEL_MAP if label else None, options.resize)


def _isic_part_cases(src: Path, part: IsicPart, options: SourceOptions) -> list[CaseJob] | None:
    image_folder = find_directory(src, part.images, required=part.required)
    if image_folder is None:
        return None
    mask_folder = find_directory(src, part.masks, required=False)
    images = sorted(p for p in image_folder.iterdir() if ISIC_IMAGE_NAME.fullmatch(p.name))
    if not images:
        raise ConversionError(f"no ISIC_XXXXXXX.jpg image in {image_folder}")
    cases = []
    for image in images:
        identifier = image.stem
        mask = mask_folder / f"{identifier}_segmentation.png" if mask_folder else None
        cases.append(_rgb_case(identifier, "Tr" if mask else "Ts", image, mask, options))
    if mask_folder is not None:
        # A mask without its image means the download is incomplete, just like the reverse.
        known = {image.stem for image in images}
        for mask in sorted(mask_folder.glob("*_segmentation.png")):
            if mask.name.removesuffix("_segmentation.png") not in known:
                raise ConversionError(f"missing file: {image_folder / mask.name.replace('_segmentation.png', '.jpg')}")
    return cases


def _plan_isic(src: Path, options: SourceOptions, name: str, parts: tuple[IsicPart, ...]) -> DatasetPlan:
    cases_by_part = {part.name: _isic_part_cases(src, part, options) for part in parts}
    labelled = {
        part: [c.identifier for c in cases if c.subset == "Tr"]
        for part, cases in cases_by_part.items()
        if cases and cases[0].subset == "Tr"
    }
    if "test" in labelled:
        splits = [{"train": labelled["training"] + labelled.get("validation", []), "val": labelled["test"]}]
    elif "validation" in labelled:
        splits = [{"train": labelled["training"], "val": labelled["validation"]}]
    else:
        splits = None
    return DatasetPlan(
        name=name,
        channel_names=RGB_CHANNELS,
        labels=SKIN_LABELS,
        file_ending=".png",
        cases=[case for cases in cases_by_part.values() if cases for case in cases],
        splits=splits,
        description=f"{name} lesion segmentation; fold 0 = official parts ({', '.join(labelled)})",
    )


def plan_isic2017(src: Path, options: SourceOptions) -> DatasetPlan:
    return _plan_isic(src, options, "ISIC2017", ISIC2017_PARTS)


def plan_isic2018(src: Path, options: SourceOptions) -> DatasetPlan:
    return _plan_isic(src, options, "ISIC2018", ISIC2018_PARTS)


def plan_ph2(src: Path, options: SourceOptions) -> DatasetPlan:
    image_pattern = re.compile(r"(IMD\d+)\.bmp", re.IGNORECASE)
    cases = []
    for image in sorted(src.rglob("*_Dermoscopic_Image/*.bmp")):
        match = image_pattern.fullmatch(image.name)
        if not match:
            continue
        identifier = match.group(1)
        case_folder = image.parent.parent
        lesion = case_folder / f"{identifier}_lesion" / f"{identifier}_lesion.bmp"
        cases.append(_rgb_case(identifier, "Tr", image, lesion, options))
    if not cases:
        raise ConversionError(f"no IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp under {src}")
    return DatasetPlan(
        name="PH2",
        channel_names=RGB_CHANNELS,
        labels=SKIN_LABELS,
        file_ending=".png",
        cases=cases,
        description="PH2 dermoscopy, external test set for models trained on ISIC (all cases in imagesTr)",
    )
