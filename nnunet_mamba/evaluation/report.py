"""Evaluation outputs: ``metrics.json``, ``metrics_per_case.csv``, a printed table and ``metrics.png``."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from nnunet_mamba.files import json_safe

from .protocols import HEADLINE_METRICS, METRICS
from .runner import EvaluationResult

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "nsd": "NSD"}
CSV_COLUMNS = ("case", "class", "dice", "iou", "hd95", "nsd", "tp", "fp", "fn", "tn", "mask_state")


def _distance_unit(result: EvaluationResult) -> str:
    return "voxels" if result.transunet_compat else "mm"


def to_json(result: EvaluationResult) -> dict:
    return json_safe(
        {
            "protocol": result.protocol,
            "transunet_compat": result.transunet_compat,
            "distance_unit": _distance_unit(result),
            "classes": [
                {"name": c.name, "labels": list(c.labels), "nsd_tolerance": c.nsd_tolerance} for c in result.classes
            ],
            "summary": result.summary,
            "per_case": result.rows,
            "warnings": result.warnings,
        }
    )


def format_table(result: EvaluationResult) -> str:
    metrics = [m for m in METRICS if not (result.transunet_compat and m == "nsd")]
    header = ["class"] + [f"{METRIC_TITLES[m]}{' (' + _distance_unit(result) + ')' if m == 'hd95' else ''}" for m in metrics]
    lines = []
    per_class = result.summary["per_class"]
    for eval_class in result.classes:
        stats = per_class[eval_class.name]
        lines.append([eval_class.name] + [f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in metrics])
    lines.append(["mean (over classes)"] + [f"{result.summary['mean'][m]:.4f}" for m in metrics])
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    text += [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines]
    mode = ", TransUNet-compatible" if result.transunet_compat else ""
    title = f"{result.protocol} protocol{mode}: {result.summary['num_cases']} cases"
    paper = result.summary.get("paper")
    if paper:
        figures = ", ".join(
            f"{key} {value:.4f}" for key, value in paper.items() if isinstance(value, float)
        )
        if figures:
            text.append(f"paper figures: {figures}")
        for key, value in paper.items():
            if isinstance(value, dict) and "dice_global" in value:
                text.append(f"{key}: Dice per case {value['dice_per_case']:.4f}, Dice global {value['dice_global']:.4f}")
    return "\n".join([title] + text)


def write_csv(result: EvaluationResult, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)


def plot(result: EvaluationResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [m for m in HEADLINE_METRICS[result.protocol] if not (result.transunet_compat and m == "nsd")]
    names = [c.name for c in result.classes]
    figure, axes = plt.subplots(
        len(metrics), 1, figsize=(max(6.0, 0.7 * len(names) + 2), 3.2 * len(metrics)), squeeze=False
    )
    rng = np.random.default_rng(0)  # fixed jitter, so reruns give the same picture
    for axis, metric in zip(axes[:, 0], metrics):
        values = [[r[metric] for r in result.rows if r["class"] == name and math.isfinite(r[metric])] for name in names]
        positions = np.arange(1, len(names) + 1)
        axis.boxplot(values, positions=positions, widths=0.6, showfliers=False)
        for position, class_values in zip(positions, values):
            jitter = rng.uniform(-0.15, 0.15, len(class_values))
            axis.scatter(position + jitter, class_values, s=10, alpha=0.6, color="tab:blue", zorder=3)
            if class_values:
                axis.scatter([position], [np.mean(class_values)], marker="D", color="tab:red", zorder=4, s=22)
        unit = f" ({_distance_unit(result)})" if metric == "hd95" else ""
        axis.set_ylabel(METRIC_TITLES[metric] + unit)
        axis.set_title(f"{METRIC_TITLES[metric]} per class (mean over classes {result.summary['mean'][metric]:.3f}; red = mean)")
        axis.set_xticks(positions, names, rotation=30, ha="right")
        if metric in ("dice", "iou", "nsd"):
            axis.set_ylim(-0.02, 1.02)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(result: EvaluationResult, out_dir: Path, make_plot: bool = True) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "metrics.json", "csv": out_dir / "metrics_per_case.csv"}
    paths["json"].write_text(json.dumps(to_json(result), indent=2) + "\n")
    write_csv(result, paths["csv"])
    if make_plot:
        paths["png"] = out_dir / "metrics.png"
        plot(result, paths["png"])
    return paths
