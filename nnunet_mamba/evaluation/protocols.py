"""What each paper protocol evaluates (which structures, which label values) and what it reports.

=========  ==================================================  =============================================
protocol   structures                                          summary reported
=========  ==================================================  =============================================
nnunet     every foreground label of dataset.json              per-class and class-mean Dice/IoU/HD95/NSD
synapse    the 8 TransUNet organs (by name, either dataset)    mean DSC and HD95 over the 8 organs, per organ
amos       the 15 AMOS organs                                  mean DSC and NSD, per organ
lits       liver (labels 1+2) and tumour (label 2)             per-case mean Dice and global (pooled) Dice
isic       lesion (label 1)                                    IoU, DSC, accuracy, specificity, sensitivity
                                                               from one pixel confusion matrix of the test set
=========  ==================================================  =============================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nnunet_mamba.datasets import organs
from nnunet_mamba.datasets.amos import AMOS_LABELS
from nnunet_mamba.datasets.synapse import SYNAPSE8_ORGANS

PROTOCOLS = ("nnunet", "synapse", "amos", "lits", "isic")
METRICS = ("dice", "iou", "hd95", "nsd")
# Which metrics each protocol puts first (the printed headline and the plot panels).
HEADLINE_METRICS = {
    "nnunet": ("dice", "iou", "hd95", "nsd"),
    "synapse": ("dice", "hd95"),
    "amos": ("dice", "nsd"),
    "lits": ("dice", "hd95"),
    "isic": ("dice", "iou"),
}


@dataclass(frozen=True)
class EvalClass:
    name: str
    labels: tuple[int, ...]  # the structure is the union of these label values
    nsd_tolerance: float


class ProtocolError(ValueError):
    pass


def nsd_tolerance_for(name: str, overrides: Mapping[str, float] | None = None) -> float:
    overrides = overrides or {}
    if name in overrides:
        return float(overrides[name])
    if "default" in overrides:
        return float(overrides["default"])
    return organs.NSD_TOLERANCE_MM.get(name, organs.DEFAULT_NSD_TOLERANCE_MM)


def _foreground_labels(label_names: Mapping[str, int | Sequence[int]]) -> dict[str, tuple[int, ...]]:
    classes = {}
    for name, value in label_names.items():
        values = tuple(value) if isinstance(value, (list, tuple)) else (int(value),)
        if name == "ignore" or values == (0,):
            continue
        classes[name] = values
    return classes


def _select_by_name(label_names, wanted: Sequence[str], protocol: str) -> dict[str, tuple[int, ...]]:
    available = _foreground_labels(label_names)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ProtocolError(
            f"protocol {protocol!r} needs labels {missing}, which dataset.json does not name "
            f"(it has {sorted(available)})"
        )
    return {name: available[name] for name in wanted}


def resolve_classes(
    protocol: str,
    label_names: Mapping[str, int] | None,
    found_labels: Sequence[int] = (),
    nsd_tolerances: Mapping[str, float] | None = None,
) -> list[EvalClass]:
    """The structures to evaluate. ``label_names`` is dataset.json's ``labels`` (None if unknown);
    ``found_labels`` are the values seen in the files, used only when no names are known."""
    if protocol == "nnunet":
        if label_names is not None:
            selected = _foreground_labels(label_names)
        else:
            selected = {f"label_{v}": (v,) for v in sorted(set(found_labels)) if v != 0}
    elif protocol == "synapse":
        if label_names is None:
            # The synapse8 converter's values; without names we cannot tell a 13-label dataset apart.
            selected = {name: (value,) for value, name in enumerate(SYNAPSE8_ORGANS, start=1)}
        else:
            selected = _select_by_name(label_names, SYNAPSE8_ORGANS, protocol)
    elif protocol == "amos":
        if label_names is None:
            selected = {name: (value,) for value, name in enumerate(AMOS_LABELS, start=1)}
        else:
            selected = _select_by_name(label_names, AMOS_LABELS, protocol)
    elif protocol == "lits":
        selected = {organs.LIVER: (1, 2), organs.TUMOR: (2,)}
    elif protocol == "isic":
        selected = {organs.LESION: (1,)}
    else:
        raise ProtocolError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if not selected:
        raise ProtocolError("no foreground label to evaluate")
    unknown = sorted(set(nsd_tolerances or {}) - {"default"} - set(selected))
    if unknown:
        raise ProtocolError(
            f"--nsd-tolerance {unknown[0]}={nsd_tolerances[unknown[0]]:g}: the {protocol} protocol evaluates no class "
            f"named {unknown[0]!r} (it evaluates {', '.join(selected)}); check the spelling"
        )
    return [EvalClass(name, values, nsd_tolerance_for(name, nsd_tolerances)) for name, values in selected.items()]


def _finite_stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if array.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std()), "median": float(np.median(array)), "n": int(array.size)}


def _pooled(rows: Sequence[dict]) -> dict[str, float]:
    tp, fp, fn, tn = (sum(int(r[key]) for r in rows) for key in ("tp", "fp", "fn", "tn"))

    def ratio(numerator: int, denominator: int) -> float:
        return numerator / denominator if denominator else math.nan

    iou_foreground = ratio(tp, tp + fp + fn)
    iou_background = ratio(tn, tn + fp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": iou_foreground,
        "miou_with_background": (iou_foreground + iou_background) / 2,
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "specificity": ratio(tn, tn + fp),
        "sensitivity": ratio(tp, tp + fn),
    }


def summarize(protocol: str, classes: Sequence[EvalClass], rows: Sequence[dict]) -> dict:
    """Per-class statistics over cases, the class means, and the protocol's own figures."""
    per_class = {}
    for eval_class in classes:
        class_rows = [r for r in rows if r["class"] == eval_class.name]
        per_class[eval_class.name] = {metric: _finite_stats([r[metric] for r in class_rows]) for metric in METRICS}
    class_mean = {
        metric: _finite_stats([per_class[c.name][metric]["mean"] for c in classes])["mean"] for metric in METRICS
    }
    summary: dict = {"per_class": per_class, "mean": class_mean, "num_cases": len({r["case"] for r in rows})}

    if protocol == "synapse":
        summary["paper"] = {
            "mean_dsc": class_mean["dice"],
            "mean_hd95": class_mean["hd95"],
            "dsc_per_organ": {c.name: per_class[c.name]["dice"]["mean"] for c in classes},
        }
    elif protocol == "amos":
        summary["paper"] = {"mean_dsc": class_mean["dice"], "mean_nsd": class_mean["nsd"]}
    elif protocol == "lits":
        summary["paper"] = {
            c.name: {
                "dice_per_case": per_class[c.name]["dice"]["mean"],
                "dice_global": _pooled([r for r in rows if r["class"] == c.name])["dice"],
            }
            for c in classes
        }
    elif protocol == "isic":
        pooled = _pooled([r for r in rows if r["class"] == classes[0].name])
        # The ISIC tables (VM-UNet and successors) label the pooled lesion IoU "mIoU".
        summary["paper"] = {
            "mIoU": pooled["iou"],
            "DSC": pooled["dice"],
            "accuracy": pooled["accuracy"],
            "specificity": pooled["specificity"],
            "sensitivity": pooled["sensitivity"],
            "miou_with_background": pooled["miou_with_background"],
            "confusion_matrix": {key: pooled[key] for key in ("tp", "fp", "fn", "tn")},
        }
    return summary
