"""The runs `nnunet-mamba compare` compares: fold states, commands for what is missing, refusals and scoring, on fake
nnU-Net folders (hand-written checkpoints, plans and NIfTI predictions; nothing is trained)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunet_mamba.comparison.runs import (
    ComparisonError,
    TrainerRun,
    check_comparable,
    fold_folder,
    fold_state,
    in_this_python,
    missing_plans,
    plan_missing,
    score_runs,
    slurm_array,
    train_missing,
    training_commands,
)
from support import write_nifti

DATASET = 42
NAME = "Dataset042_Toy"
CONFIGURATION = "3d_fullres"
CASES = ("case_0", "case_1", "case_2", "case_3")
SPLITS = [{"train": ["case_2", "case_3"], "val": ["case_0", "case_1"]},
          {"train": ["case_0", "case_1"], "val": ["case_2", "case_3"]}]
LABELS = {"background": 0, "liver": 1, "tumour": 2}
SHAPE = (4, 6, 6)

BASELINE = TrainerRun("nnUNetTrainer")
MAMBA = TrainerRun("nnUNetTrainerVMUNet")
RESENC_M = TrainerRun("nnUNetTrainer", "nnUNetResEncUNetMPlans")


def plans_content(plans_name, **configuration_changes):
    """A plans file with the fields nnU-Net's PlansManager and the comparison read."""
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [4, 6, 6], "median_image_size_in_voxels": [4, 6, 6],
        "spacing": [3.0, 0.8, 0.8], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {"n_stages": 2}, "_kw_requires_import": []},
        "batch_dice": False,
    }
    configuration.update(configuration_changes)
    return {
        "dataset_name": NAME, "plans_name": plans_name, "original_median_spacing_after_transp": [3.0, 0.8, 0.8],
        "original_median_shape_after_transp": [4, 6, 6], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 40.0, "std": 20.0, "percentile_00_5": -50.0,
                                                              "percentile_99_5": 150.0}},
        # the cascade's configuration inherits its preprocessing, as nnU-Net's plans do
        "configurations": {CONFIGURATION: configuration,
                           "3d_cascade_fullres": {"inherits_from": CONFIGURATION, "previous_stage": "3d_lowres"}},
    }


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """nnU-Net's three folders with one preprocessed dataset: dataset.json, splits, nnUNetPlans, references."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    dataset = tmp_path / "nnUNet_preprocessed" / NAME
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps(
        {"labels": LABELS, "channel_names": {"0": "CT"}, "numTraining": len(CASES), "file_ending": ".nii.gz"}))
    (dataset / "splits_final.json").write_text(json.dumps(SPLITS))
    write_plans(tmp_path, plans_content("nnUNetPlans"))
    references = {}
    rng = np.random.default_rng(0)
    for case in CASES:
        references[case] = rng.integers(0, 2, SHAPE).astype(np.uint8)  # liver noise
        write_nifti(dataset / "gt_segmentations" / f"{case}.nii.gz", references[case])
    return tmp_path


def write_plans(root, content):
    (root / "nnUNet_preprocessed" / NAME / f"{content['plans_name']}.json").write_text(json.dumps(content))


def make_fold(run, fold, state="finished", predictions=None):
    """A fold folder as nnUNetv2_train leaves it in ``state``; ``predictions``: case -> label array (default: the
    split's validation cases, all background)."""
    folder = fold_folder(DATASET, CONFIGURATION, run, fold)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = {"finished": ["checkpoint_final.pth", "checkpoint_best.pth"],
                   "needs_validation": ["checkpoint_final.pth", "checkpoint_latest.pth"],
                   "interrupted": ["checkpoint_best.pth"], "missing": []}[state]
    for name in checkpoints:
        (folder / name).write_bytes(b"not a real checkpoint")
    if state == "finished":
        if predictions is None:
            predictions = {case: np.zeros(SHAPE, np.uint8) for case in SPLITS[fold]["val"]}
        for case, array in predictions.items():
            write_nifti(folder / "validation" / f"{case}.nii.gz", array)
            (folder / "validation" / f"{case}.npz").write_bytes(b"probabilities")  # --npz leaves these beside
        (folder / "validation" / "summary.json").write_text("{}")
    return folder


def test_parse_trainer_and_plans():
    assert TrainerRun.parse("nnUNetTrainerVMUNet") == TrainerRun("nnUNetTrainerVMUNet", "nnUNetPlans")
    assert TrainerRun.parse("nnUNetTrainer:nnUNetResEncUNetLPlans") == TrainerRun("nnUNetTrainer",
                                                                                   "nnUNetResEncUNetLPlans")
    for text in ("", ":nnUNetPlans", "nnUNetTrainer:", "nnUNetTrainer: "):
        with pytest.raises(ComparisonError, match="empty; write TRAINER or TRAINER:PLANS"):
            TrainerRun.parse(text)
    with pytest.raises(ComparisonError, match="'my trainer' holds characters"):
        TrainerRun.parse("my trainer")


def test_fold_folder_and_every_state(workspace):
    assert fold_folder(DATASET, CONFIGURATION, RESENC_M, 3) == (
        workspace / "nnUNet_results" / NAME / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres" / "fold_3")
    assert fold_state(DATASET, CONFIGURATION, MAMBA, 0) == "missing"
    make_fold(MAMBA, 0, "finished")
    make_fold(MAMBA, 1, "needs_validation")
    make_fold(MAMBA, 2, "missing")
    (fold_folder(DATASET, CONFIGURATION, MAMBA, 2) / "checkpoint_latest.pth").write_bytes(b"x")
    assert [fold_state(DATASET, CONFIGURATION, MAMBA, fold) for fold in range(3)] == [
        "finished", "needs_validation", "interrupted"]
    # validation predictions without their summary.json: the validation did not finish
    (fold_folder(DATASET, CONFIGURATION, MAMBA, 0) / "validation" / "summary.json").unlink()
    assert fold_state(DATASET, CONFIGURATION, MAMBA, 0) == "needs_validation"
    # a best checkpoint alone is an interrupted run too (nnU-Net's --c falls back to it)
    make_fold(MAMBA, 3, "interrupted")
    assert fold_state(DATASET, CONFIGURATION, MAMBA, 3) == "interrupted"
    # an empty folder (a run that died before its first checkpoint) starts again
    fold_folder(DATASET, CONFIGURATION, MAMBA, 4).mkdir(parents=True)
    assert fold_state(DATASET, CONFIGURATION, MAMBA, 4) == "missing"


def test_unknown_dataset_and_unset_folders_are_named(workspace, monkeypatch):
    with pytest.raises(ComparisonError, match="dataset 7 not found"):
        fold_state(7, CONFIGURATION, MAMBA, 0)
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(ComparisonError, match="nnUNet_results is not set"):
        fold_state(DATASET, CONFIGURATION, MAMBA, 0)


def four_states(run):
    make_fold(run, 0, "finished")
    make_fold(run, 1, "needs_validation")
    make_fold(run, 2, "interrupted")
    # fold 3: missing


def test_training_commands_for_every_state_and_none_for_finished(workspace):
    four_states(MAMBA)
    for fold in range(4):
        make_fold(BASELINE, fold, "finished" if fold < 2 else "needs_validation")
    base = ["nnunet-mamba", "train", "42", CONFIGURATION]
    mamba = ["-tr", "nnUNetTrainerVMUNet", "-p", "nnUNetPlans", "-device", "cpu", "--npz"]
    baseline = ["-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "-device", "cpu", "--npz"]
    assert training_commands(DATASET, CONFIGURATION, [BASELINE, MAMBA], range(4), "cpu") == [
        [*base, "2", *baseline, "--val"],
        [*base, "3", *baseline, "--val"],
        [*base, "1", *mamba, "--val"],
        [*base, "2", *mamba, "--c"],
        [*base, "3", *mamba],
    ]
    assert training_commands(DATASET, CONFIGURATION, [BASELINE], [0, 1]) == []


def test_the_train_command_takes_the_flags_the_commands_use(repo_root):
    # the commands are run as `python -m nnunet_mamba.cli train` and printed as `nnunet-mamba train`
    result = subprocess.run(in_this_python(["nnunet-mamba", "train", "-h"]), capture_output=True, text=True,
                            cwd=repo_root, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("-tr", "-p", "-device", "--npz", "--c", "--val"):
        assert f"{flag} " in result.stdout or f"{flag}\n" in result.stdout, flag


def test_slurm_array_maps_each_task_to_its_trainer_and_fold(workspace, tmp_path):
    four_states(MAMBA)
    finished_runs(BASELINE)
    make_fold(RESENC_M, 0, "interrupted")
    runs = [BASELINE, MAMBA, RESENC_M]
    script = slurm_array(DATASET, CONFIGURATION, runs, range(2))
    # unfinished: VMUNet fold 1 (needs validation), ResEnc M fold 0 (interrupted) and fold 1 (missing)
    assert "#SBATCH --array=0-2" in script
    assert "#   task 1: nnUNetTrainer -p nnUNetResEncUNetMPlans fold 0 (interrupted)" in script
    assert "sbatch --array=3 compare_folds.sh --c" in script
    (tmp_path / "compare_folds.sh").write_text(script)
    # run each task with a stand-in nnunet-mamba that prints what it was asked
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "nnunet-mamba").write_text('#!/usr/bin/env bash\n[ "$1" = env ] || echo "$@"\n')
    (bin_folder / "nnunet-mamba").chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_folder}:{os.environ['PATH']}"}
    tasks = []
    for task, extra in ((0, []), (1, []), (2, []), (2, ["--c"])):
        result = subprocess.run(["bash", str(tmp_path / "compare_folds.sh"), *extra], capture_output=True, text=True,
                                env={**environment, "SLURM_ARRAY_TASK_ID": str(task)}, timeout=30)
        assert result.returncode == 0, result.stderr
        tasks.append(result.stdout.split())
    options = ["-device", "cuda", "--npz"]
    assert tasks == [
        ["train", "42", CONFIGURATION, "1", "-tr", "nnUNetTrainerVMUNet", "-p", "nnUNetPlans", *options, "--val"],
        ["train", "42", CONFIGURATION, "0", "-tr", "nnUNetTrainer", "-p", "nnUNetResEncUNetMPlans", *options, "--c"],
        ["train", "42", CONFIGURATION, "1", "-tr", "nnUNetTrainer", "-p", "nnUNetResEncUNetMPlans", *options],
        ["train", "42", CONFIGURATION, "1", "-tr", "nnUNetTrainer", "-p", "nnUNetResEncUNetMPlans", *options, "--c"],
    ]
    with pytest.raises(ComparisonError, match="nothing to submit"):
        slurm_array(DATASET, CONFIGURATION, [BASELINE], range(2))


class FakeRun:
    """subprocess.run's stand-in: records each command, fails the ``fail_at``-th (0-based)."""

    def __init__(self, fail_at=None):
        self.commands, self.fail_at = [], fail_at

    def __call__(self, command):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, 1 if len(self.commands) - 1 == self.fail_at else 0)


def test_train_missing_runs_the_commands_in_this_python(workspace):
    four_states(MAMBA)
    fake = FakeRun()
    ran = train_missing(DATASET, CONFIGURATION, [MAMBA], range(4), "cpu", run_command=fake)
    expected = [in_this_python(command) for command in training_commands(DATASET, CONFIGURATION, [MAMBA], range(4),
                                                                           "cpu")]
    assert ran == fake.commands == expected
    assert ran[0][:4] == [sys.executable, "-m", "nnunet_mamba.cli", "train"]


def test_train_missing_stops_at_the_first_failure_naming_it(workspace):
    four_states(MAMBA)
    fake = FakeRun(fail_at=1)
    with pytest.raises(ComparisonError) as caught:
        train_missing(DATASET, CONFIGURATION, [MAMBA], range(4), "cpu", run_command=fake)
    assert len(fake.commands) == 2  # fold 3 was not started
    message = str(caught.value)
    assert "training nnUNetTrainerVMUNet (plans nnUNetPlans) fold 2 failed with exit code 1" in message
    assert "finished so far are kept" in message and "resumes" in message


def test_nnunet_entry_points_take_the_planning_flags(repo_root):
    for program, flags in (("nnUNetv2_plan_experiment", ("-d", "-pl")),
                           ("nnUNetv2_preprocess", ("-d", "-plans_name", "-c"))):
        result = subprocess.run(in_this_python([program, "-h"]), capture_output=True, text=True, cwd=repo_root,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        for flag in flags:
            assert f" {flag} " in result.stdout, (program, flag)


def test_plan_missing_plans_with_nnunets_planners(workspace):
    fingerprint = workspace / "nnUNet_preprocessed" / NAME / "dataset_fingerprint.json"
    runs = [MAMBA, RESENC_M, TrainerRun("nnUNetTrainer", "nnUNetResEncUNetLPlans"), BASELINE]
    assert missing_plans(DATASET, runs) == ["nnUNetResEncUNetMPlans", "nnUNetResEncUNetLPlans"]
    with pytest.raises(ComparisonError, match="dataset_fingerprint.json does not exist"):
        plan_missing(DATASET, CONFIGURATION, runs, run_command=FakeRun())
    fingerprint.write_text("{}")

    def planner(command):
        # nnU-Net's planner writes the plans; ResEnc L here reuses nnUNetPlans' 3d_fullres data, which exists
        if "-pl" in command and command[-1] == "nnUNetPlannerResEncL":
            write_plans(workspace, plans_content("nnUNetResEncUNetLPlans"))
            (workspace / "nnUNet_preprocessed" / NAME / "nnUNetPlans_3d_fullres").mkdir()
        return subprocess.CompletedProcess(command, 0)

    fake = FakeRun()
    ran = plan_missing(DATASET, CONFIGURATION, runs, run_command=lambda command: (fake(command), planner(command))[1])
    assert [command[3:] for command in ran] == [
        ["-d", "42", "-pl", "nnUNetPlannerResEncM"],
        ["-d", "42", "-plans_name", "nnUNetResEncUNetMPlans", "-c", CONFIGURATION],
        ["-d", "42", "-pl", "nnUNetPlannerResEncL"],  # its data exist already: not preprocessed again
    ]
    assert ran[0][:2] == [sys.executable, "-c"] and "plan_experiment_entry" in ran[0][2]
    assert "preprocess_entry" in ran[1][2]


def test_plan_missing_runs_nnunets_planner_with_data_augmentation_workers_set_to_one(workspace, monkeypatch):
    # CPU machines set nnUNet_n_proc_DA=0, which nnU-Net's planner hands to torch.set_num_threads (a crash)
    (workspace / "nnUNet_preprocessed" / NAME / "dataset_fingerprint.json").write_text("{}")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    seen = []
    plan_missing(DATASET, CONFIGURATION, [RESENC_M],
                 run_command=lambda command: (seen.append(os.environ["nnUNet_n_proc_DA"]),
                                              subprocess.CompletedProcess(command, 0))[1])
    assert seen == ["1", "1"] and os.environ["nnUNet_n_proc_DA"] == "0"


def test_plan_missing_refuses_plans_no_planner_makes(workspace):
    (workspace / "nnUNet_preprocessed" / NAME / "dataset_fingerprint.json").write_text("{}")
    fake = FakeRun()
    with pytest.raises(ComparisonError) as caught:
        plan_missing(DATASET, CONFIGURATION, [RESENC_M, TrainerRun("nnUNetTrainer", "MyPlans")], run_command=fake)
    assert f"plans file {workspace / 'nnUNet_preprocessed' / NAME / 'MyPlans.json'} does not exist" in str(caught.value)
    assert fake.commands == []  # refused before anything ran
    with pytest.raises(ComparisonError, match="nnunet-mamba plan -d 42 --network"):
        plan_missing(DATASET, CONFIGURATION, [TrainerRun("nnUNetTrainerVMUNet", "nnUNetMambaPlans_vm_unet_8G")],
                     run_command=fake)
    failing = FakeRun(fail_at=0)
    with pytest.raises(ComparisonError, match="`nnUNetv2_plan_experiment -d 42 -pl nnUNetPlannerResEncM` failed"):
        plan_missing(DATASET, CONFIGURATION, [RESENC_M], run_command=failing)


def finished_runs(*runs):
    for run in runs:
        for fold in range(2):
            make_fold(run, fold)


def test_comparable_runs_pass_even_with_other_patch_batch_and_architecture(workspace):
    write_plans(workspace, plans_content("nnUNetResEncUNetMPlans", patch_size=[4, 4, 4], batch_size=7,
                                         architecture={"network_class_name": "ResidualEncoderUNet",
                                                       "arch_kwargs": {}, "_kw_requires_import": []},
                                         spacing=[3.0000000000000004, 0.8, 0.8]))  # the same spacing, rounded
    finished_runs(BASELINE, MAMBA, RESENC_M)
    assert check_comparable(DATASET, CONFIGURATION, [BASELINE, MAMBA, RESENC_M], [0, 1]) is None


def test_refuses_unfinished_folds_naming_trainer_and_folds(workspace):
    finished_runs(BASELINE)
    make_fold(MAMBA, 0, "interrupted")
    with pytest.raises(ComparisonError) as caught:
        check_comparable(DATASET, CONFIGURATION, [BASELINE, MAMBA], [0, 1])
    assert str(caught.value) == (
        "not finished: nnUNetTrainerVMUNet (plans nnUNetPlans) folds 0 (interrupted), 1 (missing); train them with "
        "--train or print the commands with --emit-commands")


def test_refuses_validation_cases_other_than_the_splits(workspace):
    finished_runs(BASELINE)
    make_fold(MAMBA, 0, predictions={case: np.zeros(SHAPE, np.uint8) for case in ("case_0", "case_2")})
    make_fold(MAMBA, 1)
    with pytest.raises(ComparisonError) as caught:
        check_comparable(DATASET, CONFIGURATION, [BASELINE, MAMBA], [0, 1])
    message = str(caught.value)
    assert message.startswith("nnUNetTrainerVMUNet (plans nnUNetPlans) fold 0 was validated on other cases than "
                              "fold 0 of ")
    assert "only there, e.g. case_2" in message and "missing, e.g. case_1" in message
    assert "splits_final.json" in message


def test_refuses_a_fold_beyond_the_splits_that_differs_between_trainers(workspace):
    # fold 2 is beyond splits_final.json (nnU-Net's seeded 80:20 split): the trainers must agree with each other
    finished_runs(BASELINE, MAMBA)
    make_fold(BASELINE, 2, predictions={"case_3": np.zeros(SHAPE, np.uint8)})
    make_fold(MAMBA, 2, predictions={"case_1": np.zeros(SHAPE, np.uint8)})
    with pytest.raises(ComparisonError, match=r"nnUNetTrainerVMUNet \(plans nnUNetPlans\) fold 2 was validated on "
                                              r"other cases than nnUNetTrainer \(plans nnUNetPlans\) fold 2"):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, MAMBA], [0, 1, 2])


