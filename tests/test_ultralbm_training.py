"""UltraLBM-UNet trainers in-process: the paper's optimisation, the teacher lookup with its named refusals, hybrid
distillation steps in 2D (UltraLBM teacher) and 3D (nnU-Net's default UNet as the teacher), and the teacher record
that ``--c`` verifies. The stock-CLI run (train teacher, distil, --c, predict) is in test_ultralbm_e2e.py."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from e2e_support import random_training_batch
from nnunet_mamba.pipeline import write_untrained_results_folder
from nnunet_mamba.architectures import build_network
from nnunet_mamba.discovery import trainer_names
from nnunet_mamba.training.hybrid_distillation import TEACHER_RECORD_KEY
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler
from nnunet_mamba.training.teacher import (
    TEACHER_CHECKPOINT_ENV_VAR,
    TEACHER_ENV_VAR,
    TeacherError,
    load_teacher,
)

OURS = ("nnUNetTrainerUltraLBMUNet", "nnUNetTrainerUltraLBMUNetTNoKD", "nnUNetTrainerUltraLBMUNetT",
        "nnUNetTrainerUltraLBMUNetQuick", "nnUNetTrainerUltraLBMUNetTNoKDQuick", "nnUNetTrainerUltraLBMUNetTQuick")
#: trainer -> (trains under autocast, GLMBP's reversed pass): float32 as the official code unless named AMP
VARIANTS = {f"nnUNetTrainerUltraLBMUNet{student}{variant}":
            (variant == "AMP", "channel" if variant == "ChannelFlip" else "token")
            for student in ("", "TNoKD", "T") for variant in ("", "AMP", "ChannelFlip")}
TERMS = {"dkd_distillation": 0.5, "attention_distillation": 0.2, "edge_distillation": 0.3}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def teacher_2d(make_trainer, tmp_path):
    """An (untrained) UltraLBM-UNet teacher of fold 0, 2d, as nnUNetv2_train leaves it."""
    trainer = make_trainer("nnUNetTrainerUltraLBMUNetQuick")
    trainer.initialize()
    return write_untrained_results_folder(trainer, tmp_path / "results")


def test_paper_optimisation_and_networks(make_trainer):
    assert set(OURS) <= set(trainer_names())
    widths = {}
    for name in OURS[:3]:
        trainer = make_trainer(name)
        trainer.initialize()
        assert not trainer.enable_deep_supervision and trainer.gradient_clip_norm is None
        group = trainer.optimizer.param_groups[0]
        assert type(trainer.optimizer) is torch.optim.AdamW and (group["lr"], group["weight_decay"]) == (1e-3, 1e-2)
        scheduler = trainer.lr_scheduler
        assert isinstance(scheduler, CosineAnnealingLRScheduler) and scheduler.periodic
        assert (trainer.num_epochs, scheduler.max_steps, scheduler.min_lr) == (300, 50, 1e-5)
        # three full cycles over the run: back at the top at epochs 100 and 200, at the bottom at 50, 150, 250
        assert [scheduler.lr_at(e) for e in (100, 200)] == pytest.approx([1e-3, 1e-3])
        assert [scheduler.lr_at(e) for e in (50, 150, 250)] == pytest.approx([1e-5] * 3)
        widths[name] = _count(trainer.network)
    # the published 34,166 / 10,956 (3 input channels, 1 output) with this dataset's 1 channel and 3 heads:
    # enc1 loses 2 x 9 x width weights, the 1x1 head gains 2 x (width + 1)
    assert widths["nnUNetTrainerUltraLBMUNet"] == 34_166 - 2 * 9 * 8 + 2 * (8 + 1) == 34_040
    assert widths["nnUNetTrainerUltraLBMUNetTNoKD"] == 10_956 - 2 * 9 * 4 + 2 * (4 + 1) == 10_894
    assert widths["nnUNetTrainerUltraLBMUNetT"] == widths["nnUNetTrainerUltraLBMUNetTNoKD"]


def test_float32_by_default_amp_and_channel_flip_variants(make_trainer):
    assert set(VARIANTS) <= set(trainer_names())
    for name, (amp, reverse) in VARIANTS.items():
        trainer = make_trainer(name)
        assert trainer.autocast_network is amp, name  # what the train step's autocast and grad scaler follow
        network = type(trainer).build_network_architecture(
            trainer.plans_manager, trainer.configuration_manager, 1, 3, False)
        assert {block.reverse for block in network.modules() if hasattr(block, "reverse")} == {reverse}, name


def _distillation_steps(student, steps=2):
    generator = torch.Generator().manual_seed(0)
    teacher_before = {k: v.clone() for k, v in student.teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in student.network.parameters()]
    outputs = [student.train_step(random_training_batch(student, generator)) for _ in range(steps)]
    assert all(set(out) == {"loss", *TERMS} for out in outputs)
    assert all(np.isfinite(float(out[name])) and float(out[name]) >= 0 for out in outputs for name in TERMS)
    assert not student.teacher.training and all(p.grad is None and not p.requires_grad
                                                for p in student.teacher.parameters())
    assert all(torch.equal(v, student.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.network.parameters()))
    return outputs


def test_student_distils_from_an_ultralbm_teacher(make_trainer, teacher_2d, monkeypatch):
    monkeypatch.setenv(TEACHER_ENV_VAR, str(teacher_2d))
    student = make_trainer("nnUNetTrainerUltraLBMUNetTQuick")
    student.initialize()
    assert student.loss_term_weights == TERMS
    record = student.load_distillation_teacher()
    assert type(student.teacher).__name__ == "UltraLBMUNet" and type(student.network).__name__ == "UltraLBMUNetT"
    assert record.sha256 == hashlib.sha256((teacher_2d / "fold_0" / "checkpoint_final.pth").read_bytes()).hexdigest()
    assert record.trainer_name == "nnUNetTrainerUltraLBMUNetQuick" and record.configuration == "2d"
    _distillation_steps(student)
    # the teacher is no part of what is saved or predicted with
    assert student.network.state_dict().keys() == build_network(
        "ultralbm_unet_t", student.configuration_manager, 1, 3, False).state_dict().keys()
    assert student.extra_checkpoint_state()[TEACHER_RECORD_KEY] == record.as_dict()


def test_nnunet_default_unet_teaches_a_3d_student(make_trainer, tmp_path, monkeypatch):
    """Any trained network is a teacher (the terms act on outputs); 3D, three classes (multi-class DKD)."""
    teacher_trainer = make_trainer("nnUNetTrainer", "3d_fullres")
    teacher_trainer.initialize()
    folder = write_untrained_results_folder(teacher_trainer, tmp_path / "results")
    monkeypatch.setenv(TEACHER_ENV_VAR, str(folder))
    student = make_trainer("nnUNetTrainerUltraLBMUNetTQuick", "3d_fullres")
    student.initialize()
    student.load_distillation_teacher()
    assert type(student.teacher).__name__ == "PlainConvUNet" and not student.teacher.decoder.deep_supervision
    _distillation_steps(student, steps=1)


def test_teacher_refusals_name_the_problem(make_trainer, teacher_2d, tmp_path, monkeypatch):
    student = make_trainer("nnUNetTrainerUltraLBMUNetTQuick")
    setting = student.student_setting()
    cpu = torch.device("cpu")
    monkeypatch.delenv(TEACHER_ENV_VAR, raising=False)
    with pytest.raises(TeacherError, match=f"{TEACHER_ENV_VAR} is not set.*nnUNetTrainerUltraLBMUNet__nnUNetPlans__2d"):
        load_teacher(setting, cpu)
    with pytest.raises(TeacherError, match="is not a folder"):
        load_teacher(setting, cpu, str(tmp_path / "nowhere"))
    with pytest.raises(TeacherError, match="has no plans.json"):
        load_teacher(setting, cpu, str(teacher_2d / "fold_0"))
    with pytest.raises(TeacherError, match="no teacher checkpoint .*checkpoint_best.pth.*checkpoints there: "
                                           "checkpoint_final.pth"):
        load_teacher(setting, cpu, str(teacher_2d), "checkpoint_best.pth")

    def variant(name, edit_plans=None, edit_dataset=None, fold=0):
        copy = tmp_path / name
        shutil.copytree(teacher_2d, copy)
        for file, edit in (("plans.json", edit_plans), ("dataset.json", edit_dataset)):
            if edit is not None:
                content = json.loads((copy / file).read_text())
                edit(content)
                (copy / file).write_text(json.dumps(content))
        if fold != 0:
            (copy / "fold_0").rename(copy / f"fold_{fold}")
        return str(copy)

    with pytest.raises(TeacherError, match="has no fold_0 .*it has fold_3.*same fold"):
        load_teacher(setting, cpu, variant("other_fold", fold=3))
    with pytest.raises(TeacherError, match="plans 'OtherPlans' .*the student's: 'nnUNetPlans'"):
        load_teacher(setting, cpu, variant("plans", edit_plans=lambda p: p.update(plans_name="OtherPlans")))
    with pytest.raises(TeacherError, match=r"patch size \[48, 48\]"):
        load_teacher(setting, cpu, variant("patch", edit_plans=lambda p: p["configurations"]["2d"].update(
            patch_size=[48, 48])))
    with pytest.raises(TeacherError, match=r"normalisation \['NoNormalization'\]"):
        load_teacher(setting, cpu, variant("norm", edit_plans=lambda p: p["configurations"]["2d"].update(
            normalization_schemes=["NoNormalization"])))
    with pytest.raises(TeacherError, match="4 segmentation heads .*the student's: 3"):
        load_teacher(setting, cpu, variant("heads", edit_dataset=lambda d: d["labels"].update(extra=3)))
    # a teacher of another dataset with the very same shapes (the probe's T.otherds)
    student_dataset = setting.dataset_name
    with pytest.raises(TeacherError, match=f"dataset 'Dataset991_Other' \\(the student's: '{student_dataset}'\\)"
                                           f".*train the teacher on {student_dataset} with -p nnUNetPlans"):
        load_teacher(setting, cpu, variant("dataset", edit_plans=lambda p: p.update(dataset_name="Dataset991_Other")))
    renamed = {"background": 0, "liver": 1, "tumor": 2}
    assert setting.labels.keys() != renamed.keys() and len(setting.labels) == len(renamed)
    with pytest.raises(TeacherError, match=r"labels \{background: 0, liver: 1, tumor: 2\} \(the student's: "
                                           r"\{background: 0, "):
        load_teacher(setting, cpu, variant("labels", edit_dataset=lambda d: d.update(labels=renamed)))
    swapped = dict(zip(setting.labels, [0, *reversed(list(setting.labels.values())[1:])]))
    with pytest.raises(TeacherError, match="labels .*the student's"):
        load_teacher(setting, cpu, variant("swapped", edit_dataset=lambda d: d.update(labels=swapped)))
    three_d = make_trainer("nnUNetTrainerUltraLBMUNetQuick", "3d_fullres")
    three_d.initialize()
    folder_3d = write_untrained_results_folder(three_d, tmp_path / "results3d")
    with pytest.raises(TeacherError, match="configuration '3d_fullres' .*the student's: '2d'"):
        load_teacher(setting, cpu, str(folder_3d))


def test_continued_student_keeps_its_teacher(make_trainer, teacher_2d, tmp_path, monkeypatch):
    monkeypatch.setenv(TEACHER_ENV_VAR, str(teacher_2d))
    student = make_trainer("nnUNetTrainerUltraLBMUNetTQuick")
    student.initialize()
    student.load_distillation_teacher()
    _distillation_steps(student, steps=1)
    saved = tmp_path / "student_latest.pth"
    student.save_checkpoint(str(saved))
    checkpoint = torch.load(saved, map_location="cpu", weights_only=False)
    teacher_bytes = (teacher_2d / "fold_0" / "checkpoint_final.pth").read_bytes()
    assert checkpoint[TEACHER_RECORD_KEY]["sha256"] == hashlib.sha256(teacher_bytes).hexdigest()
    assert checkpoint["network_weights"].keys() == student.network.state_dict().keys()
    assert checkpoint["training_modules"] == {}

    # another teacher file in the same folder: refused on --c
    other = teacher_2d / "fold_0" / "checkpoint_best.pth"
    other_trainer = make_trainer("nnUNetTrainerUltraLBMUNetQuick")
    other_trainer.initialize()
    with torch.no_grad():  # same seed as the first teacher: make it another network
        next(other_trainer.network.parameters()).add_(1.0)
    other_trainer.save_checkpoint(str(other))
    monkeypatch.setenv(TEACHER_CHECKPOINT_ENV_VAR, "checkpoint_best.pth")
    resumed = make_trainer("nnUNetTrainerUltraLBMUNetTQuick", continue_training=True)
    resumed.load_checkpoint(str(saved))
    with pytest.raises(TeacherError, match="this student was distilled from .*checkpoint_final.pth.*but the teacher "
                                           "now is .*checkpoint_best.pth"):
        resumed.load_distillation_teacher()

    # the variables unset: the recorded teacher is read from its recorded path, and verified
    monkeypatch.delenv(TEACHER_ENV_VAR)
    monkeypatch.delenv(TEACHER_CHECKPOINT_ENV_VAR)
    resumed = make_trainer("nnUNetTrainerUltraLBMUNetTQuick", continue_training=True)
    resumed.load_checkpoint(str(saved))
    assert resumed.load_distillation_teacher().as_dict() == checkpoint[TEACHER_RECORD_KEY]
    assert resumed.current_epoch == checkpoint["current_epoch"]
