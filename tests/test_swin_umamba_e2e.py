"""Swin-UMamba's protocol through nnU-Net: the encoder freeze in-process (tiny freeze period), the stock CLI (2d from
a synthetic VMamba checkpoint with the freeze, --c, predict, held-out Dice; dagger in 3d_fullres) and a gloo DDP
step with the freeze.

The synthetic checkpoint has VMamba v0's key layout at the registered small width (embed_dim 16, one block per
stage), random values.
"""
import os
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from batchgenerators.utilities.file_and_folder_operations import load_json

from e2e_support import DATASET_ID, ext_trainer_paths, predict_test_images, random_training_batch
from nnunet_mamba.architectures import get_network
from nnunet_mamba.discovery import load_trainer
from nnunet_mamba.training.encoder_freeze import FREEZE_STATE_KEY
from nnunet_mamba.training.trainer_base import PRETRAINED_ENV_VAR
from support import synthetic_vmamba_v0

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerSwinUMambaTest"
DAGGER_TRAINER = "nnUNetTrainerSwinUMambaDTest"


@pytest.fixture(scope="module")
def small_vmamba_file(tmp_path_factory):
    overrides = get_network(get_network("swin_umamba").small_instance).default_args
    state = synthetic_vmamba_v0(embed_dim=overrides["embed_dim"], depths=overrides["encoder_depths"])
    path = tmp_path_factory.mktemp("vmamba") / "vssmtiny_dp01_ckpt_epoch_292.pth"
    torch.save({"model": state}, path)
    return path


def _encoder_state(state_dict):
    return {k: v for k, v in state_dict.items() if k.startswith(("encoder.stages.", "encoder.downsamples."))}


def _equals_checkpoint(encoder_state, vmamba_file):
    """Whether every loaded encoder tensor still holds the checkpoint's value (mapped as the network maps it).

    The synthetic dataset's 40 x 40 plan pools three times, so the last two mergings have stride 1 and, not being
    VMamba's 2x2 merging, are not loaded: only the tensors whose shape fits are compared (every VSS block's)."""
    from nnunet_mamba.architectures.swin_umamba import SwinUMamba

    vmamba = torch.load(vmamba_file, weights_only=True)["model"]
    pairs = [(value.cpu(), vmamba[SwinUMamba.vmamba_v0_counterpart(key)[0]]) for key, value in encoder_state.items()]
    pairs = [(ours, theirs) for ours, theirs in pairs if ours.shape == theirs.shape]
    assert len(pairs) >= 13 * len(get_network("swin_umamba_small").default_args["encoder_depths"])
    return all(torch.equal(ours, theirs) for ours, theirs in pairs)


@pytest.fixture
def make_freeze_trainer(make_trainer):
    """A CPU trainer of ``trainer_name`` with a freeze of ``freeze_epochs``; its log lines kept in ``logged``."""
    def make(trainer_name, freeze_epochs, continue_training=False):
        trainer_class = type(f"{trainer_name}Freeze{freeze_epochs}", (load_trainer(trainer_name),),
                             {"encoder_freeze_epochs": freeze_epochs})
        trainer = make_trainer(trainer_class, continue_training=continue_training)
        trainer.print_to_log_file = lambda *args, **kwargs: trainer.logged.append(" ".join(map(str, args)))
        trainer.logged = []
        return trainer

    return make


