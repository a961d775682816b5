"""LightM-UNet through nnU-Net: the official trainer settings in-process, then the stock CLI (train 2d, --c, predict,
held-out Dice; train and predict 3d_fullres) on the session's synthetic dataset, without nnU-Net's final validation,
which the other networks' end-to-end tests prove. The DDP step is in test_ddp.py."""
import re

import numpy as np
import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from e2e_support import DATASET_ID, held_out_dice, predict_test_images, random_training_batch
from nnunet_mamba.architectures.light_m_unet import LightMUNet
from nnunet_mamba.discovery import trainer_names

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerLightMUNetTest"
OURS = ("nnUNetTrainerLightMUNet", "nnUNetTrainerLightMUNetAMP", "nnUNetTrainerLightMUNetV0",
        "nnUNetTrainerLightMUNetQuick")


def _epochs_in_log(output_folder):
    text = sorted(output_folder.glob("training_log_*.txt"))[-1].read_text()
    return [int(m) for m in re.findall(r"^\S+ \S+: Epoch (\d+)\s*$", text, flags=re.M)]


def test_official_settings_and_a_network_without_deep_supervision(make_trainer):
    assert set(OURS) <= set(trainer_names())  # what `nnunet-mamba doctor` checks nnU-Net finds
    trainers = {}
    for name in OURS:
        trainer = make_trainer(name)
        trainer.initialize()
        trainers[name] = trainer
        assert type(trainer.bare_network) is LightMUNet and not trainer.enable_deep_supervision
        optimizer = trainer.optimizer
        assert type(optimizer) is torch.optim.Adam and isinstance(trainer.lr_scheduler, PolyLRScheduler)
        assert trainer.lr_scheduler.exponent == 0.9 and trainer.gradient_clip_norm == 12.0
        group = optimizer.param_groups[0]
        assert (group["weight_decay"], group["eps"]) == (1e-5, 1e-5)
        if name != "nnUNetTrainerLightMUNetQuick":
            assert (group["lr"], trainer.num_epochs, trainer.num_iterations_per_epoch) == (1e-4, 100, 250)
    assert not trainers["nnUNetTrainerLightMUNet"].autocast_network
    assert trainers["nnUNetTrainerLightMUNetAMP"].autocast_network
    assert trainers["nnUNetTrainerLightMUNetV0"].bare_network.variant == "v0"
    assert trainers["nnUNetTrainerLightMUNet"].bare_network.variant == "official"

    quick = trainers["nnUNetTrainerLightMUNetQuick"]
    quick.set_deep_supervision_enabled(True)  # nnU-Net does this after its final validation: a no-op here
    generator = torch.Generator().manual_seed(0)
    losses = [float(quick.train_step(random_training_batch(quick, generator))["loss"]) for _ in range(2)]
    assert all(np.isfinite(losses))
    # what nnUNetv2_predict builds
    for_prediction = type(quick).build_network_architecture(
        quick.plans_manager, quick.configuration_manager, quick.num_input_channels,
        quick.label_manager.num_segmentation_heads, False)
    assert for_prediction.state_dict().keys() == quick.network.state_dict().keys()


def test_2d_trains_resumes_with_c_predicts_and_learns(nnunet_workspace):
    workspace = nnunet_workspace
    output = workspace.trainer_output(DATASET_ID, "2d", 0, TRAINER)
    iterations = "25"
    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="2", NNUNET_MAMBA_TEST_ITERATIONS=iterations,
                                    NNUNET_MAMBA_TEST_SKIP_VALIDATION="1"))
    first = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert first["current_epoch"] == 2
    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="3", NNUNET_MAMBA_TEST_ITERATIONS=iterations,
                                    NNUNET_MAMBA_TEST_SKIP_VALIDATION="1"))
    assert _epochs_in_log(output) == [2]  # continued at the saved epoch
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and final["grad_scaler_state"] is None
    assert {int(s["step"]) for s in final["optimizer_state"]["state"].values()} == {3 * int(iterations)}
    group = final["optimizer_state"]["param_groups"][0]
    assert group["eps"] == 1e-5 and group["lr"] == pytest.approx(2e-3 * (1 - 2 / 3) ** 0.9)  # poly, epoch 2
    assert any(k.startswith("decoder.seg_layers.0.") for k in final["network_weights"])

    dice = held_out_dice(workspace, "2d", TRAINER, "pred_light_m_unet_2d")
    # an empty prediction scores 0; a network that learned scores clearly above it
    assert min(dice["1"], dice["2"]) > 0.3 and (dice["1"] + dice["2"]) / 2 > 0.5, dice


def test_3d_fullres_trains_and_predicts(nnunet_workspace):
    workspace = nnunet_workspace
    output = workspace.trainer_output(DATASET_ID, "3d_fullres", 0, TRAINER)
    workspace.run("nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="1", NNUNET_MAMBA_TEST_ITERATIONS="5",
                                    NNUNET_MAMBA_TEST_SKIP_VALIDATION="1"))
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 1
    assert final["network_weights"]["encoder.stem.0.weight"].dim() == 5  # a 3D network from the 3d_fullres plan

    predict_test_images(workspace, "3d_fullres", TRAINER, "pred_light_m_unet_3d")
