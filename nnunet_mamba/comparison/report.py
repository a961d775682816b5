"""The comparison's rows and its files: ``compare.md``, ``compare.csv``, ``compare.json`` and ``compare.png``.

:func:`summarize` turns each trainer's per-case Dice and measured resources into one row of plain values (the
paired statistics against the reference trainer included); :func:`write_reports` writes the rows as a table
laid out like nnU-Net Revisited's, as CSV and JSON, and as a figure.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunet_mamba.files import json_safe, write_atomically, write_json_atomically

from .statistics import case_mean_dice, class_dice, mean_ignoring_nan, name_cases, paired_difference

DEFAULT_PLANS = "nnUNetPlans"
#: the names nnU-Net Revisited gives its baselines, by plans identifier
PRESETS = {
    "nnUNetPlans": "default UNet",
    "nnUNetResEncUNetMPlans": "ResEnc M",
    "nnUNetResEncUNetLPlans": "ResEnc L",
    "nnUNetResEncUNetXLPlans": "ResEnc XL",
}
RESOURCE_KEYS = ("parameters", "flops", "peak_memory_mib", "seconds_per_iteration", "gpu_hours",
                 "inference_seconds_per_case")
FILE_NAMES = {"md": "compare.md", "csv": "compare.csv", "json": "compare.json", "png": "compare.png"}


def preset_name(plans: str) -> str:
    """nnU-Net Revisited's name for the network a plans identifier builds (the plans name if it has none)."""
    return PRESETS.get(plans, plans)


@dataclass
class TrainerResult:
    """One trainer's cross-validation: its per-case Dice and what training and inference cost."""

    trainer: str
    plans: str
    folds: tuple[int, ...]
    case_dice: dict[str, dict[str, float]]  # case id -> class name -> Dice; NaN where the class is absent in both
    resources: dict[str, float | None] = field(default_factory=dict)  # RESOURCE_KEYS, any missing or None
    baseline: bool = False  # one of nnU-Net's own trainers: a candidate for memory matching

    @property
    def label(self) -> str:
        return self.trainer if self.plans == DEFAULT_PLANS else f"{self.trainer}:{self.plans}"

    @property
    def preset(self) -> str:
        return preset_name(self.plans)


def _number(value) -> float | None:
    """A float for a row, None for missing or NaN (rows hold plain JSON values)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _class_names(results: Sequence[TrainerResult]) -> list[str]:
    """Every class scored by any trainer, in the order they first appear."""
    names: dict[str, None] = {}
    for result in results:
        for per_class in result.case_dice.values():
            names.update(dict.fromkeys(per_class))
    return list(names)


def _check_comparable(results: Sequence[TrainerResult], reference: int) -> None:
    if not results:
        raise ValueError("no trainer to compare; give at least one --trainers entry")
    if not 0 <= reference < len(results):
        raise ValueError(f"reference {reference} is not one of the {len(results)} trainers (0 to {len(results) - 1})")
    labels = [result.label for result in results]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed more than once; list each trainer:plans once")
    expected = set(results[reference].case_dice)
    for result in results:
        missing, extra = expected - set(result.case_dice), set(result.case_dice) - expected
        if missing or extra:
            found = [f"lacks {name_cases(missing)}" if missing else "",
                     f"has extra {name_cases(extra)}" if extra else ""]
            raise ValueError(f"{result.label} {' and '.join(f for f in found if f)} against "
                             f"{results[reference].label}; every trainer must be scored on the same cases")


def _difference_fields(reference: dict[str, float], other: dict[str, float], resamples: int, seed: int) -> dict:
    difference = paired_difference(reference, other, resamples, seed)
    return {"diff": _number(difference.mean), "ci95": [_number(v) for v in difference.ci95],
            "wilcoxon_p": difference.wilcoxon_p}


def _match_memory(rows: list[dict]) -> None:
    """Each non-baseline row's baseline with the closest measured peak memory (the first of equals)."""
    baselines = [row for row in rows if row["baseline"] and row["peak_memory_mib"] is not None]
    for row in rows:
        if row["baseline"] or row["peak_memory_mib"] is None or not baselines:
            continue
        closest = min(baselines, key=lambda baseline: abs(baseline["peak_memory_mib"] - row["peak_memory_mib"]))
        row["matched_baseline"] = closest["label"]
        row["matched_baseline_memory_mib"] = closest["peak_memory_mib"]