def _steps(trainer, steps=1, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        trainer.train_step(random_training_batch(trainer, generator))


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSwinUMambaQuick", "nnUNetTrainerSwinUMambaDQuick"])
def test_freeze_no_update_no_decay_kept_on_resume_then_trained(make_freeze_trainer, small_vmamba_file, monkeypatch, tmp_path,
                                                               trainer_name):
    monkeypatch.setenv(PRETRAINED_ENV_VAR, str(small_vmamba_file))
    trainer = make_freeze_trainer(trainer_name, freeze_epochs=2)
    trainer.initialize()
    assert trainer.maybe_initialise_from_pretrained() is not None and trainer.encoder_pretrained
    frozen = set(map(id, trainer.frozen_encoder_parameters()))
    loaded = {k: v.clone() for k, v in _encoder_state(trainer.network.state_dict()).items()}
    others = {k: v.clone() for k, v in trainer.network.state_dict().items() if k not in loaded}

    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    _steps(trainer)
    now = trainer.network.state_dict()
    assert all(torch.equal(now[k], v) for k, v in loaded.items())  # no update, and no weight decay either
    assert any(not torch.equal(now[k], v) for k, v in others.items() if v.is_floating_point())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]
                 if trainer.optimizer.state.get(p)}
    assert not optimised & frozen  # AdamW never saw them: no moments, no step
    assert any("pretrained encoder frozen" in line for line in trainer.logged)

    # --c inside the freeze: the checkpoint remembers the pretrained start, the resumed run is frozen again
    trainer.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))  # after epoch 0: resumes at epoch 1
    assert torch.load(tmp_path / "checkpoint_latest.pth", weights_only=False)[FREEZE_STATE_KEY]["encoder_pretrained"]
    resumed = make_freeze_trainer(trainer_name, freeze_epochs=2, continue_training=True)
    resumed.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    assert resumed.maybe_initialise_from_pretrained() is None  # a resumed run never reads the ImageNet file
    assert resumed.current_epoch == 1
    resumed.on_train_epoch_start()
    assert not any(p.requires_grad for p in resumed.frozen_encoder_parameters())
    _steps(resumed)
    assert all(torch.equal(resumed.network.state_dict()[k], v) for k, v in loaded.items())

    resumed.current_epoch = 2  # the freeze is over: the encoder trains, with weight decay
    resumed.on_train_epoch_start()
    assert all(p.requires_grad for p in resumed.network.parameters())
    _steps(resumed)
    now = resumed.network.state_dict()
    assert all(not torch.equal(now[k], v) for k, v in loaded.items() if not k.endswith("A_logs"))
    assert any("trainable again" in line for line in resumed.logged)


def test_scratch_runs_are_never_frozen_and_the_protocol_is_the_papers(make_freeze_trainer, monkeypatch):
    monkeypatch.delenv(PRETRAINED_ENV_VAR, raising=False)
    trainer = make_freeze_trainer("nnUNetTrainerSwinUMamba", freeze_epochs=10)
    trainer.initialize()
    trainer.on_train_epoch_start()
    assert all(p.requires_grad for p in trainer.network.parameters())
    group = trainer.optimizer.param_groups[0]
    assert (trainer.initial_lr, group["weight_decay"], group["eps"]) == (1e-4, 0.05, 1e-5)
    assert trainer.gradient_clip_norm == 12
    assert trainer.lr_scheduler.lr_at(trainer.num_epochs) == pytest.approx(1e-6)
    assert trainer.lr_scheduler.lr_at(0) == pytest.approx(1e-4)


def _epochs_in_log(output_folder):
    text = "".join(p.read_text() for p in sorted(output_folder.glob("training_log_*.txt")))
    return text, [int(m) for m in re.findall(r"^\S+ \S+: Epoch (\d+)\s*$", text, flags=re.M)]


