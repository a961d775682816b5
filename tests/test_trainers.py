"""Our trainers in-process on the synthetic dataset: the loss they optimise, checkpoints, pretrained initialisation."""
import pytest
import torch

from e2e_support import random_training_batch
from nnunet_mamba.architectures import VMUNet
from nnunet_mamba.benchmarks.flops import count_flops
from nnunet_mamba.discovery import load_trainer
from nnunet_mamba.distillation import LevelFeatureTap
from nnunet_mamba.training.self_distillation import TERM_NAMES
from nnunet_mamba.training.trainer_base import PRETRAINED_ENV_VAR
from nnunet_mamba.training.training_modules import TRAINING_MODULES_KEY

pytestmark = pytest.mark.slow

PROJECTION, PROGRESSIVE = TERM_NAMES["projection"], TERM_NAMES["progressive"]


def _train_steps(trainer, steps=2):
    generator = torch.Generator().manual_seed(1)
    return [trainer.train_step(random_training_batch(trainer, generator)) for _ in range(steps)]


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_dsvm_inference_network_is_vm_unet_with_equal_parameters_and_flops(make_trainer, configuration):
    trainer = make_trainer("nnUNetTrainerDSVMUNet", configuration)
    trainer.initialize()
    # what nnUNetv2_predict builds: the trainer's classmethod without deep supervision
    args = (trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads, False)
    for_prediction = type(trainer).build_network_architecture(*args)
    plain_vm_unet = load_trainer("nnUNetTrainerVMUNet").build_network_architecture(*args)
    assert type(for_prediction) is VMUNet and type(trainer.network) is VMUNet
    assert for_prediction.state_dict().keys() == plain_vm_unet.state_dict().keys() == trainer.network.state_dict().keys()
    assert _count(for_prediction) == _count(plain_vm_unet) == _count(trainer.network)

    heads = trainer.bare_distillation
    assert _count(heads) > 0 and not any(p is q for p in heads.parameters() for q in trainer.network.parameters())
    # the trainer's network in inference mode does exactly VM-UNet's work; the heads' work exists only in training
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    assert count_flops(trainer.network, x).total_macs == count_flops(plain_vm_unet.eval(), x).total_macs
    with torch.no_grad(), LevelFeatureTap(*trainer.network.level_feature_modules()) as levels:
        trainer.network(x)
    assert count_flops(heads, levels.encoder, levels.decoder).total_macs > 0


@pytest.mark.parametrize("trainer_name, terms", [
    ("nnUNetTrainerDSVMUNetQuick", {PROJECTION, PROGRESSIVE}),
    ("nnUNetTrainerDSVMUNetProjOnly", {PROJECTION}),
    ("nnUNetTrainerDSVMUNetProgOnly", {PROGRESSIVE}),
])
def test_ablation_trainers_build_and_log_only_their_terms(make_trainer, trainer_name, terms):
    trainer = make_trainer(trainer_name)
    trainer.initialize()
    assert set(trainer.loss_term_weights) == terms
    assert {TERM_NAMES[t] for t in trainer.bare_distillation.terms} == terms
    outputs = _train_steps(trainer, steps=1)
    assert {k for k in outputs[0] if k != "loss"} == terms and all(outputs[0][t] > 0 for t in terms)
    # the optimiser updates the heads with the network
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    heads = list(trainer.bare_distillation.parameters())
    assert {id(p) for p in heads if p.requires_grad} <= optimised
    assert not {id(p) for p in heads if not p.requires_grad} & optimised  # the fixed teacher-side projection
    assert {id(p) for p in trainer.network.parameters()} <= optimised


def test_the_optimised_loss_is_segmentation_plus_each_weighted_term(make_trainer):
    """Gradients of a train step equal those of seg + alpha * L_proj + beta * L_prog computed by hand."""
    base = load_trainer("nnUNetTrainerDSVMUNetQuick")
    weighted = type("Weighted", (base,), {"distillation_alpha": 0.3, "distillation_beta": 0.7,
                                          "gradient_clip_norm": None})
    trainer = make_trainer(weighted)
    trainer.initialize()
    trainer.optimizer.step = lambda: None  # keep the weights, look at the gradients
    batch = random_training_batch(trainer, torch.Generator().manual_seed(3))
    reported = trainer.train_step(batch)
    parameters = trainer.trainable_parameters()
    # (nnU-Net gives the deepest deep-supervision output weight 0: its head gets no gradient at all)
    from_step = [None if p.grad is None else p.grad.clone() for p in parameters]
    assert sum(g is not None for g in from_step) > len(parameters) - 3

    trainer.optimizer.zero_grad(set_to_none=True)
    segmentation, terms = trainer.compute_loss(batch["data"], batch["target"])
    (segmentation + 0.3 * terms[PROJECTION] + 0.7 * terms[PROGRESSIVE]).backward()
    assert float(reported["loss"]) == pytest.approx(segmentation.item(), rel=1e-5)  # logged: segmentation only
    assert float(reported[PROJECTION]) == pytest.approx(terms[PROJECTION].item(), rel=1e-5)
    for step_grad, p in zip(from_step, parameters):
        assert (step_grad is None and p.grad is None) or torch.allclose(step_grad, p.grad, rtol=1e-4, atol=1e-7)
    # and swapping the weights gives other gradients: the test can tell them apart
    trainer.optimizer.zero_grad(set_to_none=True)
    segmentation, terms = trainer.compute_loss(batch["data"], batch["target"])
    (segmentation + 0.7 * terms[PROJECTION] + 0.3 * terms[PROGRESSIVE]).backward()
    assert not all(torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7) for g, p in zip(from_step, parameters)
                   if g is not None)


