"""nnU-Net training of a student with UltraLBM-UNet's hybrid distillation from a frozen, trained teacher.

Loss per step: nnU-Net's segmentation loss + 0.5 L_DKD + 0.2 L_AT + 0.3 L_grad (the weights of the official
``train_distillation.py``; the paper gives none), the three terms on the softmax outputs of the student and the
teacher for the same augmented batch (:mod:`nnunet_mamba.distillation.hybrid`, in float32).

The teacher comes from ``NNUNET_MAMBA_TEACHER`` (:mod:`nnunet_mamba.training.teacher`: same dataset and
labels, plans, configuration, patch, normalisation, heads and fold as the student, else a named error). It is
read when training starts, so ``--val`` and ``nnUNetv2_predict`` never need it; it lives on the trainer, outside
``self.network`` and outside the training-only modules, so checkpoints, prediction, ensembling and
``-pretrained_weights`` see the student alone. Its record (path and SHA-256) goes into every checkpoint; ``--c``
reloads the recorded teacher (from its recorded path when the variable is unset) and refuses to go on with a
different one.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nnunet_mamba.distillation.hybrid import HYBRID_TERMS, HybridDistillationConfig, hybrid_distillation_terms
from nnunet_mamba.training.teacher import (
    TEACHER_ENV_VAR,
    StudentSetting,
    TeacherError,
    TeacherRecord,
    load_teacher,
)
from nnunet_mamba.training.trainer_base import MambaTrainerBase

TEACHER_RECORD_KEY = "distillation_teacher"


class HybridDistillationTrainer(MambaTrainerBase):
    """A student distilled from the teacher named by ``NNUNET_MAMBA_TEACHER`` (see the module docstring)."""

    #: weight of each term of :func:`~nnunet_mamba.distillation.hybrid.hybrid_distillation_terms`; 0 drops a term
    distillation_weights: dict[str, float] = {"dkd": 0.5, "attention": 0.2, "edge": 0.3}
    distillation_config = HybridDistillationConfig()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        unknown = sorted(set(self.distillation_weights) - set(HYBRID_TERMS))
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown distillation terms {unknown} in distillation_weights; "
                             f"the terms are {list(HYBRID_TERMS)}")
        negative = {name: weight for name, weight in self.distillation_weights.items() if weight < 0}
        if negative:
            raise ValueError(f"{type(self).__name__}: distillation weights must be >= 0, got {negative}")
        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__} distils softmax probabilities, but this dataset is trained on "
                             f"regions (sigmoid outputs); region-based distillation is not supported")
        self.teacher: torch.nn.Module | None = None
        self.teacher_record: TeacherRecord | None = None
        self._resumed_teacher_record: TeacherRecord | None = None

    @property
    def loss_term_weights(self) -> dict[str, float]:
        return {f"{name}_distillation": float(weight) for name, weight in self.distillation_weights.items()
                if weight > 0}

    def student_setting(self) -> StudentSetting:
        return StudentSetting(
            trainer_name=type(self).__name__, plans_name=self.plans_manager.plans_name,
            configuration=self.configuration_name, fold=str(self.fold),
            patch_size=tuple(int(p) for p in self.configuration_manager.patch_size),
            normalization_schemes=tuple(self.configuration_manager.normalization_schemes),
            num_segmentation_heads=self.label_manager.num_segmentation_heads,
            dataset_name=self.plans_manager.dataset_name, labels=dict(self.dataset_json["labels"]))

    # --- the teacher ----------------------------------------------------------------------------------------

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.load_distillation_teacher()
        super().on_train_start()

    def load_distillation_teacher(self) -> TeacherRecord:
        """Read the teacher (once); on a continued run, the one recorded in the checkpoint, verified."""
        if self.teacher is not None:
            return self.teacher_record
        recorded = self._resumed_teacher_record
        if recorded is not None and not os.environ.get(TEACHER_ENV_VAR, "").strip():
            teacher, record = load_teacher(self.student_setting(), self.device, recorded.folder,
                                           Path(recorded.checkpoint).name)
            self.print_to_log_file(f"{TEACHER_ENV_VAR} is unset: continuing with the teacher recorded in the "
                                   f"checkpoint")
        else:
            teacher, record = load_teacher(self.student_setting(), self.device)
        if recorded is not None and recorded.sha256 != record.sha256:
            raise TeacherError(
                f"this student was distilled from {recorded.describe()}, but the teacher now is {record.describe()}. "
                f"Continuing with another teacher would mix two distillations: set {TEACHER_ENV_VAR} (and "
                f"NNUNET_MAMBA_TEACHER_CHECKPOINT) back to the recorded teacher, or unset them to use the recorded "
                f"path, or start a new training without --c.")
        self.teacher, self.teacher_record = teacher, record
        parameters = sum(p.numel() for p in teacher.parameters())
        self.print_to_log_file(f"Hybrid distillation from {record.describe()}, {parameters / 1e6:.3f}M frozen "
                               f"parameters (not part of the student); terms "
                               f"{', '.join(f'{n} x{w}' for n, w in self.loss_term_weights.items())}")
        return record

    # --- the loss -------------------------------------------------------------------------------------------

    def compute_loss(self, data: torch.Tensor, target):
        if self.teacher is None:
            raise RuntimeError(f"{type(self).__name__}: the teacher is read when training starts "
                               f"(on_train_start / load_distillation_teacher)")
        output = self.network(data)
        with torch.no_grad():
            teacher_output = self.teacher(data)
        student_logits = output[0] if isinstance(output, (list, tuple)) else output
        teacher_logits = teacher_output[0] if isinstance(teacher_output, (list, tuple)) else teacher_output
        full_resolution_target = target[0] if isinstance(target, (list, tuple)) else target
        weighted = tuple(name for name, weight in self.distillation_weights.items() if weight > 0)
        terms = hybrid_distillation_terms(student_logits, teacher_logits, full_resolution_target,
                                          self.distillation_config, ignore_label=self.label_manager.ignore_label,
                                          terms=weighted)
        return self.loss(output, target), {f"{name}_distillation": value for name, value in terms.items()}

    # --- checkpoints ----------------------------------------------------------------------------------------

    def extra_checkpoint_state(self) -> dict:
        record = self.teacher_record or self._resumed_teacher_record
        return {TEACHER_RECORD_KEY: record.as_dict() if record is not None else None}

    def restore_extra_checkpoint_state(self, checkpoint: dict) -> None:
        saved = checkpoint.get(TEACHER_RECORD_KEY)
        self._resumed_teacher_record = TeacherRecord.from_dict(saved) if saved else None
