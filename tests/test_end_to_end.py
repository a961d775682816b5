"""The stock nnU-Net commands, run as subprocesses, with our trainers: plan, train, resume, predict, evaluate.

Each end-to-end behaviour is proven once: a hard-killed VM-UNet run resumed with --c that then learns (2d), and
DSVM-UNet's heads travelling through a resume in 2d and 3d_fullres, followed by prediction, and
nnUNetv2_find_best_configuration over those two configurations.
"""
import json
import re

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from e2e_support import DATASET_ID, predict_test_images
from nnunet_mamba.training.loss_terms import PLOT_NAME
from nnunet_mamba.training.self_distillation import TERM_NAMES
from nnunet_mamba.training.trainer_base import COMPILE_DISABLED_REASON
from nnunet_mamba.training.training_modules import TRAINING_MODULES_KEY

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerVMUNetTest"
DSVM_TRAINER = "nnUNetTrainerDSVMUNetTest"


def _epochs_in_log(output_folder):
    text = sorted(output_folder.glob("training_log_*.txt"))[-1].read_text()
    return [int(m) for m in re.findall(r"^\S+ \S+: Epoch (\d+)\s*$", text, flags=re.M)]


def _adam_steps(checkpoint) -> set:
    return {int(state["step"]) for state in checkpoint["optimizer_state"]["state"].values()}


def test_killed_run_resumes_from_its_latest_checkpoint_and_learns(nnunet_workspace):
    workspace = nnunet_workspace
    output = workspace.trainer_output(DATASET_ID, "2d", 0, TRAINER)
    env = {"NNUNET_MAMBA_TEST_EPOCHS": "6"}  # the demo's 6 x 25 iterations

    # SIGKILL in the middle of epoch 2: epochs 0 and 1 are in checkpoint_latest.pth, nothing else is final
    with pytest.raises(RuntimeError, match="exit code -9"):
        workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu",
                      env=workspace.env(**env, NNUNET_MAMBA_TEST_KILL_AT="2:10"))
    latest = torch.load(output / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 2 and not (output / "checkpoint_final.pth").exists()
    assert _adam_steps(latest) == {2 * 25}

    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c",
                  env=workspace.env(**env))
    assert _epochs_in_log(output) == [2, 3, 4, 5]  # continued at the saved epoch, not from 0
    assert COMPILE_DISABLED_REASON in sorted(output.glob("training_log_*.txt"))[-1].read_text()
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 6 and final["trainer_name"] == TRAINER
    assert not (output / "checkpoint_latest.pth").exists()
    # the optimiser state came back too: Adam counted every step of both runs, none of the killed partial epoch
    assert _adam_steps(final) == {6 * 25}
    assert any(k.startswith("decoder.seg_layers.") for k in final["network_weights"])

    # what the demo does after training: predict and score the test images, draw one
    score = workspace.score_test_set(DATASET_ID, "2d", TRAINER, workspace.root / "pred_2d")
    dice = score.dice
    # an empty prediction scores 0 on both labels; a network that learned scores clearly above it
    # (seen on 2 cores after 6 x 25 iterations: 0.61 / 0.70; after 8 x 25: 0.72 / 0.71)
    assert min(dice["1"], dice["2"]) > 0.2 and (dice["1"] + dice["2"]) / 2 > 0.4, dice
    assert score.report().splitlines() == [
        f"  2d: test Dice per label: 1 sphere {dice['1']:.3f}, 2 cube {dice['2']:.3f}",
        f"  2d: pictures: {workspace.root / 'pred_2d.png'} (test case), {output / 'progress.png'} (training curves)"]
    picture = imread(score.figure)
    assert picture.shape[2] in (3, 4) and picture.shape[1] > 2 * picture.shape[0]  # three panels side by side
    assert score.figure.stat().st_size < 200_000 and score.progress.is_file()
    validation = json.loads((output / "validation" / "summary.json").read_text())
    assert validation["foreground_mean"]["Dice"] > 0.4, validation["foreground_mean"]  # seen: 0.69


@pytest.fixture(scope="module")
def dsvm_runs(nnunet_workspace):
    """DSVM-UNet trained for one epoch, then continued with --c to two, in 2d and 3d_fullres."""
    workspace = nnunet_workspace
    runs = {}
    for configuration in ("2d", "3d_fullres"):
        output = workspace.trainer_output(DATASET_ID, configuration, 0, DSVM_TRAINER)
        workspace.run("nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", DSVM_TRAINER, "-device", "cpu",
                      env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="1", NNUNET_MAMBA_TEST_SKIP_VALIDATION="1"))
        first = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        workspace.run("nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", DSVM_TRAINER, "-device", "cpu",
                      "--c", env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="2"))
        runs[configuration] = (output, first)
    return runs


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_dsvm_heads_travel_through_resume_and_predict_is_plain_vm_unet(nnunet_workspace, dsvm_runs, configuration):
    workspace = nnunet_workspace
    output, first = dsvm_runs[configuration]
    assert _epochs_in_log(output) == [1]
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    # the heads travel in the checkpoint, next to plain VM-UNet weights, and kept training after --c
    heads, first_heads = final[TRAINING_MODULES_KEY]["distillation"], first[TRAINING_MODULES_KEY]["distillation"]
    assert heads.keys() == first_heads.keys()
    assert any(not torch.equal(first_heads[k], heads[k]) for k in heads)
    assert final["network_weights"].keys() == first["network_weights"].keys()
    assert not any("distill" in key for key in final["network_weights"])
    for name in TERM_NAMES.values():  # one value per epoch, across the resume
        values = final["loss_term_logging"][name]
        assert len(values) == 2 and all(np.isfinite(values))
        assert f"train_{name}" in sorted(output.glob("training_log_*.txt"))[-1].read_text()
    assert (output / PLOT_NAME).stat().st_size > 0

    predict_test_images(workspace, configuration, DSVM_TRAINER, f"pred_dsvm_{configuration}")


def test_find_best_configuration_over_our_trained_models(nnunet_workspace, dsvm_runs):
    workspace = nnunet_workspace
    workspace.run("nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", "2d", "3d_fullres", "-tr", DSVM_TRAINER,
                  "-f", "0", "--disable_ensembling", "-np", "1")
    dataset = workspace.dataset_folder(DATASET_ID).name
    info = json.loads((workspace.results / dataset / "inference_information.json").read_text())
    selected = info["best_model_or_ensemble"]["selected_model_or_models"][0]
    assert selected["trainer"] == DSVM_TRAINER and selected["configuration"] in ("2d", "3d_fullres")
    assert set(selected) >= {"configuration", "plans_identifier"}