def test_checkpoint_round_trip_restores_heads_optimiser_and_terms_and_writes_vm_unet_weights(make_trainer, tmp_path):
    trainer = make_trainer("nnUNetTrainerDSVMUNetQuick")
    trainer.initialize()
    _train_steps(trainer)
    for name in trainer.loss_term_weights:  # one epoch's worth of logging, as the epoch loop would leave it
        trainer.loss_term_log.log(name, 0.5, 0)
    trainer.current_epoch = 3
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]  # no partial file left behind

    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["network_weights"].keys() == trainer.network.state_dict().keys()
    assert not any("distill" in key for key in saved["network_weights"])
    assert saved["loss_term_weights"] == {PROJECTION: 1.0, PROGRESSIVE: 0.5}
    assert list(saved[TRAINING_MODULES_KEY]) == ["distillation"]

    resumed = make_trainer("nnUNetTrainerDSVMUNetQuick")
    resumed.load_checkpoint(str(path))
    assert resumed.current_epoch == 4
    for key, value in trainer.bare_distillation.state_dict().items():
        assert torch.equal(resumed.bare_distillation.state_dict()[key], value), key
    for key, value in trainer.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[key], value), key
    head_weight = trainer.bare_distillation.encoder_projection[3].channel.weight
    resumed_weight = resumed.bare_distillation.encoder_projection[3].channel.weight
    assert torch.equal(trainer.optimizer.state[head_weight]["exp_avg"], resumed.optimizer.state[resumed_weight]["exp_avg"])
    assert resumed.loss_term_log.values == {PROJECTION: [0.5], PROGRESSIVE: [0.5]}


def test_a_run_with_the_earlier_student_side_heads_continues_with_them(make_trainer, tmp_path):
    class EarlierDefault(load_trainer("nnUNetTrainerDSVMUNetQuick")):
        encoder_progressive = "student_side"  # what nnUNetTrainerDSVMUNet trained with before the paper's direction

    earlier = make_trainer(EarlierDefault)
    earlier.initialize()
    path = tmp_path / "checkpoint_latest.pth"
    earlier.save_checkpoint(str(path))

    resumed = make_trainer("nnUNetTrainerDSVMUNetQuick")
    resumed.load_checkpoint(str(path))
    assert resumed.encoder_progressive == "student_side"
    for key, value in earlier.bare_distillation.state_dict().items():
        assert torch.equal(resumed.bare_distillation.state_dict()[key], value), key
    head_weight = resumed.bare_distillation.encoder_progressive[0].channel.weight
    assert any(p is head_weight for group in resumed.optimizer.param_groups for p in group["params"])


def test_stale_partial_checkpoints_of_dead_processes_are_swept(make_trainer, tmp_path):
    trainer = make_trainer("nnUNetTrainerVMUNetQuick")
    trainer.initialize()
    stale = tmp_path / ".checkpoint_latest.pth.partial-999999999"  # no such process
    stale.write_bytes(b"half a checkpoint")
    trainer.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_resume_errors_name_the_checkpoint_and_what_is_wrong(make_trainer, tmp_path):
    plain = make_trainer("nnUNetTrainerVMUNetQuick")
    plain.initialize()
    path = tmp_path / "checkpoint_final.pth"
    plain.save_checkpoint(str(path))
    with pytest.raises(RuntimeError, match=r"needs the training-only modules \['distillation'\].*written by "
                                           r"nnUNetTrainerVMUNetQuick with nnUNetPlans"):
        make_trainer("nnUNetTrainerDSVMUNetQuick").load_checkpoint(str(path))
    with pytest.raises(RuntimeError, match=r"its network \(written by nnUNetTrainerVMUNetQuick.*is not the network "
                                           r"of nnUNetTrainerVMUNet .*tensors differ in shape"):
        make_trainer("nnUNetTrainerVMUNet").load_checkpoint(str(path))  # C = 32 there, 96 here

    projection_only = make_trainer("nnUNetTrainerDSVMUNetProjOnly")
    projection_only.initialize()
    projection_only.save_checkpoint(str(path))
    with pytest.raises(RuntimeError, match="does not match nnUNetTrainerDSVMUNet"):
        make_trainer("nnUNetTrainerDSVMUNet").load_checkpoint(str(path))

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match=r"cannot continue from .*notes.pth: it is not a readable PyTorch"):
        make_trainer("nnUNetTrainerVMUNetQuick").load_checkpoint(str(text))
    weights_only = tmp_path / "weights.pth"
    torch.save({"network_weights": plain.network.state_dict()}, weights_only)
    with pytest.raises(RuntimeError, match=r"weights.pth: it has no 'optimizer_state'.*-pretrained_weights"):
        make_trainer("nnUNetTrainerVMUNetQuick").load_checkpoint(str(weights_only))


