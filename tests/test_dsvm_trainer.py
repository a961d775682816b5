"""DSVM-UNet trainers in-process on the synthetic dataset: inference network, checkpoint round trip, logging."""
import inspect

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from e2e_support import DATASET_ID, random_training_batch
from nnunet_mamba.architectures import VMUNet
from nnunet_mamba.benchmarks.flops import count_flops
from nnunet_mamba.distillation import PROGRESSIVE, PROJECTION, LevelFeatureTap
from nnunet_mamba.training.self_distillation import CHECKPOINT_KEY, LOG_KEYS
from nnunet_mamba_trainers.nnUNetTrainerDSVMUNet import (
    nnUNetTrainerDSVMUNet,
    nnUNetTrainerDSVMUNetProgOnly,
    nnUNetTrainerDSVMUNetProjOnly,
    nnUNetTrainerDSVMUNetQuick,
)
from nnunet_mamba_trainers.nnUNetTrainerVMUNet import nnUNetTrainerVMUNet, nnUNetTrainerVMUNetQuick


@pytest.fixture
def make_trainer(nnunet_workspace, monkeypatch):
    """Trainers on CPU for the synthetic dataset, with nnU-Net's paths pointing into the test workspace."""
    for key, value in nnunet_workspace.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    preprocessed = nnunet_workspace.preprocessed / nnunet_workspace.dataset_folder(DATASET_ID).name

    def make(trainer_class, configuration="2d", continue_training=False):
        plans = load_json(str(preprocessed / "nnUNetPlans.json"))
        plans["continue_training"] = continue_training  # nnUNetv2_train adds this (--c) before building the trainer
        torch.manual_seed(0)
        return trainer_class(plans, configuration, 0, load_json(str(preprocessed / "dataset.json")),
                             torch.device("cpu"))

    return make


def _train_steps(trainer, steps=2):
    generator = torch.Generator().manual_seed(1)
    return [trainer.train_step(random_training_batch(trainer, generator)) for _ in range(steps)]


def test_trainer_signatures_are_nnunets():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    expected = list(inspect.signature(nnUNetTrainer.__init__).parameters)
    for trainer in (nnUNetTrainerDSVMUNet, nnUNetTrainerDSVMUNetProjOnly, nnUNetTrainerDSVMUNetProgOnly,
                    nnUNetTrainerDSVMUNetQuick):
        assert list(inspect.signature(trainer.__init__).parameters) == expected


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_inference_network_is_vm_unet_with_equal_parameters_and_flops(make_trainer, configuration):
    trainer = make_trainer(nnUNetTrainerDSVMUNet, configuration)
    trainer.initialize()
    # what nnUNetv2_predict builds: the trainer's classmethod without deep supervision
    args = (trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads, False)
    for_prediction = nnUNetTrainerDSVMUNet.build_network_architecture(*args)
    plain_vm_unet = nnUNetTrainerVMUNet.build_network_architecture(*args)
    assert type(for_prediction) is VMUNet and type(trainer.network) is VMUNet
    assert for_prediction.state_dict().keys() == plain_vm_unet.state_dict().keys() == trainer.network.state_dict().keys()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(for_prediction) == count(plain_vm_unet) == count(trainer.network)

    heads = trainer.bare_distillation
    assert count(heads) > 0 and not any(p is q for p in heads.parameters() for q in trainer.network.parameters())
    # the trainer's network in inference mode does exactly VM-UNet's work; the heads' work exists only in training
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    inference = count_flops(trainer.network, x)
    assert inference.total_macs == count_flops(plain_vm_unet.eval(), x).total_macs
    with torch.no_grad(), LevelFeatureTap(*trainer.network.level_feature_modules()) as levels:
        trainer.network(x)
    assert count_flops(heads, levels.encoder, levels.decoder).total_macs > 0


@pytest.mark.parametrize("trainer_class, terms", [
    (nnUNetTrainerDSVMUNetQuick, {PROJECTION, PROGRESSIVE}),
    (nnUNetTrainerDSVMUNetProjOnly, {PROJECTION}),
    (nnUNetTrainerDSVMUNetProgOnly, {PROGRESSIVE}),
])
def test_ablation_trainers_build_and_log_only_their_terms(make_trainer, trainer_class, terms):
    trainer = make_trainer(trainer_class)
    trainer.initialize()
    assert set(trainer.bare_distillation.terms) == terms
    outputs = _train_steps(trainer, steps=1)
    assert {k for k in outputs[0] if k != "loss"} == {LOG_KEYS[t] for t in terms}
    assert all(outputs[0][LOG_KEYS[t]] > 0 for t in terms)
    # the optimiser updates the heads with the network
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.bare_distillation.parameters()} <= optimised
    assert {id(p) for p in trainer.network.parameters()} <= optimised


