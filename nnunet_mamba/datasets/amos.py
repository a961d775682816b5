"""AMOS 2022 abdominal multi-organ CT and MRI.

Source layout: ``amos22/dataset.json`` with ``imagesTr labelsTr imagesVa labelsVa imagesTs``, files
``amos_XXXX.nii.gz``. Case numbers below 500 are CT, 500 and above MRI.

The official ``training`` and ``validation`` cases all go to ``imagesTr``; fold 0 of
``splits_final.json`` trains on the official training cases and validates on the official
validation cases, the usual way AMOS results are reported. The unlabelled ``test`` images go to
``imagesTs``. Label values are kept; the names are ours (the official file spells aorta "arota").
"""
from __future__ import annotations

import json
from pathlib import Path

from . import organs
from .common import CaseJob, ConversionError, DatasetPlan, SourceOptions, identity_label_map

FIRST_MRI_CASE_NUMBER = 500

AMOS_LABELS = (
    organs.SPLEEN,
    organs.KIDNEY_RIGHT,
    organs.KIDNEY_LEFT,
    organs.GALLBLADDER,
    organs.ESOPHAGUS,
    organs.LIVER,
    organs.STOMACH,
    organs.AORTA,
    organs.INFERIOR_VENA_CAVA,
    organs.PANCREAS,
    organs.ADRENAL_GLAND_RIGHT,
    organs.ADRENAL_GLAND_LEFT,
    organs.DUODENUM,
    organs.BLADDER,
    organs.PROSTATE_UTERUS,
)


def _case_number(identifier: str, listed_in: Path) -> int:
    try:
        return int(identifier.split("_")[-1])
    except ValueError:
        raise ConversionError(f"{listed_in}: unexpected case name {identifier!r} (expected amos_XXXX)") from None


def _listed_files(entry, key: str, listed_in: Path, section: str) -> str | None:
    # The official file lists training/validation entries as {"image", "label"} and test entries as
    # either such a dict or a bare path; accept both.
    if isinstance(entry, str):
        return entry if key == "image" else None
    value = entry.get(key) if isinstance(entry, dict) else None
    if value is None and key == "label":
        return None
    if not isinstance(value, str) or not value:
        raise ConversionError(
            f"{listed_in}: {section} entry {entry!r} names no image file; use the dataset.json of the official "
            f"amos22 download"
        )
    return value


def _read_official_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise ConversionError(f"missing file: {path}")
    fix = "use the dataset.json of the official amos22 download"
    try:
        content = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ConversionError(f"{path}: not valid JSON ({error}); {fix}") from None
    if not isinstance(content, dict) or not isinstance(content.get("labels"), dict):
        raise ConversionError(f"{path}: expected a JSON object with a \"labels\" object; {fix}")
    try:
        official_labels = {int(k) for k in content["labels"]}
    except ValueError:
        raise ConversionError(f"{path}: label keys must be numbers, found {sorted(content['labels'])}; {fix}") from None
    if official_labels != set(range(len(AMOS_LABELS) + 1)):
        raise ConversionError(f"{path}: expected labels 0..{len(AMOS_LABELS)}, found {sorted(official_labels)}")
    for section in ("training", "validation", "test"):
        if not isinstance(content.get(section, []), list):
            raise ConversionError(f"{path}: {section!r} must be a list of cases; {fix}")
    return content


def _amos_root(src: Path) -> Path:
    return src / "amos22" if (src / "amos22" / "dataset.json").is_file() else src


def _plan(src: Path, options: SourceOptions, include_mri: bool) -> DatasetPlan:
    root = _amos_root(src)
    official = _read_official_json(root)
    label_map = identity_label_map(len(AMOS_LABELS) + 1)
    cases: list[CaseJob] = []
    split_members: dict[str, list[str]] = {"training": [], "validation": []}
    sections = [("training", "Tr"), ("validation", "Tr")]
    if options.include_unlabelled_test:
        sections.append(("test", "Ts"))
    listed_in = root / "dataset.json"
    for section, subset in sections:
        for entry in official.get(section, []):
            image_entry = _listed_files(entry, "image", listed_in, section)
            label_entry = _listed_files(entry, "label", listed_in, section) if subset == "Tr" else None
            image = root / image_entry
            identifier = image.name.removesuffix(".nii.gz")
            if not include_mri and _case_number(identifier, listed_in) >= FIRST_MRI_CASE_NUMBER:
                continue
            if subset == "Tr" and label_entry is None:
                raise ConversionError(f"{listed_in}: {section} case {identifier} lists no label")
            label = root / label_entry if label_entry else None
            cases.append(CaseJob(identifier, subset, "volume", image, label, label_map if label else None))
            if section in split_members:
                split_members[section].append(identifier)
    modality = "CT and MRI" if include_mri else "CT"
    return DatasetPlan(
        name="AMOS2022CTMR" if include_mri else "AMOS2022CT",
        # "CT" selects nnU-Net's dataset-wide CT normalisation, which would be wrong for MRI;
        # any other name gives per-image z-scoring.
        channel_names={"0": "zscore" if include_mri else "CT"},
        labels={"background": 0, **{organ: value for value, organ in enumerate(AMOS_LABELS, start=1)}},
        file_ending=".nii.gz",
        cases=cases,
        splits=[{"train": split_members["training"], "val": split_members["validation"]}],
        description=f"AMOS 2022 ({modality}); fold 0 = official training / validation split",
    )


def plan_amos_ct(src: Path, options: SourceOptions) -> DatasetPlan:
    return _plan(src, options, include_mri=False)


def plan_amos_ctmr(src: Path, options: SourceOptions) -> DatasetPlan:
    return _plan(src, options, include_mri=True)