def test_distillation_weights_are_validated():
    dsvm = load_trainer("nnUNetTrainerDSVMUNet")
    negative = type("Negative", (dsvm,), {"distillation_beta": -1.0})
    neither = type("Neither", (dsvm,), {"distillation_alpha": 0.0, "distillation_beta": 0.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        negative({}, "2d", 0, {}, torch.device("cpu"))
    with pytest.raises(ValueError, match="use nnUNetTrainerVMUNet instead"):
        neither({}, "2d", 0, {}, torch.device("cpu"))


def test_paper_trainers_use_the_papers_protocol(make_trainer, monkeypatch):
    trainer = make_trainer("nnUNetTrainerDSVMUNetPaper")
    trainer.initialize()
    assert not trainer.enable_deep_supervision and not trainer.network.decoder.deep_supervision
    assert trainer.num_epochs == 300
    for epoch, lr in ((0, 1e-3), (50, 1e-5), (100, 1e-3)):  # periodic, T_max 50
        trainer.lr_scheduler.step(epoch)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    clipped = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clipped.append(a))
    outputs = _train_steps(trainer, steps=1)
    assert clipped == [] and set(outputs[0]) == {"loss", PROJECTION, PROGRESSIVE}
    default = make_trainer("nnUNetTrainerVMUNetQuick")
    default.initialize()
    _train_steps(default, steps=1)
    assert len(clipped) == 1 and clipped[0][1] == 12  # nnU-Net's clipping in the default trainers


# --- NNUNET_MAMBA_PRETRAINED: fresh runs only ---------------------------------------------------------------

@pytest.fixture
def vmamba_file(tmp_path, monkeypatch):
    from support import synthetic_vmamba_v0

    state = synthetic_vmamba_v0(embed_dim=32, depths=(2, 2, 2, 2))  # the quick trainers' width
    torch.save({"model": state}, tmp_path / "vmamba.pth")
    monkeypatch.setenv(PRETRAINED_ENV_VAR, str(tmp_path / "vmamba.pth"))
    return state


def _logging(trainer):
    logged = []
    trainer.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
    return logged


def _has_vmamba_weights(trainer, state):
    return torch.equal(trainer.network.stem.norm.weight.detach(), state["patch_embed.norm.weight"]) and \
        torch.equal(trainer.network.decoder.stages[0][0].norm.weight.detach(), state["layers.3.blocks.0.ln_1.weight"])


@pytest.mark.parametrize("continue_training", [False, True])  # --c that finds no checkpoint: a fresh run too
def test_vmamba_weights_initialise_a_fresh_run(make_trainer, vmamba_file, continue_training):
    trainer = make_trainer("nnUNetTrainerDSVMUNetQuick", continue_training=continue_training)
    logged = _logging(trainer)
    trainer.initialize()
    assert not _has_vmamba_weights(trainer, vmamba_file)  # building reads nothing (so --val never does)
    trainer.maybe_initialise_from_pretrained()  # what the start of training calls
    assert _has_vmamba_weights(trainer, vmamba_file)
    assert any(line.startswith(f"{PRETRAINED_ENV_VAR}: initialised from") for line in logged)


def test_vmamba_weights_are_ignored_when_resuming_or_with_pretrained_weights(make_trainer, vmamba_file, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    first = make_trainer("nnUNetTrainerDSVMUNetQuick")
    first.initialize()
    with torch.no_grad():  # a trained model's weights differ from a fresh initialisation
        for p in first.network.parameters():
            p.add_(0.01)
    first.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))

    resumed = make_trainer("nnUNetTrainerDSVMUNetQuick", continue_training=True)
    logged = _logging(resumed)
    resumed.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))  # what --c does
    resumed.maybe_initialise_from_pretrained()
    assert not _has_vmamba_weights(resumed, vmamba_file)
    assert any("ignored: this run continues from a checkpoint" in line for line in logged)

    fine_tuned = make_trainer("nnUNetTrainerDSVMUNetQuick")
    logged = _logging(fine_tuned)
    fine_tuned.initialize()
    load_pretrained_weights(fine_tuned.network, str(tmp_path / "checkpoint_latest.pth"))  # -pretrained_weights
    fine_tuned.maybe_initialise_from_pretrained()
    assert not _has_vmamba_weights(fine_tuned, vmamba_file)
    assert torch.equal(fine_tuned.network.stem.norm.weight, first.network.stem.norm.weight)
    assert any("ignored: the network's weights were loaded from another file" in line for line in logged)


def test_vmamba_weights_for_a_3d_run_are_a_named_error(make_trainer, vmamba_file):
    trainer = make_trainer("nnUNetTrainerVMUNetQuick", "3d_fullres")
    trainer.initialize()
    with pytest.raises(ValueError, match=rf"{PRETRAINED_ENV_VAR}=.*vmamba.pth.*3D.*from scratch"):
        trainer.maybe_initialise_from_pretrained()
