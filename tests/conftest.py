import os
import sys
from pathlib import Path

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# two cores: more threads than that only fight each other
os.environ.setdefault("OMP_NUM_THREADS", "2")
# glibc's defaults in the test process and the commands it runs (nnunet_mamba.cpu_allocator): with freed memory kept,
# a step can reuse pages that malloc_trim leaves resident, and the tests that hold measured resident memory to the
# saved activations read a few MiB short; tests/test_cpu_allocator.py tests the kept setting in processes of its own
os.environ.setdefault("NNUNET_MAMBA_KEEP_FREED_MEMORY", "0")

# trainers are loaded the one way nnU-Net loads them (nnunet_mamba.discovery.load_trainer): our folder, then the
# test trainers
from e2e_support import DATASET_ID, ext_trainer_paths  # noqa: E402

os.environ["nnUNet_extTrainer"] = ext_trainer_paths()

from nnunet_mamba.discovery import load_trainer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains through nnU-Net (minutes); deselect with -m 'not slow'")


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def nnunet_workspace(tmp_path_factory):
    """A synthetic dataset, planned and preprocessed for 2d and 3d_fullres by the stock nnU-Net command."""
    from e2e_support import prepared_workspace

    root = tmp_path_factory.mktemp("nnunet")
    log = open(root / "commands.log", "a")
    try:
        yield prepared_workspace(root, log)
    finally:
        log.close()


@pytest.fixture
def make_trainer(nnunet_workspace, monkeypatch):
    """Trainers on CPU for the synthetic dataset, with nnU-Net's paths pointing into the test workspace."""
    for key, value in nnunet_workspace.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    preprocessed = nnunet_workspace.preprocessed / nnunet_workspace.dataset_folder(DATASET_ID).name

    def make(trainer, configuration="2d", continue_training=False):
        """``trainer``: a name nnU-Net finds, or a trainer class."""
        trainer_class = load_trainer(trainer) if isinstance(trainer, str) else trainer
        plans = load_json(str(preprocessed / "nnUNetPlans.json"))
        plans["continue_training"] = continue_training  # nnUNetv2_train adds this (--c) before building the trainer
        torch.manual_seed(0)
        return trainer_class(plans, configuration, 0, load_json(str(preprocessed / "dataset.json")),
                             torch.device("cpu"))

    return make
