"""A small synthetic nnU-Net raw dataset: noisy 3D volumes with a bright sphere (label 1) and a dark cube (label 2).

Used by ``nnunet-mamba demo`` and the end-to-end tests. The shapes differ in form and in the sign of
their contrast, so a network that learns anything separates them within a few hundred iterations,
while an empty prediction scores Dice 0.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

LABELS = {"background": 0, "sphere": 1, "cube": 2}


def _case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.indices(shape).astype(np.float32)
    seg = np.zeros(shape, dtype=np.uint8)
    image = rng.normal(0.0, 0.35, size=shape).astype(np.float32)

    radius = rng.uniform(0.18, 0.26) * min(shape)
    center = [rng.uniform(radius + 1, s - radius - 1) for s in shape]
    sphere = sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2
    seg[sphere] = LABELS["sphere"]
    image[sphere] += 2.0

    half = [max(2, int(rng.uniform(0.12, 0.18) * s)) for s in shape]
    for _ in range(20):  # place the cube where it does not touch the sphere
        corner = [int(rng.integers(1, s - 2 * h - 1)) for s, h in zip(shape, half)]
        box = tuple(slice(c, c + 2 * h) for c, h in zip(corner, half))
        if not sphere[box].any():
            break
    seg[box][seg[box] == 0] = LABELS["cube"]
    image[box] -= np.where(seg[box] == LABELS["cube"], 1.5, 0.0).astype(np.float32)
    return image, seg


def _write(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(array)
    itk.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK orders axes x, y, z
    sitk.WriteImage(itk, str(path), useCompression=True)


def make_synthetic_dataset(
    nnunet_raw: str | Path,
    dataset_id: int = 990,
    name: str = "MambaDemo",
    num_training: int = 10,
    num_test: int = 3,
    shape: tuple[int, int, int] = (24, 40, 40),
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
    seed: int = 0,
) -> Path:
    """Write ``Dataset{id}_{name}`` under ``nnunet_raw`` (imagesTr, labelsTr, imagesTs, labelsTs) and return it.

    The folder appears only once complete: it is written next to its destination and renamed into place.
    """
    nnunet_raw = Path(nnunet_raw)
    target = nnunet_raw / f"Dataset{dataset_id:03d}_{name}"
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it or choose another dataset id")
    nnunet_raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=nnunet_raw))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (staging / sub).mkdir()
        for i in range(num_training + num_test):
            image, seg = _case(rng, shape)
            split = "Tr" if i < num_training else "Ts"
            case = f"{name.lower()}_{i:03d}"
            _write(image, spacing, staging / f"images{split}" / f"{case}_0000.nii.gz")
            _write(seg, spacing, staging / f"labels{split}" / f"{case}.nii.gz")
        dataset_json = {
            "channel_names": {"0": "synthetic"},
            "labels": LABELS,
            "numTraining": num_training,
            "file_ending": ".nii.gz",
            "name": name,
            "description": "nnunet-mamba synthetic demo: bright sphere (1) and dark cube (2) in noise",
        }
        (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