def summarize(results: Sequence[TrainerResult], reference: int = 0, resamples: int = 10000, seed: int = 0,
              match_memory: bool = False) -> list[dict]:
    """One row of plain values per trainer, in the given order.

    ``dice`` is the mean over cases of each case's mean over classes, ``dice_per_class`` the mean over cases per
    class (NaN scores left out of both). ``dice_diff``, ``dice_diff_ci95`` and ``wilcoxon_p`` compare each
    trainer's per-case Dice with the reference trainer's (``results[reference]``; None in its own row), and
    ``dice_diff_per_class`` does so per class. With ``match_memory`` every trainer that is not a baseline gets
    ``matched_baseline``: the label of the baseline whose peak memory is closest to its own (None where either
    is unmeasured).
    """
    _check_comparable(results, reference)
    classes = _class_names(results)
    reference_result = results[reference]
    reference_overall = case_mean_dice(reference_result.case_dice)
    rows = []
    for index, result in enumerate(results):
        overall = case_mean_dice(result.case_dice)
        per_class = {name: class_dice(result.case_dice, name) for name in classes}
        row = {
            "trainer": result.trainer,
            "plans": result.plans,
            "label": result.label,
            "preset": result.preset if result.baseline else None,  # our trainers build no preset of nnU-Net's
            "baseline": result.baseline,
            "reference": index == reference,
            "folds": list(result.folds),
            "cases": len(result.case_dice),
            "dice": _number(mean_ignoring_nan(overall.values())),
            "dice_per_class": {name: _number(mean_ignoring_nan(values.values())) for name, values in per_class.items()},
            "dice_diff": None,
            "dice_diff_ci95": None,
            "wilcoxon_p": None,
            "dice_diff_per_class": None,
        }
        if index != reference:
            difference = _difference_fields(reference_overall, overall, resamples, seed)
            row.update(dice_diff=difference["diff"], dice_diff_ci95=difference["ci95"],
                       wilcoxon_p=difference["wilcoxon_p"])
            row["dice_diff_per_class"] = {
                name: _difference_fields(class_dice(reference_result.case_dice, name), per_class[name], resamples,
                                         seed)
                for name in classes}
        row.update({key: _number(result.resources.get(key)) for key in RESOURCE_KEYS})
        row.update(matched_baseline=None, matched_baseline_memory_mib=None)
        rows.append(row)
    if match_memory:
        _match_memory(rows)
    return rows


# --- the files ------------------------------------------------------------------------------------------------

def _fixed(value: float | None, decimals: int, scale: float = 1.0, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value / scale:{'+' if sign else ''}.{decimals}f}"


def _p_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ci(ci95) -> str:
    if not ci95 or any(v is None for v in ci95):
        return "-"
    return f"[{ci95[0]:.4f}, {ci95[1]:.4f}]"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _folds_text(folds: Sequence[int]) -> str:
    return ", ".join(str(fold) for fold in folds) or "none"


