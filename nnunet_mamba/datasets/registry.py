"""Converter names accepted by ``nnunet-mamba convert`` and the functions that plan them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import amos, lits, skin, synapse
from .common import ConversionError, DatasetPlan, SourceOptions, write_dataset


@dataclass(frozen=True)
class Converter:
    plan: Callable[[Path, SourceOptions], DatasetPlan]
    summary: str
    two_dimensional: bool = False  # takes --resize


CONVERTERS: dict[str, Converter] = {
    "synapse": Converter(synapse.plan_synapse13, "Synapse/BTCV CT, all 13 organs, TransUNet split as fold 0"),
    "synapse8": Converter(synapse.plan_synapse8, "Synapse/BTCV CT, the 8-organ TransUNet protocol (labels remapped)"),
    "amos-ct": Converter(amos.plan_amos_ct, "AMOS 2022 CT cases only (task 1), official train/val split as fold 0"),
    "amos-ctmr": Converter(amos.plan_amos_ctmr, "AMOS 2022 CT and MRI cases (task 2), official train/val split"),
    "lits": Converter(lits.plan_lits, "LiTS 2017 liver + tumour CT, fixed seeded 105/26 split as fold 0"),
    "isic2017": Converter(
        skin.plan_isic2017, "ISIC 2017 lesion segmentation (2D RGB), official parts", two_dimensional=True
    ),
    "isic2018": Converter(
        skin.plan_isic2018, "ISIC 2018 task 1 lesion segmentation (2D RGB), official parts", two_dimensional=True
    ),
    "ph2": Converter(
        skin.plan_ph2, "PH2 dermoscopy (2D RGB), external test set for ISIC-trained models", two_dimensional=True
    ),
}


def convert(
    name: str,
    src: Path,
    dataset_id: int,
    out_root: Path | None = None,
    num_processes: int = 2,
    overwrite: bool = False,
    preprocessed_root: Path | None = None,
    options: SourceOptions = SourceOptions(),
    results_root: Path | None = None,
) -> Path:
    """Convert the official download at ``src`` with converter ``name``; returns the dataset folder."""
    if name not in CONVERTERS:
        raise KeyError(f"unknown converter {name!r}; choose from {', '.join(CONVERTERS)}")
    if options.resize is not None and not CONVERTERS[name].two_dimensional:
        resizable = ", ".join(n for n, c in CONVERTERS.items() if c.two_dimensional)
        raise ConversionError(f"--resize applies to the 2D datasets ({resizable}) only; {name} is 3D, leave it out")
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"missing folder: {src}")
    plan = CONVERTERS[name].plan(src, options)
    return write_dataset(plan, dataset_id, out_root, num_processes, overwrite, preprocessed_root, results_root)