@pytest.mark.parametrize("changes, field", [
    ({"spacing": [2.0, 0.8, 0.8]}, "spacing"),
    ({"normalization_schemes": ["ZScoreNormalization"]}, "normalization_schemes"),
    ({"resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}},
     "resampling_fn_data_kwargs"),
    ({"use_mask_for_norm": [True]}, "use_mask_for_norm"),
])
def test_refuses_plans_with_other_preprocessing(workspace, changes, field):
    write_plans(workspace, plans_content("nnUNetResEncUNetMPlans", **changes))
    finished_runs(BASELINE, RESENC_M)
    with pytest.raises(ComparisonError) as caught:
        check_comparable(DATASET, CONFIGURATION, [BASELINE, RESENC_M], [0, 1])
    assert str(caught.value).startswith(f"plans nnUNetResEncUNetMPlans preprocess 3d_fullres otherwise than "
                                        f"nnUNetPlans ({field}: ")


def test_refuses_other_intensity_properties_and_transposition(workspace):
    content = plans_content("nnUNetResEncUNetMPlans")
    content["foreground_intensity_properties_per_channel"]["0"]["mean"] = 41.0
    write_plans(workspace, content)
    with pytest.raises(ComparisonError, match=r"\(foreground_intensity_properties_per_channel: "):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, RESENC_M], [0, 1])
    content = plans_content("nnUNetResEncUNetMPlans")
    content["transpose_forward"] = [2, 0, 1]
    write_plans(workspace, content)
    with pytest.raises(ComparisonError, match=r"\(transpose_forward: \[2, 0, 1\] vs \[0, 1, 2\]\)"):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, RESENC_M], [0, 1])


