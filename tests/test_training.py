"""Trainer pieces that need no dataset: schedules, the papers' loss, how trainers are declared and found."""
import ast
import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_mamba import discovery
from nnunet_mamba.discovery import load_trainer
from nnunet_mamba.training import CosineAnnealingLRScheduler
from nnunet_mamba.training.protocols import bce_dice_loss


def test_cosine_schedule_endpoints_and_resume():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = CosineAnnealingLRScheduler(optimizer, 1e-3, 1e-5, max_steps=100)
    scheduler.step(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    scheduler.step(50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    scheduler.step(100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    scheduler.step(150)  # held at the minimum after max_steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    # a fresh scheduler stepped to the epoch of a checkpoint gives the same lr: resuming is exact
    resumed = CosineAnnealingLRScheduler(optimizer, 1e-3, 1e-5, max_steps=100)
    resumed.step(37)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.37)))


def test_periodic_cosine_is_pytorchs_cosine_annealing_lr_stepped_per_epoch():
    """VM-UNet: CosineAnnealingLR(T_max=50, eta_min=1e-5), scheduler.step() once per epoch for 300 epochs."""
    theirs_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(theirs_optimizer, T_max=50, eta_min=1e-5)
    ours_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ours = CosineAnnealingLRScheduler(ours_optimizer, 1e-3, 1e-5, max_steps=50, periodic=True)
    for epoch in range(300):
        ours.step(epoch)  # nnU-Net steps with the epoch at the start of it
        assert ours_optimizer.param_groups[0]["lr"] == pytest.approx(theirs_optimizer.param_groups[0]["lr"],
                                                                     rel=1e-6, abs=1e-12), epoch
        theirs_optimizer.step()
        theirs.step()
    ours.step(100)
    assert ours_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # periodic: back at the start


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_loss_is_vm_unets_bce_dice_on_nnunets_two_channel_head(seed):
    """BceDice (VM-UNet utils): BCE(sigmoid) + 1 - mean over samples of (2 sum(p y) + 1) / (sum p + sum y + 1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 2, 16, 12, generator=generator)
    target = (torch.rand(3, 1, 16, 12, generator=generator) > 0.6).float()
    labels = LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)
    ours = bce_dice_loss(labels, is_ddp=False)(logits, target)

    p = torch.sigmoid(logits[:, 1] - logits[:, 0])  # the softmax foreground probability
    y = target[:, 0]
    bce = F.binary_cross_entropy(p, y)
    dice = (2 * (p * y).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + y.flatten(1).sum(1) + 1)
    bce_dice = bce + 1 - dice.mean()
    assert ours.item() == pytest.approx(bce_dice.item() - 1, abs=1e-5)


def _trainer_files():
    return sorted(discovery.trainers_folder().glob("*.py"))


def test_trainer_files_are_leaf_declarations_imported_one_way():
    """nnU-Net imports each trainer file under its bare name; importing one from another (or as
    nnunet_mamba_trainers.X) would load the same file twice under two names."""
    for path in _trainer_files():
        tree = ast.parse(path.read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not any(m.startswith("nnunet_mamba_trainers") or m.startswith("nnUNetTrainer") for m in imported), \
            (path.name, imported)
    repo = Path(__file__).resolve().parents[1]
    sources = [p for folder in ("nnunet_mamba", "trainers", "tests", "examples") for p in (repo / folder).rglob("*.py")]
    offenders = [str(p) for p in sources if re.search(r"^\s*(from|import) nnunet_mamba_trainers\b",
                                                      p.read_text(errors="ignore"), flags=re.M)]
    assert offenders == []


def test_every_trainer_is_found_by_nnunet_and_has_nnunets_signature():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    expected = list(inspect.signature(nnUNetTrainer.__init__).parameters)
    names = discovery.trainer_names()
    assert {"nnUNetTrainerVMUNet", "nnUNetTrainerVMUNetPaper", "nnUNetTrainerDSVMUNet",
            "nnUNetTrainerDSVMUNetPaper"} <= set(names)
    for name in names:
        trainer = load_trainer(name)
        assert trainer.__name__ == name and issubclass(trainer, nnUNetTrainer)
        # nnU-Net re-creates trainers from checkpoints with the recorded init_args of this signature
        assert list(inspect.signature(trainer.__init__).parameters) == expected, name


class _Configuration:
    def __init__(self, patch_size, strides):
        self.patch_size = patch_size
        self.pool_op_kernel_sizes = strides


def test_trainer_builds_its_network_from_the_plan():
    configuration = _Configuration([20, 96, 80], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
    network = load_trainer("nnUNetTrainerVMUNetQuick").build_network_architecture(None, configuration, 2, 4, True)
    assert network.strides == [(2, 4, 4), (2, 2, 2), (1, 2, 2), (1, 1, 1)]
    assert network.level_dims[0] == 32  # the registered small instance
    inference = load_trainer("nnUNetTrainerVMUNet").build_network_architecture(
        None, _Configuration([64, 64], [[1, 1], [2, 2]]), 1, 2, False)
    assert inference.level_dims[0] == 96 and not inference.decoder.deep_supervision
