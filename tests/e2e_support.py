"""Shared set-up of the end-to-end tests: one synthetic dataset planned and preprocessed per session."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nnunet_mamba import discovery
from nnunet_mamba.pipeline import NnUNetWorkspace
from nnunet_mamba.synthetic import make_synthetic_dataset

DATASET_ID = 991
TEST_TRAINERS = Path(__file__).resolve().parent / "ext_trainers"


def ext_trainer_paths() -> str:
    return os.pathsep.join([str(discovery.trainers_folder()), str(TEST_TRAINERS)])


def prepared_workspace(root: Path, log) -> NnUNetWorkspace:
    workspace = NnUNetWorkspace(root, extra_env={"nnUNet_extTrainer": ext_trainer_paths()}, log=log)
    make_synthetic_dataset(workspace.raw, DATASET_ID, name="MambaTest")
    workspace.plan_and_preprocess(DATASET_ID, ["2d", "3d_fullres"])
    return workspace


def random_training_batch(trainer, generator: torch.Generator, num_labels: int = 3) -> dict:
    """A batch shaped like the trainer's data loader output: data and (deep-supervision) targets."""
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(trainer.batch_size, 1, *patch, generator=generator)
    seg = torch.randint(0, num_labels, (trainer.batch_size, 1, *patch), generator=generator).float()
    scales = trainer._get_deep_supervision_scales()
    if scales is None:
        return {"data": data, "target": seg}
    targets = [torch.nn.functional.interpolate(seg, size=[round(p * s) for p, s in zip(patch, scale)],
                                               mode="nearest-exact") for scale in scales]
    return {"data": data, "target": targets}


def held_out_dice(workspace: NnUNetWorkspace, configuration: str, trainer: str, predictions_name: str) -> dict:
    """Dice per label of fold 0's ``nnUNetv2_predict`` of the test images, by nnU-Net's evaluation."""
    return workspace.score_test_set(DATASET_ID, configuration, trainer, workspace.root / predictions_name).dice


def predict_test_images(workspace: NnUNetWorkspace, configuration: str, trainer: str, predictions_name: str) -> Path:
    """Fold 0's ``nnUNetv2_predict`` of the test images, checked: one label map per reference, of its shape, with
    the dataset's labels only. Returns the predictions folder."""
    import numpy as np
    import SimpleITK as sitk

    dataset = workspace.dataset_folder(DATASET_ID)
    predictions = workspace.root / predictions_name
    workspace.predict(DATASET_ID, configuration, 0, trainer, dataset / "imagesTs", predictions)
    references = sorted((dataset / "labelsTs").glob("*.nii.gz"))
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == [p.name for p in references]
    for reference in references:
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / reference.name)))
        assert predicted.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).shape
        assert set(np.unique(predicted)) <= {0, 1, 2}
    return predictions