def test_refuses_a_configuration_absent_from_a_plans_file_and_a_missing_plans_file(workspace):
    content = plans_content("nnUNetResEncUNetMPlans")
    content["configurations"] = {"2d": content["configurations"][CONFIGURATION]}
    write_plans(workspace, content)
    with pytest.raises(ComparisonError, match="plans nnUNetResEncUNetMPlans have no configuration '3d_fullres' "
                                              r"\(they have 2d\)"):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, RESENC_M], [0, 1])
    # the cascade configuration inherits 3d_fullres' preprocessing: compared after resolving it
    assert check_comparable(DATASET, "3d_cascade_fullres", [BASELINE], []) is None
    with pytest.raises(ComparisonError, match=r"nnUNetResEncUNetLPlans.json does not exist: --plan-missing makes it"):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, TrainerRun("nnUNetTrainer", "nnUNetResEncUNetLPlans")],
                         [0, 1])


def dice(prediction, reference):
    return 2 * np.sum(prediction & reference) / (np.sum(prediction) + np.sum(reference))


def test_score_runs_is_the_dice_of_the_volumes_and_nan_for_an_absent_class(workspace):
    references = {}
    for case in CASES:
        references[case] = np.zeros(SHAPE, np.uint8)
        references[case][1:3, 1:5, 1:5] = 1
    references["case_0"][1:3, 2:4, 2:4] = 2  # tumour in case_0 and case_2 only
    references["case_2"][2, 2:4, 2:4] = 2
    for case, array in references.items():
        write_nifti(workspace / "nnUNet_preprocessed" / NAME / "gt_segmentations" / f"{case}.nii.gz", array)
    rng = np.random.default_rng(1)
    predictions = {run: {} for run in (BASELINE, MAMBA)}
    for run in predictions:
        for case in CASES:
            prediction = rng.integers(0, 2, SHAPE).astype(np.uint8) * references[case].clip(max=1)
            prediction[0, 0, :] = 1  # a false positive liver row
            predictions[run][case] = prediction
        predictions[run]["case_0"][1, 2:4, 1:4] = 2  # tumour found in part; missed in case_2
        predictions[run]["case_1"][3, 5, 5] = 2  # a false tumour where there is none
    for run in predictions:
        for fold in range(2):
            make_fold(run, fold, predictions={case: predictions[run][case] for case in SPLITS[fold]["val"]})

    scores = score_runs(DATASET, CONFIGURATION, [BASELINE, MAMBA], [0, 1], num_processes=1)
    assert list(scores) == [BASELINE, MAMBA]
    for run in predictions:
        assert sorted(scores[run]) == list(CASES)
        for case in CASES:
            prediction, reference = predictions[run][case], references[case]
            assert scores[run][case]["liver"] == pytest.approx(dice(prediction == 1, reference == 1))
        assert scores[run]["case_0"]["tumour"] == pytest.approx(dice(predictions[run]["case_0"] == 2,
                                                                     references["case_0"] == 2))
        assert scores[run]["case_1"]["tumour"] == 0.0  # predicted, not there
        assert scores[run]["case_2"]["tumour"] == 0.0  # there, missed
        assert math.isnan(scores[run]["case_3"]["tumour"])  # in neither file
    assert scores[BASELINE]["case_0"]["liver"] != scores[MAMBA]["case_0"]["liver"]