def markdown_table(rows: list[dict], title: str = "") -> str:
    """``compare.md``: a header naming the reference, then one table line per trainer."""
    classes = list(rows[0]["dice_per_class"]) if rows else []
    reference = next(row for row in rows if row["reference"])
    different_folds = any(row["folds"] != reference["folds"] for row in rows)
    lines = [f"# {title}", ""] if title else []
    lines += [
        f"Reference: `{reference['label']}`; {reference['cases']} cases from fold(s) {_folds_text(reference['folds'])}"
        + (" (the trainers' folds differ: see the folds column)" if different_folds else "") + ". "
        "Dice is the mean over cases of each case's mean over classes; Δ Dice is the paired difference to the "
        "reference, with a 95% bootstrap CI over cases and a Wilcoxon signed-rank p-value. "
        "A difference whose CI contains 0 is no evidence of a difference.",
        "",
    ]
    header = (["trainer"] + (["folds"] if different_folds else []) + [f"Dice {name}" for name in classes]
              + ["mean Dice", "Δ Dice", "95% CI", "p", "params (M)", "GMACs", "peak memory (MiB)", "s/it",
                 "GPU-hours", "inference s/case", "matched baseline"])
    lines += ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        trainer = row["label"] + (f" ({row['preset']})" if row["preset"] not in (None, row["plans"]) else "")
        matched = "-" if row["matched_baseline"] is None else (
            f"{row['matched_baseline']} ({_fixed(row['matched_baseline_memory_mib'], 0)} MiB)")
        cells = ([trainer] + ([_folds_text(row["folds"])] if different_folds else [])
                 + [_fixed(row["dice_per_class"].get(name), 4) for name in classes]
                 + [_fixed(row["dice"], 4),
                    "reference" if row["reference"] else _fixed(row["dice_diff"], 4, sign=True),
                    "-" if row["reference"] else _ci(row["dice_diff_ci95"]),
                    _p_value(row["wilcoxon_p"]),
                    _fixed(row["parameters"], 2, 1e6), _fixed(row["flops"], 2, 1e9),
                    _fixed(row["peak_memory_mib"], 0), _fixed(row["seconds_per_iteration"], 3),
                    _fixed(row["gpu_hours"], 2), _fixed(row["inference_seconds_per_case"], 2), matched])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """``compare.csv``: one line per trainer, flat columns (per-class Dice as ``dice_<class>``), missing empty."""
    classes = list(rows[0]["dice_per_class"]) if rows else []
    columns = (["trainer", "plans", "label", "preset", "baseline", "reference", "folds", "cases", "dice"]
               + [f"dice_{name}" for name in classes]
               + ["dice_diff", "dice_diff_ci95_low", "dice_diff_ci95_high", "wilcoxon_p", *RESOURCE_KEYS,
                  "matched_baseline", "matched_baseline_memory_mib"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        ci95 = row["dice_diff_ci95"] or [None, None]
        flat = {key: row[key] for key in columns if key in row}
        flat.update({f"dice_{name}": row["dice_per_class"].get(name) for name in classes})
        flat.update(folds=" ".join(str(fold) for fold in row["folds"]), dice_diff_ci95_low=ci95[0],
                    dice_diff_ci95_high=ci95[1])
        writer.writerow({key: "" if value is None else value for key, value in flat.items()})
    return buffer.getvalue()


def plot(rows: list[dict], results: Sequence[TrainerResult], file) -> None:
    """``compare.png`` into the binary ``file``: box plots of per-case Dice per class and trainer (left), mean
    Dice against peak memory (right; a note instead where no trainer's memory is known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(rows[0]["dice_per_class"]) if rows else []
    groups = ["all classes"] + classes
    trainers = len(results)
    colours = [plt.get_cmap("tab10")(index % 10) for index in range(trainers)]
    width = max(9.0, 0.25 * len(groups) * (trainers + 1) + 5)
    figure, (boxes, memory) = plt.subplots(1, 2, figsize=(width, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    for index, result in enumerate(results):
        per_group = [case_mean_dice(result.case_dice)] + [class_dice(result.case_dice, name) for name in classes]
        values = [[v for v in group.values() if not math.isnan(v)] for group in per_group]
        positions = [g * (trainers + 1) + index for g in range(len(groups))]
        artists = boxes.boxplot(values, positions=positions, widths=0.8, patch_artist=True, showfliers=True,
                                flierprops={"markersize": 3}, medianprops={"color": "black"})
        for box in artists["boxes"]:
            box.set_facecolor(colours[index])
            box.set_alpha(0.7)
        boxes.plot([], [], "s", color=colours[index], label=result.label)  # a legend entry for the trainer
    boxes.set_xticks([g * (trainers + 1) + (trainers - 1) / 2 for g in range(len(groups))], groups, rotation=30,
                     ha="right")
    boxes.set_ylabel("Dice per case")
    boxes.set_ylim(-0.02, 1.02)
    boxes.grid(axis="y", alpha=0.3)
    boxes.legend(fontsize="small", loc="lower left")
    measured = [(row, colours[index]) for index, row in enumerate(rows)
                if row["peak_memory_mib"] is not None and row["dice"] is not None]
    if measured:
        memories = [row["peak_memory_mib"] for row, _ in measured]
        middle = (min(memories) + max(memories)) / 2
        for row, colour in measured:
            memory.scatter(row["peak_memory_mib"], row["dice"], color=colour, marker="s" if row["baseline"] else "o")
            # labels point inwards, so that they stay inside the figure; those of the right half sit below their
            # point, so that they do not run into a left-hand label at the same Dice
            right = row["peak_memory_mib"] > middle
            memory.annotate(row["label"], (row["peak_memory_mib"], row["dice"]), fontsize="small",
                            textcoords="offset points", xytext=(-4, -6) if right else (4, 4),
                            ha="right" if right else "left", va="top" if right else "baseline")
        memory.margins(0.15)
        memory.set_xlabel("peak training memory (MiB)")
        memory.set_ylabel("mean Dice")
        memory.grid(alpha=0.3)
        memory.set_title("squares: nnU-Net's baselines", fontsize="small")
    else:
        memory.axis("off")
        memory.text(0.5, 0.5, "no peak memory measured", ha="center", va="center", transform=memory.transAxes)
    figure.tight_layout()
    figure.savefig(file, format="png", dpi=120)
    plt.close(figure)


def write_reports(folder: Path, rows: list[dict], results: Sequence[TrainerResult], title: str = "") -> dict[str, Path]:
    """Write ``compare.md``, ``compare.csv``, ``compare.json`` and ``compare.png`` into ``folder``, each
    atomically; ``rows`` come from :func:`summarize` of ``results``, in the same order."""
    if len(rows) != len(results) or any(row["label"] != result.label for row, result in zip(rows, results)):
        raise ValueError("rows and results differ; pass the rows summarize() made of these results")
    if not any(row["reference"] for row in rows):
        raise ValueError("no row is the reference; pass the rows summarize() made of these results")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name for kind, name in FILE_NAMES.items()}
    markdown = markdown_table(rows, title)
    write_atomically(paths["md"], lambda file: file.write(markdown.encode()))
    table = csv_text(rows)
    write_atomically(paths["csv"], lambda file: file.write(table.encode()))
    reference = next(row["label"] for row in rows if row["reference"])
    write_json_atomically(paths["json"], json_safe(
        {"reference": reference, "rows": rows, "cases": {result.label: result.case_dice for result in results}}))
    write_atomically(paths["png"], lambda file: plot(rows, results, file))
    return paths
