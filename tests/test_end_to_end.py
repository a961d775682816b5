"""The stock nnU-Net commands, run as subprocesses, with our trainers: plan, train, resume, predict, evaluate."""
import json
import re

import pytest
import torch

import numpy as np
import SimpleITK as sitk

from e2e_support import DATASET_ID
from nnunet_mamba.training.self_distillation import CHECKPOINT_KEY, LOG_KEYS, PLOT_NAME
from nnunet_mamba.training.trainer_base import COMPILE_DISABLED_REASON

TRAINER = "nnUNetTrainerVMUNetTest"
DSVM_TRAINER = "nnUNetTrainerDSVMUNetTest"


def _epochs_in_log(output_folder, newest_only=True):
    logs = sorted(output_folder.glob("training_log_*.txt"))
    texts = [logs[-1].read_text()] if newest_only else [p.read_text() for p in logs]
    return [int(m) for text in texts for m in re.findall(r"^\S+ \S+: Epoch (\d+)\s*$", text, flags=re.M)]


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_train_resume_predict_evaluate(nnunet_workspace, configuration, monkeypatch):
    workspace = nnunet_workspace
    output = workspace.trainer_output(DATASET_ID, configuration, 0, TRAINER)

    # a run stopped after 2 epochs ...
    workspace.extra_env["NNUNET_MAMBA_TEST_EPOCHS"] = "2"
    workspace.train(DATASET_ID, configuration, 0, TRAINER)
    first = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert first["current_epoch"] == 2  # epochs done
    assert first["init_args"]["configuration"] == configuration

    # ... continues with --c from the saved epoch instead of starting over
    workspace.extra_env["NNUNET_MAMBA_TEST_EPOCHS"] = "8"
    workspace.train(DATASET_ID, configuration, 0, TRAINER, resume=True)
    assert _epochs_in_log(output) == [2, 3, 4, 5, 6, 7]
    assert COMPILE_DISABLED_REASON in sorted(output.glob("training_log_*.txt"))[-1].read_text()
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 8
    assert final["trainer_name"] == TRAINER
    assert any(k.startswith("decoder.deep_heads") for k in final["network_weights"])

    dataset = workspace.dataset_folder(DATASET_ID)
    predictions = workspace.root / f"pred_{configuration}"
    workspace.predict(DATASET_ID, configuration, 0, TRAINER, dataset / "imagesTs", predictions)
    summary = workspace.evaluate(dataset / "labelsTs", predictions, DATASET_ID)
    dice = {label: values["Dice"] for label, values in summary["mean"].items()}
    # an empty prediction scores 0 on both labels; a network that learned scores clearly above it
    # (seen on 2 cores: 2d 0.72 / 0.71, 3d_fullres 0.62 / 0.58)
    assert min(dice["1"], dice["2"]) > 0.2 and (dice["1"] + dice["2"]) / 2 > 0.4, dice

    validation = json.loads((output / "validation" / "summary.json").read_text())
    assert validation["foreground_mean"]["Dice"] > 0.4, validation["foreground_mean"]  # seen: 0.76, 0.66


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_dsvm_train_resume_predict(nnunet_workspace, configuration):
    workspace = nnunet_workspace
    output = workspace.trainer_output(DATASET_ID, configuration, 0, DSVM_TRAINER)
    workspace.extra_env["NNUNET_MAMBA_TEST_EPOCHS"] = "1"
    workspace.train(DATASET_ID, configuration, 0, DSVM_TRAINER)
    first = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)

    workspace.extra_env["NNUNET_MAMBA_TEST_EPOCHS"] = "2"
    workspace.train(DATASET_ID, configuration, 0, DSVM_TRAINER, resume=True)
    assert _epochs_in_log(output) == [1]
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    # the heads travel in the checkpoint, next to plain VM-UNet weights, and kept training after --c
    assert final[CHECKPOINT_KEY].keys() == first[CHECKPOINT_KEY].keys()
    assert any(not torch.equal(first[CHECKPOINT_KEY][k], final[CHECKPOINT_KEY][k]) for k in first[CHECKPOINT_KEY])
    assert final["network_weights"].keys() == first["network_weights"].keys()
    assert not any("distill" in key for key in final["network_weights"])
    for key in LOG_KEYS.values():  # one value per epoch, across the resume
        assert len(final["logging"][key]) == 2 and all(np.isfinite(final["logging"][key]))
    log = sorted(output.glob("training_log_*.txt"))[-1].read_text()
    assert "train_projection_distillation" in log and "train_progressive_distillation" in log
    assert (output / PLOT_NAME).stat().st_size > 0

    dataset = workspace.dataset_folder(DATASET_ID)
    predictions = workspace.root / f"pred_dsvm_{configuration}"
    workspace.predict(DATASET_ID, configuration, 0, DSVM_TRAINER, dataset / "imagesTs", predictions)
    references = sorted((dataset / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == [p.name for p in references]
    for reference in references:
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / reference.name)))
        assert predicted.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).shape
        assert set(np.unique(predicted)) <= {0, 1, 2}


def test_find_best_configuration_over_our_trained_models(nnunet_workspace):
    """Runs after the two trainings above (same session workspace)."""
    workspace = nnunet_workspace
    for configuration in ("2d", "3d_fullres"):
        if not (workspace.trainer_output(DATASET_ID, configuration, 0, TRAINER) / "checkpoint_final.pth").exists():
            pytest.fail(f"{configuration} was not trained: run the whole module, this test uses its trainings")
    workspace.run("nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", "2d", "3d_fullres", "-tr", TRAINER,
                  "-f", "0", "--disable_ensembling", "-np", "1")
    dataset = workspace.dataset_folder(DATASET_ID).name
    info = json.loads((workspace.results / dataset / "inference_information.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == TRAINER
    assert set(info["best_model_or_ensemble"]["selected_model_or_models"][0]) >= {"configuration", "plans_identifier"}