def test_cli_2d_pretrained_freeze_resume_predict_and_learn(nnunet_workspace, small_vmamba_file):
    workspace = nnunet_workspace
    output = workspace.trainer_output(DATASET_ID, "2d", 0, TRAINER)
    pretrained = {PRETRAINED_ENV_VAR: str(small_vmamba_file)}
    schedule = {"NNUNET_MAMBA_TEST_ITERATIONS": "10"}
    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="1", NNUNET_MAMBA_TEST_SKIP_VALIDATION="1", **schedule,
                                    **pretrained))
    first = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert _equals_checkpoint(_encoder_state(first["network_weights"]), small_vmamba_file)  # frozen for epoch 0
    assert first[FREEZE_STATE_KEY]["encoder_pretrained"]

    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="5", **schedule, **pretrained))
    log, epochs = _epochs_in_log(output)
    assert epochs == [0, 1, 2, 3, 4]
    assert f"{PRETRAINED_ENV_VAR} ignored: this run continues from a checkpoint" in log
    assert log.count("pretrained encoder frozen") == 2 and "trainable again" in log  # epoch 0, resumed epoch 1
    final = torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not _equals_checkpoint(_encoder_state(final["network_weights"]), small_vmamba_file)  # trained after

    # prediction builds the network without reading the ImageNet file (here: a path that does not exist)
    dataset = workspace.dataset_folder(DATASET_ID)
    predictions = workspace.root / "pred_swin_umamba_2d"
    workspace.run("nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(predictions), "-d", str(DATASET_ID),
                  "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
                  env=workspace.env(**{PRETRAINED_ENV_VAR: "/nonexistent/vssmtiny.pth"}))
    summary = workspace.evaluate(dataset / "labelsTs", predictions, DATASET_ID)
    dice = {label: values["Dice"] for label, values in summary["mean"].items()}
    # an empty prediction scores 0 on both labels; 50 iterations learn (seen: 0.95 / 0.97; after 40: 0.41 / 0.32)
    assert min(dice["1"], dice["2"]) > 0.2 and (dice["1"] + dice["2"]) / 2 > 0.3, dice


def test_cli_3d_fullres_dagger_trains_and_predicts(nnunet_workspace):
    workspace = nnunet_workspace
    workspace.run("nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", DAGGER_TRAINER, "-device", "cpu",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="1", NNUNET_MAMBA_TEST_ITERATIONS="3",
                                    NNUNET_MAMBA_TEST_SKIP_VALIDATION="1"))
    predict_test_images(workspace, "3d_fullres", DAGGER_TRAINER, "pred_swin_umamba_d_3d")


def _cpu_ddp(module, device_ids=None, **kwargs):
    return torch.nn.parallel.DistributedDataParallel(module, **kwargs)


def _ddp_worker(rank, world_size, init_file, env, result_file):
    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

        trainer_module.DDP = _cpu_ddp  # nnU-Net passes device_ids, which only CUDA modules accept
        preprocessed = os.path.join(env["nnUNet_preprocessed"], env["DATASET_NAME"])
        plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
        plans["continue_training"] = False
        trainer = load_trainer("nnUNetTrainerSwinUMambaQuick")(
            plans, "2d", 0, load_json(os.path.join(preprocessed, "dataset.json")), torch.device("cpu"))
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None
        trainer.initialize()
        trainer.maybe_initialise_from_pretrained()
        generator = torch.Generator().manual_seed(rank)  # each rank sees different data
        snapshots = []
        for epoch in (0, trainer.encoder_freeze_epochs):  # frozen, then trained
            trainer.current_epoch = epoch
            trainer.on_train_epoch_start()
            assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
            for _ in range(2):  # a parameter DDP expects without a gradient fails the second step
                trainer.train_step(random_training_batch(trainer, generator))
            snapshots.append({k: v.clone() for k, v in _encoder_state(trainer.bare_network.state_dict()).items()})
        flat = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            torch.save({"difference": float((gathered[0] - gathered[1]).abs().max()), "snapshots": snapshots},
                       result_file)
    finally:
        dist.destroy_process_group()


def test_gloo_ddp_with_the_freeze_keeps_replicas_identical(nnunet_workspace, small_vmamba_file, tmp_path):
    env = nnunet_workspace.env(**{PRETRAINED_ENV_VAR: str(small_vmamba_file)})
    env["nnUNet_extTrainer"] = ext_trainer_paths()
    env["DATASET_NAME"] = nnunet_workspace.dataset_folder(DATASET_ID).name
    result_file = str(tmp_path / "result.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), env, result_file), nprocs=2, join=True)
    result = torch.load(result_file, weights_only=False)
    assert result["difference"] == pytest.approx(0.0, abs=1e-6)  # gradients were averaged across the ranks
    frozen, trained = result["snapshots"]
    assert _equals_checkpoint(frozen, small_vmamba_file)
    assert not _equals_checkpoint(trained, small_vmamba_file)
