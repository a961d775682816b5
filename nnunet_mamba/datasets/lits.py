"""LiTS 2017 liver tumour CT.

Source layout: ``volume-N.nii`` and ``segmentation-N.nii`` for N = 0..130 (both official training
batches, in any sub-folders of ``--src``), optionally the unlabelled ``test-volume-N.nii``.

LiTS publishes no labelled test split, so we ship one: :data:`TEST_CASE_NUMBERS` are the first 26
entries (20 %) of ``numpy.random.default_rng(12345).permutation(131)``, written out so that the split
never depends on numpy's generator. Fold 0 of ``splits_final.json`` trains on the other 105 cases.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import organs
from .common import CaseJob, ConversionError, DatasetPlan, SourceOptions, identity_label_map

NUM_LABELLED_CASES = 131
SPLIT_SEED = 12345
TEST_FRACTION = 0.2
TEST_CASE_NUMBERS = (
    0, 2, 6, 14, 23, 26, 32, 41, 44, 59, 60, 69, 70, 76, 80, 87, 94, 99, 101, 110, 112, 116, 118, 123, 124, 129,
)
LITS_LABELS = (organs.LIVER, organs.TUMOR)


def case_identifier(number: int) -> str:
    return f"lits_{number:03d}"


def fixed_split() -> list[dict[str, list[str]]]:
    train = [case_identifier(n) for n in range(NUM_LABELLED_CASES) if n not in TEST_CASE_NUMBERS]
    return [{"train": train, "val": [case_identifier(n) for n in TEST_CASE_NUMBERS]}]


def _index_by_number(src: Path, prefix: str) -> dict[int, Path]:
    pattern = re.compile(rf"{prefix}-(\d+)\.nii(\.gz)?")
    found: dict[int, Path] = {}
    for path in sorted(src.rglob(f"{prefix}-*.nii*")):
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        number = int(match.group(1))
        if number in found:
            raise ConversionError(f"{path} duplicates {found[number]}")
        found[number] = path
    return found


def plan_lits(src: Path, options: SourceOptions) -> DatasetPlan:
    volumes = _index_by_number(src, "volume")
    segmentations = _index_by_number(src, "segmentation")
    label_map = identity_label_map(len(LITS_LABELS) + 1)
    cases = []
    for number in range(NUM_LABELLED_CASES):
        # Name the file we expected, so that a missing one can be looked for in the download.
        volume = volumes.get(number, src / f"volume-{number}.nii")
        segmentation = segmentations.get(number, volume.with_name(f"segmentation-{number}.nii"))
        cases.append(CaseJob(case_identifier(number), "Tr", "volume", volume, segmentation, label_map))
    unexpected = sorted((set(volumes) | set(segmentations)) - set(range(NUM_LABELLED_CASES)))
    if unexpected:
        raise ConversionError(f"unexpected LiTS case number(s) {unexpected} under {src}")
    if options.include_unlabelled_test:
        for number, path in sorted(_index_by_number(src, "test-volume").items()):
            cases.append(CaseJob(f"lits_test_{number:03d}", "Ts", "volume", path, None))
    return DatasetPlan(
        name="LiTS",
        channel_names={"0": "CT"},
        labels={"background": 0, **{name: value for value, name in enumerate(LITS_LABELS, start=1)}},
        file_ending=".nii.gz",
        cases=cases,
        splits=fixed_split(),
        description=(
            f"LiTS 2017; fold 0 = fixed split, {len(TEST_CASE_NUMBERS)} test cases drawn with seed {SPLIT_SEED}"
        ),
    )