def test_score_runs_refuses_a_case_in_two_folds_and_a_missing_validation(workspace):
    make_fold(MAMBA, 0)
    make_fold(MAMBA, 1, predictions={case: np.zeros(SHAPE, np.uint8) for case in ("case_1", "case_2")})
    with pytest.raises(ComparisonError, match="case case_1 is a validation case of folds 0 and 1"):
        score_runs(DATASET, CONFIGURATION, [MAMBA], [0, 1], num_processes=1)
    make_fold(BASELINE, 0, "needs_validation")
    with pytest.raises(ComparisonError, match=r"nnUNetTrainer \(plans nnUNetPlans\) fold 0 has no validation folder"):
        score_runs(DATASET, CONFIGURATION, [BASELINE], [0], num_processes=1)


def test_refuses_folds_without_a_readable_splits_file(workspace):
    finished_runs(BASELINE, MAMBA)
    splits = workspace / "nnUNet_preprocessed" / NAME / "splits_final.json"
    splits.write_text(json.dumps({"val": ["case_0"]}))
    with pytest.raises(ComparisonError, match="splits_final.json is not nnU-Net's list of"):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, MAMBA], [0, 1])
    splits.unlink()
    with pytest.raises(ComparisonError, match="splits_final.json does not exist, so the folds' validation cases"):
        check_comparable(DATASET, CONFIGURATION, [BASELINE, MAMBA], [0, 1])


def test_the_emitted_slurm_script_starts_with_its_shebang_and_names_the_planning_first(workspace, capsys):
    from nnunet_mamba.cli import main

    assert main(["compare", "-d", str(DATASET), "-c", CONFIGURATION, "--folds", "0", "--emit-slurm", "--plan-missing",
                 "--trainers", str(MAMBA), "nnUNetTrainer:nnUNetResEncUNetLPlans"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"  # sbatch reads the interpreter from the first line
    assert lines[1:3] == [
        f"# run first, once: nnUNetv2_plan_experiment -d {DATASET} -pl nnUNetPlannerResEncL",
        f"# run first, once: nnUNetv2_preprocess -d {DATASET} -plans_name nnUNetResEncUNetLPlans -c {CONFIGURATION}"]
    assert "#SBATCH --array=0-1" in lines
