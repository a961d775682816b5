import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# two cores: more threads than that only fight each other
os.environ.setdefault("OMP_NUM_THREADS", "2")

# trainers are loaded the one way nnU-Net loads them (nnunet_mamba.discovery.load_trainer): our folder, then the
# test trainers
from e2e_support import ext_trainer_paths  # noqa: E402

os.environ["nnUNet_extTrainer"] = ext_trainer_paths()


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
