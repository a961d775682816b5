"""Shared set-up of the end-to-end tests: one synthetic dataset planned and preprocessed per session."""
from __future__ import annotations

import os
from pathlib import Path

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
