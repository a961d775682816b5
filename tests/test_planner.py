"""``nnunet-mamba plan``: the training-step memory model, nnU-Net's patch rules around it, and the command end to end.

The memory model of each network against a real forward pass is tests/test_memory_model.py.
"""
import json
import math
import shutil

import pytest
import torch
from torch import nn

from e2e_support import DATASET_ID
from nnunet_mamba.architectures import PlanTopology
from nnunet_mamba.cli import main
from nnunet_mamba.planning import (
    GIB,
    BudgetTooSmallError,
    MemoryEstimate,
    TrainingMemoryModel,
    batch_size_for,
    fit_patch_to_budget,
)


class _CountedNetwork(nn.Module):
    """What the memory model reads off a network: its saved-activation count and its parameters."""

    def __init__(self, saved_elements: int, parameters: int):
        super().__init__()
        self.saved_elements = saved_elements
        self.weight = nn.Parameter(torch.zeros(parameters))

    def compute_conv_feature_map_size(self, input_size):
        return self.saved_elements


def test_memory_model_adds_up_a_training_step():
    model = TrainingMemoryModel()
    estimate = model.estimate(_CountedNetwork(1000, 10), (4, 5), batch_size=3, input_channels=2, num_classes=3,
                              deep_supervision=True)
    # per sample: 4 bytes per saved element; 16 bytes per class and voxel for the loss, a third more with deep
    # supervision; the float32 image (2 channels) and target; fixed: 16 bytes per parameter (weight, gradient, AdamW)
    assert estimate.per_sample_bytes == 1000 * 4 + 20 * 3 * 16 * 4 / 3 + 20 * 3 * 4 == 5520
    assert estimate.fixed_bytes == 160
    assert estimate.total_bytes == 160 + 3 * 5520
    without_deep_supervision = model.estimate(_CountedNetwork(1000, 10), (4, 5), 1, 2, 3, deep_supervision=False)
    assert without_deep_supervision.per_sample_bytes == 1000 * 4 + 20 * 3 * 16 + 20 * 3 * 4


