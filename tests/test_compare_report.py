"""Rows and files of `nnunet-mamba compare` on hand-made results whose means are worked out by hand."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnunet_mamba.comparison.report import TrainerResult, preset_name, summarize, write_reports
from nnunet_mamba.comparison.statistics import paired_difference

NAN = math.nan


def dice(*pairs):
    return {f"c{i + 1}": {"liver": liver, "tumour": tumour} for i, (liver, tumour) in enumerate(pairs)}


# per-case means over classes (NaN left out): .75 .65 .85 .55 -> Dice .70; liver 3.25 / 4; tumour 1.5 / 3
BASELINE = TrainerResult("nnUNetTrainer", "nnUNetResEncUNetMPlans", (0, 1),
                         dice((.9, .6), (.8, .5), (.85, NAN), (.7, .4)),
                         {"parameters": 20e6, "flops": 300e9, "peak_memory_mib": 9000.0, "seconds_per_iteration": 0.5,
                          "gpu_hours": 12.0, "inference_seconds_per_case": 3.0}, baseline=True)
# .81 .715 .86 .625 -> Dice .7525 (differences .06 .065 .01 .075); liver 3.35 / 4; tumour 1.81 / 3
OURS = TrainerResult("nnUNetTrainerVMUNet", "nnUNetPlans", (0, 1),
                     dice((.92, .7), (.82, .61), (.86, NAN), (.75, .5)),
                     {"parameters": 30e6, "flops": None, "peak_memory_mib": 8000.0, "seconds_per_iteration": 0.7,
                      "inference_seconds_per_case": 4.0})
# .75 .675 .84 .55 -> Dice .70375 (differences 0 .025 -.01 0); no memory measured
ABLATION = TrainerResult("nnUNetTrainerVMUNetNoScan", "nnUNetPlans", (0, 1),
                         dice((.9, .6), (.8, .55), (.84, NAN), (.7, .4)), {"parameters": 25e6})
RESULTS = [BASELINE, OURS, ABLATION]


def test_labels_and_presets():
    assert BASELINE.label == "nnUNetTrainer:nnUNetResEncUNetMPlans" and OURS.label == "nnUNetTrainerVMUNet"
    assert BASELINE.preset == "ResEnc M"
    assert [preset_name(p) for p in ("nnUNetPlans", "nnUNetResEncUNetLPlans", "nnUNetResEncUNetXLPlans", "MyPlans")] \
        == ["default UNet", "ResEnc L", "ResEnc XL", "MyPlans"]


def test_summarize_means_differences_and_matched_baseline():
    rows = summarize(RESULTS, resamples=1000, seed=0, match_memory=True)
    baseline, ours, ablation = rows
    assert [row["trainer"] for row in rows] == ["nnUNetTrainer", "nnUNetTrainerVMUNet", "nnUNetTrainerVMUNetNoScan"]
    assert baseline["cases"] == 4 and baseline["folds"] == [0, 1]
    assert baseline["dice"] == pytest.approx(0.70)
    assert ours["dice"] == pytest.approx(0.7525)
    assert ablation["dice"] == pytest.approx(0.70375)
    assert baseline["dice_per_class"] == pytest.approx({"liver": 0.8125, "tumour": 0.5})
    assert ours["dice_per_class"] == pytest.approx({"liver": 0.8375, "tumour": 1.81 / 3})
    # the reference row has no difference to itself
    assert baseline["reference"] and baseline["dice_diff"] is None and baseline["dice_diff_ci95"] is None
    assert baseline["wilcoxon_p"] is None and baseline["dice_diff_per_class"] is None
    assert ours["dice_diff"] == pytest.approx(0.0525)
    assert 0.01 <= ours["dice_diff_ci95"][0] < ours["dice_diff_ci95"][1] <= 0.075
    assert ours["wilcoxon_p"] == pytest.approx(2 / 16)  # four positive differences: exact two-sided p
    expected = paired_difference({"c1": .75, "c2": .65, "c3": .85, "c4": .55},
                                 {"c1": .81, "c2": .715, "c3": .86, "c4": .625}, resamples=1000, seed=0)
    assert ours["dice_diff_ci95"] == pytest.approx(list(expected.ci95))
    assert ablation["dice_diff"] == pytest.approx(0.00375)
    assert ablation["wilcoxon_p"] == pytest.approx(wilcoxon([0.0, 0.025, -0.01, 0.0]).pvalue)
    tumour = ours["dice_diff_per_class"]["tumour"]  # case c3 is NaN in both and left out
    assert tumour["diff"] == pytest.approx(0.31 / 3) and tumour["wilcoxon_p"] == pytest.approx(
        wilcoxon(np.array([.7, .61, .5]) - np.array([.6, .5, .4])).pvalue)
    assert ours["dice_diff_per_class"]["liver"]["diff"] == pytest.approx(0.025)
    # resources pass through; missing ones are None
    assert baseline["preset"] == "ResEnc M" and ours["preset"] is None
    assert ours["parameters"] == 30e6 and ours["flops"] is None and ours["gpu_hours"] is None
    assert ours["matched_baseline"] == "nnUNetTrainer:nnUNetResEncUNetMPlans"
    assert ours["matched_baseline_memory_mib"] == 9000.0
    assert ablation["matched_baseline"] is None  # its own memory is unknown
    assert baseline["matched_baseline"] is None  # baselines are not matched
    json.dumps(rows, allow_nan=False)  # plain values only


def test_memory_matching_takes_the_closest_baseline():
    default = TrainerResult("nnUNetTrainer", "nnUNetPlans", (0, 1), BASELINE.case_dice, {"peak_memory_mib": 5000.0},
                            baseline=True)
    ablation = TrainerResult(ABLATION.trainer, ABLATION.plans, (0, 1), ABLATION.case_dice, {"peak_memory_mib": 6000.0})
    rows = summarize([BASELINE, default, OURS, ablation], resamples=100, match_memory=True)
    assert [row["matched_baseline"] for row in rows] == [None, None, "nnUNetTrainer:nnUNetResEncUNetMPlans",
                                                          "nnUNetTrainer"]
    assert [row["matched_baseline"] for row in summarize([BASELINE, default, OURS, ablation], resamples=100)] \
        == [None] * 4
    unmeasured = TrainerResult("nnUNetTrainer", "nnUNetPlans", (0, 1), BASELINE.case_dice, {}, baseline=True)
    assert summarize([unmeasured, OURS], resamples=100, match_memory=True)[1]["matched_baseline"] is None


def test_reference_can_be_another_row():
    rows = summarize(RESULTS, reference=1, resamples=100)
    assert rows[1]["dice_diff"] is None and rows[0]["dice_diff"] == pytest.approx(-0.0525)


def test_mismatched_cases_name_the_trainer_and_cases():
    short = TrainerResult(OURS.trainer, OURS.plans, (0,), {k: v for k, v in OURS.case_dice.items() if k != "c3"})
    with pytest.raises(ValueError,
                       match=r"nnUNetTrainerVMUNet lacks 'c3' against nnUNetTrainer:nnUNetResEncUNetMPlans"):
        summarize([BASELINE, short])
    with pytest.raises(ValueError, match="nnUNetTrainerVMUNet listed more than once"):
        summarize([BASELINE, OURS, OURS])


def test_write_reports_writes_the_four_files(tmp_path):
    rows = summarize(RESULTS, resamples=500, match_memory=True)
    paths = write_reports(tmp_path / "out", rows, RESULTS, title="Dataset 999, 3d_fullres")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "compare.csv", "compare.json", "compare.md", "compare.png"]  # no partial file left behind
    assert paths["md"] == tmp_path / "out" / "compare.md"

    with open(paths["csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [line["label"] for line in table] == [result.label for result in RESULTS]
    assert float(table[1]["dice"]) == pytest.approx(0.7525)
    assert float(table[0]["dice_liver"]) == pytest.approx(0.8125)
    assert float(table[0]["dice_tumour"]) == pytest.approx(0.5)
    assert table[0]["dice_diff"] == "" and float(table[1]["dice_diff"]) == pytest.approx(0.0525)
    assert float(table[1]["dice_diff_ci95_low"]) == pytest.approx(rows[1]["dice_diff_ci95"][0])
    assert table[1]["flops"] == "" and float(table[1]["peak_memory_mib"]) == 8000.0
    assert table[1]["matched_baseline"] == "nnUNetTrainer:nnUNetResEncUNetMPlans" and table[0]["folds"] == "0 1"

    content = json.loads(paths["json"].read_text())
    assert content["reference"] == "nnUNetTrainer:nnUNetResEncUNetMPlans"
    assert content["rows"] == rows
    assert content["cases"]["nnUNetTrainerVMUNet"]["c3"] == {"liver": 0.86, "tumour": None}  # NaN as null

    markdown = paths["md"].read_text()
    assert markdown.startswith("# Dataset 999, 3d_fullres\n")
    assert "Reference: `nnUNetTrainer:nnUNetResEncUNetMPlans`; 4 cases from fold(s) 0, 1." in markdown
    assert "CI contains 0 is no evidence of a difference" in markdown
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(RESULTS)  # header, separator, one line per trainer
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table_lines]
    header = cells[0]
    reference, ours, ablation = (dict(zip(header, line)) for line in cells[2:])
    assert reference["trainer"] == "nnUNetTrainer:nnUNetResEncUNetMPlans (ResEnc M)"
    assert reference["Δ Dice"] == "reference" and reference["p"] == "-" and reference["GMACs"] == "300.00"
    assert ours["Dice liver"] == "0.8375" and ours["mean Dice"] == "0.7525" and ours["Δ Dice"] == "+0.0525"
    assert ours["p"] == "0.125" and ours["params (M)"] == "30.00" and ours["GMACs"] == "-"
    low, high = rows[1]["dice_diff_ci95"]
    assert ours["95% CI"] == f"[{low:.4f}, {high:.4f}]"
    assert ours["matched baseline"] == "nnUNetTrainer:nnUNetResEncUNetMPlans (9000 MiB)"
    assert ablation["peak memory (MiB)"] == "-" and ablation["matched baseline"] == "-"

    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(paths["png"])
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_figure_without_any_memory(tmp_path):
    results = [TrainerResult(r.trainer, r.plans, r.folds, r.case_dice, {}, r.baseline) for r in RESULTS]
    paths = write_reports(tmp_path, summarize(results, resamples=100), results)
    assert paths["png"].stat().st_size > 0
    assert "| nnUNetTrainerVMUNet |" in paths["md"].read_text()


def test_rows_must_belong_to_the_results(tmp_path):
    rows = summarize(RESULTS, resamples=100)
    with pytest.raises(ValueError, match="rows and results differ"):
        write_reports(tmp_path, rows, RESULTS[:2])
