"""``nnunet-mamba compare`` end to end on the synthetic dataset the tests plan (issue 26): one of our trainers, its
No-Mamba twin and nnU-Net's own trainer, fold 0 each, trained through nnUNetv2_train on a few iterations.

Proven once here: an interruption after one run resumes without training that run again; the report's numbers
are the direct computation on the same per-case Dice; every trainer is profiled; the memory match names nnU-Net's
run; the command prints the table, and what is left to train when asked for commands. The refusals, the statistics,
the scoring of several folds and the report files have their own fast tests (test_compare_runs.py,
test_compare_statistics.py, test_compare_report.py).
"""
import json
import math
import subprocess

import numpy as np
import pytest
from e2e_support import DATASET_ID
from scipy.stats import wilcoxon

from nnunet_mamba.cli import main
from nnunet_mamba.comparison.compare import compare
from nnunet_mamba.comparison.runs import ComparisonError, TrainerRun, fold_folder, score_runs

RUNS = [TrainerRun("nnUNetTrainerVMUNetTest"), TrainerRun("nnUNetTrainerVMUNetNoMambaTest"),
        TrainerRun("nnUNetTrainerUNetTest")]
FOLDS = [0]  # several folds are scored in test_compare_runs.py: here each run costs half a minute
RESAMPLES = 500


@pytest.fixture
def compare_workspace(nnunet_workspace, tmp_path, monkeypatch):
    """The session's planned dataset with results of our own, and training runs of one epoch of 3 iterations."""
    env = nnunet_workspace.env(nnUNet_results=str(tmp_path / "results"), NNUNET_MAMBA_TEST_EPOCHS="1",
                               NNUNET_MAMBA_TEST_ITERATIONS="3")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def _fold_of(command: list[str]) -> tuple[str, str]:
    return command[command.index("-tr") + 1], command[command.index("train") + 3]


def _case_means(case_dice: dict) -> dict:
    return {case: float(np.nanmean(list(classes.values()))) for case, classes in case_dice.items()}


@pytest.mark.slow
def test_compare_resumes_after_an_interruption_and_reports_the_direct_statistics(compare_workspace, capsys):
    calls = []

    def interrupted_after_one_run(command):
        calls.append(command)
        return subprocess.run(command) if len(calls) == 1 else subprocess.CompletedProcess(command, 1)

    with pytest.raises(ComparisonError, match=r"training nnUNetTrainerVMUNetNoMambaTest \(plans nnUNetPlans\) fold 0 "
                                              r"failed with exit code 1 .* the folds finished so far are kept"):
        compare(DATASET_ID, "2d", RUNS, FOLDS, train=True, device="cpu", num_processes=1,
                run_command=interrupted_after_one_run)
    finished = fold_folder(DATASET_ID, "2d", RUNS[0], 0) / "checkpoint_final.pth"
    written = finished.stat().st_mtime_ns

    ran = []

    def recording(command):
        ran.append(command)
        return subprocess.run(command)

    output = compare_workspace / "report"
    result = compare(DATASET_ID, "2d", RUNS, FOLDS, train=True, device="cpu", output=output, profile_iterations=1,
                     match_memory=True, resamples=RESAMPLES, num_processes=1, run_command=recording)
    trained = [_fold_of(command) for command in ran]
    assert trained == [("nnUNetTrainerVMUNetNoMambaTest", "0"), ("nnUNetTrainerUNetTest", "0")]
    assert finished.stat().st_mtime_ns == written  # the finished run was not trained again

    assert sorted(path.name for path in result.files.values()) == ["compare.csv", "compare.json", "compare.md",
                                                                   "compare.png"]
    report = json.loads((output / "compare.json").read_text())
    rows = report["rows"]
    assert [row["trainer"] for row in rows] == [run.trainer for run in RUNS]

    # the numbers: a direct computation on the same per-case Dice
    scores = score_runs(DATASET_ID, "2d", RUNS, FOLDS, num_processes=1)
    reference = _case_means(scores[RUNS[0]])
    assert len(reference) == 2  # fold 0's two validation cases
    for row, run in zip(rows, RUNS):
        means = _case_means(scores[run])
        assert row["dice"] == pytest.approx(np.mean(list(means.values())))
        for name in scores[run][next(iter(scores[run]))]:
            assert row["dice_per_class"][name] == pytest.approx(
                np.nanmean([classes[name] for classes in scores[run].values()]), nan_ok=True)
        assert row["parameters"] > 0 and row["flops"] > 0 and row["seconds_per_iteration"] > 0
        assert row["gpu_hours"] > 0 and row["inference_seconds_per_case"] > 0
        if run is RUNS[0]:
            assert row["dice_diff"] is None and row["wilcoxon_p"] is None
            continue
        cases = sorted(reference)
        differences = np.array([means[case] - reference[case] for case in cases])
        resampled = differences[np.random.default_rng(0).integers(0, len(cases), (RESAMPLES, len(cases)))]
        assert row["dice_diff"] == pytest.approx(differences.mean())
        assert row["dice_diff_ci95"] == pytest.approx(list(np.percentile(resampled.mean(axis=1), [2.5, 97.5])))
        expected_p = 1.0 if not differences.any() else wilcoxon(differences).pvalue
        assert row["wilcoxon_p"] == pytest.approx(expected_p)
    assert rows[0]["parameters"] > rows[1]["parameters"]  # the twin has no scan parameters
    assert [row["matched_baseline"] for row in rows[:2]] == ["nnUNetTrainerUNetTest"] * 2
    table = (output / "compare.md").read_text()
    assert all(any(line.startswith("|") and run.trainer in line for line in table.splitlines()) for run in RUNS)

    # the command: nothing is left to train; the table printed (no profiles needed to read the runs again)
    arguments = ["compare", "-d", str(DATASET_ID), "-c", "2d", "--folds", *map(str, FOLDS), "--device", "cpu",
                 "-np", "1", "--trainers", *map(str, RUNS)]
    capsys.readouterr()
    assert main([*arguments, "--emit-commands"]) == 0
    assert capsys.readouterr().out == ""
    assert main([*arguments, "--no-profile", "--output", str(compare_workspace / "again")]) == 0
    printed = capsys.readouterr().out
    assert "nnUNetTrainerVMUNetNoMambaTest" in printed and "compare.png" in printed
    assert main([*arguments[:-4], "--trainers", "nnUNetTrainerVMUNetTest", "nnUNetTrainerLightMUNetTest",
                 "--emit-commands"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"nnunet-mamba train {DATASET_ID} 2d {fold} -tr nnUNetTrainerLightMUNetTest -p nnUNetPlans -device cpu --npz"
        for fold in FOLDS]
    assert math.isfinite(rows[1]["dice_diff"])
