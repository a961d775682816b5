"""Profiling a trainer as nnUNetv2_train builds it (ours and nnU-Net's), and the resources our trainers log per
epoch into the checkpoint's ``logging`` (``nnunet-mamba compare``)."""
import multiprocessing
import resource
import tempfile
from pathlib import Path

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from e2e_support import DATASET_ID
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mamba.benchmarks.flops import count_flops
from nnunet_mamba.comparison.profile import ProfileError, profile_trainer, training_resources
from nnunet_mamba.discovery import load_trainer
from nnunet_mamba.training import MambaTrainerBase, QuickCPURun
from nnunet_mamba.training.trainer_base import RESOURCE_LOG_KEYS


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on the two shared cores of a test machine a second one mostly waits for the first (its
    OpenMP barriers make steps many times slower when the other core is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def nnunet_env(nnunet_workspace, monkeypatch, tmp_path):
    """The workspace's nnU-Net folders, but an empty results folder of this test's own, and temporary folders under
    ``tmp_path/tmp``. Returns (results folder, temporary folder)."""
    for key, value in nnunet_workspace.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    results, temporary = tmp_path / "results", tmp_path / "tmp"
    results.mkdir()
    temporary.mkdir()
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    return results, temporary


def _network_as_trained(trainer_name: str, configuration: str):
    """The network the trainer trains, built directly from the plans (deep supervision as in training)."""
    from nnunetv2.paths import nnUNet_preprocessed

    folder = Path(nnUNet_preprocessed.get())
    folder = next(folder.glob(f"Dataset{DATASET_ID}_*"))
    plans_manager = PlansManager(load_json(str(folder / "nnUNetPlans.json")))
    dataset_json = load_json(str(folder / "dataset.json"))
    configuration_manager = plans_manager.get_configuration(configuration)
    trainer = load_trainer(trainer_name)
    network = trainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=True)
    return network.train(), configuration_manager


@pytest.mark.parametrize("trainer, augmentation_workers", [("nnUNetTrainer", "0"), ("nnUNetTrainerVMUNetQuick", "1")])
def test_profile_measures_the_trainer_nnunet_builds_and_leaves_no_trace(nnunet_env, monkeypatch, trainer,
                                                                        augmentation_workers):
    results, temporary = nnunet_env
    monkeypatch.setenv("nnUNet_n_proc_DA", augmentation_workers)  # "1": worker processes that must be shut down
    children_before = set(multiprocessing.active_children())
    threads_before = torch.get_num_threads()

    row = profile_trainer(DATASET_ID, "2d", trainer, iterations=2, warmup=0, predict_cases=1)

    assert set(multiprocessing.active_children()) == children_before
    assert torch.get_num_threads() == threads_before
    assert list(results.iterdir()) == []  # no fold, no log, no plans copy
    assert [p for p in temporary.iterdir() if p.name.startswith("nnunet-mamba-profile-")] == []
    assert (row["trainer"], row["plans"], row["configuration"], row["device"]) == (trainer, "nnUNetPlans", "2d",
                                                                                   "cpu")
    for key in ("flops", "peak_memory_mib", "seconds_per_iteration", "inference_seconds_per_case"):
        assert row[key] > 0, key
    network, configuration = _network_as_trained(trainer, "2d")
    assert row["parameters"] == sum(p.numel() for p in network.parameters())
    assert row["patch_size"] == list(configuration.patch_size)
    assert row["batch_size"] == configuration.batch_size
    assert row["flops"] == count_flops(network, torch.zeros(1, 1, *configuration.patch_size)).total_macs


def test_profile_refusals_name_the_thing_and_the_fix(nnunet_env):
    with pytest.raises(ProfileError, match=r"configuration '3d_lowres' is not in the plans nnUNetPlans .* 2d"):
        profile_trainer(DATASET_ID, "3d_lowres", "nnUNetTrainer")
    with pytest.raises(ProfileError, match=r"nnUNetResEncUNetMPlans .*nnUNetv2_plan_and_preprocess -d 991 -pl "
                                           r"nnUNetPlannerResEncM"):
        profile_trainer(DATASET_ID, "2d", "nnUNetTrainer", plans="nnUNetResEncUNetMPlans")
    with pytest.raises(ProfileError, match=r"cannot find the trainer 'nnUNetTrainerNoSuchThing'"):
        profile_trainer(DATASET_ID, "2d", "nnUNetTrainerNoSuchThing")
    with pytest.raises(ProfileError, match=r"dataset 998 is not found.*nnUNetv2_plan_and_preprocess -d 998"):
        profile_trainer(998, "2d", "nnUNetTrainer")


class _OneShortEpoch(QuickCPURun, MambaTrainerBase):
    """One epoch of one training and one validation iteration of the smallest network."""

    network_name = "ultralbm_unet_t"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.enable_deep_supervision = False  # the network has a single output
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1


class _TwoShortEpochs(_OneShortEpoch):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2


def test_our_trainers_log_each_epochs_peak_memory_and_seconds(make_trainer, tmp_path):
    trainer = make_trainer(_OneShortEpoch)
    trainer.run_training()

    logged = trainer.logger.get_checkpoint()
    (peak,), (seconds,) = logged["peak_memory_mib"], logged["epoch_seconds"]
    (start,), (end,) = logged["epoch_start_timestamps"], logged["epoch_end_timestamps"]
    assert 0 < seconds <= end - start + 0.05 and seconds > (end - start) - 0.5
    assert 0 < peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS on CPU
    folder = Path(trainer.output_folder)
    log = sorted(folder.glob("training_log_*.txt"))[-1].read_text()
    assert f"Peak memory: {peak:.0f} MiB (process peak RSS)" in log

    resources = training_resources(folder)
    assert resources == {"gpu_hours": pytest.approx((end - start) / 3600), "peak_memory_mib": peak, "epochs": 1,
                         "device": "cpu"}

    # a checkpoint written before these keys existed continues (--c), the epoch it did not log reads None
    old = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for key in RESOURCE_LOG_KEYS:
        del old["logging"][key]
    torch.save(old, tmp_path / "old_checkpoint.pth")
    resumed = make_trainer(_TwoShortEpochs, continue_training=True)
    resumed.load_checkpoint(str(tmp_path / "old_checkpoint.pth"))
    resumed.run_training()
    logged = resumed.logger.get_checkpoint()
    assert logged["peak_memory_mib"][0] is None and logged["peak_memory_mib"][1] > 0
    assert logged["epoch_seconds"][0] is None and logged["epoch_seconds"][1] > 0
    assert training_resources(Path(resumed.output_folder))["peak_memory_mib"] == logged["peak_memory_mib"][1]


def test_training_resources_of_an_nnunet_run_and_of_an_unfinished_fold(tmp_path):
    starts, ends = [100.0, 400.0, 1000.0], [250.0, 700.0, 1090.0]
    checkpoint = {"logging": {"epoch_start_timestamps": starts, "epoch_end_timestamps": ends,
                              "train_losses": [1.0, 1.0, 1.0]},
                  "init_args": {"device": torch.device("cuda", 0)}, "network_weights": {}}
    (tmp_path / "fold_0").mkdir()
    torch.save(checkpoint, tmp_path / "fold_0" / "checkpoint_final.pth")
    assert training_resources(tmp_path / "fold_0") == {"gpu_hours": pytest.approx((150 + 300 + 90) / 3600),
                                                        "peak_memory_mib": None, "epochs": 3, "device": "cuda"}

    (tmp_path / "fold_1").mkdir()
    with pytest.raises(ProfileError, match=r"fold_1 has no checkpoint_final.pth"):
        training_resources(tmp_path / "fold_1")