def test_distillation_trains_the_heads_and_the_loss_is_segmentation_plus_weighted_terms(make_trainer):
    trainer = make_trainer(nnUNetTrainerDSVMUNetQuick)
    trainer.initialize()
    before = {k: v.clone() for k, v in trainer.bare_distillation.state_dict().items()}
    batch = random_training_batch(trainer, torch.Generator().manual_seed(3))
    # the reported 'loss' is nnU-Net's segmentation loss of the same forward pass
    with torch.no_grad():
        segmentation = trainer.loss(trainer.network(batch["data"]), batch["target"]).item()
    result = trainer.train_step(batch)
    assert float(result["loss"]) == pytest.approx(segmentation, rel=1e-5)
    after = trainer.bare_distillation.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_checkpoint_round_trip_restores_heads_and_optimiser_and_writes_vm_unet_weights(make_trainer, tmp_path):
    trainer = make_trainer(nnUNetTrainerDSVMUNetQuick)
    trainer.initialize()
    _train_steps(trainer)
    for key in LOG_KEYS.values():  # one epoch's worth of logging, as nnU-Net's epoch loop would leave it
        trainer.logger.log(key, 0.5, 0)
    trainer.current_epoch = 3
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]  # no partial file left behind

    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["network_weights"].keys() == trainer.network.state_dict().keys()
    assert not any("distill" in key for key in saved["network_weights"])
    assert saved["distillation_weights"] == {PROJECTION: 1.0, PROGRESSIVE: 0.5}

    resumed = make_trainer(nnUNetTrainerDSVMUNetQuick)
    resumed.load_checkpoint(str(path))
    assert resumed.current_epoch == 4
    for key, value in trainer.bare_distillation.state_dict().items():
        assert torch.equal(resumed.bare_distillation.state_dict()[key], value), key
    for key, value in trainer.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[key], value), key
    head_weight = trainer.bare_distillation.encoder_projection[3].channel.weight
    resumed_weight = resumed.bare_distillation.encoder_projection[3].channel.weight
    assert torch.equal(trainer.optimizer.state[head_weight]["exp_avg"], resumed.optimizer.state[resumed_weight]["exp_avg"])
    assert resumed.logger.get_value(LOG_KEYS[PROJECTION], step=None) == [0.5]


def test_resuming_from_a_checkpoint_without_heads_names_the_trainer_that_wrote_it(make_trainer, tmp_path):
    plain = make_trainer(nnUNetTrainerVMUNetQuick)
    plain.initialize()
    path = tmp_path / "checkpoint_final.pth"
    plain.save_checkpoint(str(path))
    with pytest.raises(RuntimeError, match=f"no '{CHECKPOINT_KEY}'.*written by nnUNetTrainerVMUNetQuick"):
        make_trainer(nnUNetTrainerDSVMUNetQuick).load_checkpoint(str(path))

    projection_only = make_trainer(nnUNetTrainerDSVMUNetProjOnly)
    projection_only.initialize()
    projection_only.save_checkpoint(str(path))
    with pytest.raises(RuntimeError, match="do not match nnUNetTrainerDSVMUNet"):
        make_trainer(nnUNetTrainerDSVMUNet).load_checkpoint(str(path))


def test_distillation_weights_are_validated():
    class Negative(nnUNetTrainerDSVMUNet):
        distillation_beta = -1.0

    class Neither(nnUNetTrainerDSVMUNet):
        distillation_alpha = distillation_beta = 0.0

    with pytest.raises(ValueError, match="must be >= 0"):
        Negative({}, "2d", 0, {}, torch.device("cpu"))
    with pytest.raises(ValueError, match="use nnUNetTrainerVMUNet instead"):
        Neither({}, "2d", 0, {}, torch.device("cpu"))


@pytest.mark.parametrize("resuming", [False, True])
def test_vmamba_checkpoint_initialises_a_fresh_run_only(make_trainer, monkeypatch, tmp_path, resuming):
    from test_pretrained import synthetic_vmamba_v0

    from nnunet_mamba.training.trainer_base import PRETRAINED_ENV_VAR

    state = synthetic_vmamba_v0(embed_dim=32, depths=(2, 2, 2, 2))  # the quick trainer's width
    torch.save({"model": state}, tmp_path / "vmamba.pth")
    monkeypatch.setenv(PRETRAINED_ENV_VAR, str(tmp_path / "vmamba.pth"))
    trainer = make_trainer(nnUNetTrainerDSVMUNetQuick, continue_training=resuming)
    logged = []
    trainer.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
    trainer.initialize()
    loaded = torch.equal(trainer.network.stem.norm.weight.detach(), state["patch_embed.norm.weight"])
    first_decoder_block = trainer.network.decoder.stages[0][0].norm.weight.detach()
    assert loaded != resuming
    assert torch.equal(first_decoder_block, state["layers.3.blocks.0.ln_1.weight"]) != resuming
    assert any(line.startswith(f"{PRETRAINED_ENV_VAR}:") for line in logged) != resuming