def test_usable_bytes_leave_the_cuda_context_and_headroom():
    model = TrainingMemoryModel()
    assert model.usable_bytes(8) == int((8 * GIB - GIB // 2) * 0.9)
    for budget in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"GPU memory budget must be positive and finite, got {budget} GB"):
            model.usable_bytes(budget)


def _voxel_estimator(bytes_per_voxel=10, fixed=1000):
    return lambda topology: MemoryEstimate(0, bytes_per_voxel * math.prod(topology.patch_size), fixed, 1)


def _budget_for(patch, bytes_per_voxel=10, fixed=1000, batch=2):
    return fixed + batch * bytes_per_voxel * math.prod(patch)


def test_patch_shrinks_on_the_axis_largest_relative_to_the_median_shape():
    # 256 / 256 is the largest ratio, 64 / 100 only comes next below 0.64: axis 0 goes 256 -> 224 -> 192
    topology, estimate = fit_patch_to_budget((1, 1), (256, 100), (256, 64), _voxel_estimator(),
                                             _budget_for((192, 64)))
    assert topology.patch_size == (192, 64)
    assert topology.pool_op_kernel_sizes == PlanTopology.for_patch((1, 1), (192, 64)).pool_op_kernel_sizes
    assert estimate.per_sample_bytes == 10 * 192 * 64
    # one byte less and 192 no longer fits: nnU-Net's next step down is 176 (its divisor shrinks with the patch)
    smaller, _ = fit_patch_to_budget((1, 1), (256, 100), (256, 64), _voxel_estimator(),
                                     _budget_for((192, 64)) - 1)
    assert smaller.patch_size == (176, 64)


def test_patch_grows_towards_the_median_shape_within_the_budget():
    spacing, median = (1, 1, 1), (400, 320, 300)
    unlimited, _ = fit_patch_to_budget(spacing, median, (256, 256, 256), _voxel_estimator(), 10**15)
    # every axis as far as one more pooling step (64) keeps it inside the median shape
    assert unlimited.patch_size == (384, 320, 256)
    # room for 320 x 256 x 320 voxels: the axis smallest relative to the median shape (0: 256 / 400) first
    limited, _ = fit_patch_to_budget(spacing, median, (256, 256, 256), _voxel_estimator(),
                                     _budget_for((320, 256, 256)))
    assert limited.patch_size == (320, 256, 256)


def test_budget_too_small_for_the_smallest_patch_is_a_named_error():
    with pytest.raises(BudgetTooSmallError, match=r"too small for the smallest patch \[8, 8\].*--gpu-memory-gb"):
        fit_patch_to_budget((1, 1), (256, 100), (256, 64), _voxel_estimator(), _budget_for((8, 8)) - 1)
    with pytest.raises(BudgetTooSmallError, match=r"too small for any patch: the parameters, .* alone are estimated"):
        fit_patch_to_budget((1, 1), (256, 100), (256, 64), _voxel_estimator(fixed=10 * GIB), 10 * GIB)


def test_batch_size_fills_the_budget_capped_by_five_percent_of_the_dataset_and_at_least_two():
    estimate = MemoryEstimate(0, per_sample_bytes=100, fixed_bytes=1000, batch_size=1)
    patch = (10, 10)
    assert batch_size_for(estimate, 1000 + 7 * 100 + 99, patch, approximate_n_voxels_dataset=1e6) == 7
    # 5% of 10^4 voxels is 500 voxels, five patches of 100
    assert batch_size_for(estimate, 1000 + 7 * 100, patch, approximate_n_voxels_dataset=1e4) == 5
    assert batch_size_for(estimate, 1000 + 7 * 100, patch, approximate_n_voxels_dataset=100) == 2


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf", "-inf"])
def test_plan_command_refuses_a_budget_that_is_not_a_positive_number_in_one_line(budget, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["plan", "-d", "991", "--network", "vm_unet", f"--gpu-memory-gb={budget}", "--no-preprocess"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"nnunet-mamba plan: error: argument --gpu-memory-gb: {budget!r} is no GPU memory "
                                    f"budget: give the GPU's memory in GiB, a positive number such as 8, 24 or 80")


def test_only_planned_configurations_are_preprocessed():
    from nnunet_mamba.planning.api import PlanningError
    from nnunet_mamba.planning.api import configurations_to_preprocess as _configurations_to_preprocess

    plans = {"dataset_name": "Dataset991_MambaTest", "configurations": {"2d": {}, "3d_fullres": {}}}
    # by default nnU-Net's three, less the 3d_lowres that small images do not get
    assert _configurations_to_preprocess(None, plans, "P") == ["2d", "3d_fullres"]
    assert _configurations_to_preprocess(["3d_fullres"], plans, "P") == ["3d_fullres"]
    with pytest.raises(PlanningError) as refused:
        _configurations_to_preprocess(["2d", "4d", "3d_lowres"], plans, "P")
    assert str(refused.value) == ("-c 4d 3d_lowres: the plans P of Dataset991_MambaTest have no such configuration "
                                  "(they have 2d, 3d_fullres); nothing was preprocessed")


def test_plan_command_names_an_unknown_network(capsys):
    assert main(["plan", "-d", "991", "--network", "no_such_net"]) == 1
    error = capsys.readouterr().err
    assert "unknown network 'no_such_net'" in error and "vm_unet" in error


# --- end to end, on the session's synthetic dataset (nnU-Net's plans: 2d [40, 40], 3d_fullres [24, 40, 40]) ---

#: room for two samples of VM-UNet 3D at [24, 32, 32] but not at [24, 32, 40] (budgets of 1.27 and 1.34 GB)
TINY_BUDGET_GB = 1.3
PLANS = f"nnUNetMambaPlans_vm_unet_{TINY_BUDGET_GB:g}G"
TRAINER = "nnUNetTrainerVMUNetTest"


@pytest.mark.slow
def test_plan_command_writes_fitted_plans_that_nnunet_trains_on(nnunet_workspace):
    workspace = nnunet_workspace
    dataset = workspace.dataset_folder(DATASET_ID).name
    preprocessed = workspace.preprocessed / dataset
    nnunet_plans = (preprocessed / "nnUNetPlans.json").read_bytes()

    output = workspace.run("nnunet-mamba", "plan", "-d", str(DATASET_ID), "--network", "vm_unet", "-c",
                           "3d_fullres", "--gpu-memory-gb", str(TINY_BUDGET_GB), "-np", "1")
    assert f"-tr nnUNetTrainerVMUNet -p {PLANS}" in output
    assert (preprocessed / "nnUNetPlans.json").read_bytes() == nnunet_plans  # nnU-Net's plans untouched
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    default = json.loads(nnunet_plans)["configurations"]["3d_fullres"]
    planned = plans["configurations"]["3d_fullres"]
    # same spacing and normalisation as nnU-Net; a smaller patch, shrunk on the largest axis relative to the
    # median shape by nnU-Net's steps, batch size at least two
    assert planned["spacing"] == default["spacing"]
    assert planned["normalization_schemes"] == default["normalization_schemes"]
    assert default["patch_size"] == [24, 40, 40] and planned["patch_size"] == [24, 32, 32]
    assert planned["batch_size"] == 2
    assert planned["architecture"]["arch_kwargs"]["strides"] == [list(s) for s in PlanTopology.for_patch(
        planned["spacing"], planned["patch_size"]).pool_op_kernel_sizes]
    recorded = planned["nnunet_mamba"]
    assert recorded["network"] == "vm_unet" and recorded["gpu_memory_gb"] == TINY_BUDGET_GB
    assert recorded["estimated_training_step_gib"] * GIB <= TrainingMemoryModel().usable_bytes(TINY_BUDGET_GB)
    assert planned["data_identifier"] == f"{PLANS}_3d_fullres"
    assert len(list((preprocessed / planned["data_identifier"]).glob("*.pkl"))) == 10  # preprocessed, own folder

    # nnU-Net's own command trains on them: stopped (SIGKILL) after three iterations at the planned patch
    with pytest.raises(RuntimeError, match="exit code -9"):
        workspace.run("nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS,
                      "-device", "cpu", env=workspace.env(NNUNET_MAMBA_TEST_KILL_AT="0:3"))
    log = next(workspace.trainer_output(DATASET_ID, "3d_fullres", 0, TRAINER, plans=PLANS).glob("training_log_*.txt"))
    assert "'patch_size': [24, 32, 32]" in log.read_text()

    # a configuration the plans do not have is refused, not reported ready (nothing to train on)
    with pytest.raises(RuntimeError, match=r"error: -c 4d: the plans nnUNetMambaPlans_vm_unet_8G of "
                                           r"Dataset991_MambaTest have no such configuration \(they have 2d, "
                                           r"3d_fullres\); nothing was preprocessed"):
        workspace.run("nnunet-mamba", "plan", "-d", str(DATASET_ID), "--network", "vm_unet", "-c", "4d")
    # a budget too small for the network, and a dataset nnU-Net has not fingerprinted, are named errors
    with pytest.raises(RuntimeError, match=r"budget is too small for any patch: .*--gpu-memory-gb"):
        workspace.run("nnunet-mamba", "plan", "-d", str(DATASET_ID), "--network", "vm_unet", "-c", "2d",
                      "--gpu-memory-gb", "0.7", "--no-preprocess")
    unplanned = workspace.raw / "Dataset992_Unplanned"
    unplanned.mkdir()
    try:
        (unplanned / "dataset.json").write_text((workspace.dataset_folder(DATASET_ID) / "dataset.json").read_text())
        with pytest.raises(RuntimeError,
                           match=r"Dataset992_Unplanned is not fingerprinted.*nnUNetv2_extract_fingerprint"):
            workspace.run("nnunet-mamba", "plan", "-d", "992", "--network", "vm_unet")
    finally:
        shutil.rmtree(unplanned)
