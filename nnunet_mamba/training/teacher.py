"""A frozen teacher network read from an nnU-Net results folder, for output-level distillation.

``NNUNET_MAMBA_TEACHER`` names the teacher's training output, ``.../DatasetXXX_Name/<Trainer>__<plans>__<config>``;
the student of fold f reads ``fold_f/checkpoint_final.pth`` there (``NNUNET_MAMBA_TEACHER_CHECKPOINT`` names
another file of that fold folder). Distilling from a teacher of another fold would let the student see, through
the teacher, the images it is validated on; so the fold is always the student's own.

The teacher is built the way ``nnUNetv2_predict`` builds it: the checkpoint's ``trainer_name`` is looked up with
nnU-Net's own trainer search, and that class's ``build_network_architecture`` gets the teacher folder's plans and
dataset.json. Any trainer's network qualifies (ours, nnU-Net's default UNet), because distillation acts on the
outputs only; what must agree with the student is what decides those outputs' meaning: the dataset (its name
and the label names and values of its dataset.json), plans name, configuration, patch size, normalisation and the
segmentation heads. Every mismatch is refused with an error that names it, before anything is trained. (This is
the only place a network trained elsewhere enters a training: DSVM-UNet's self-distillation takes its teachers
from the student's own deeper layers.)

A :class:`TeacherRecord` (folder, checkpoint file, SHA-256 of its bytes, trainer) travels in the student's
checkpoints, so that a continued run (``--c``) distils from the very same teacher or refuses to go on.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from torch import nn

from nnunet_mamba.pretrained.checkpoint_io import (CheckpointReadError, load_training_checkpoint,
                                                   strip_wrapper_prefixes)

TEACHER_ENV_VAR = "NNUNET_MAMBA_TEACHER"
TEACHER_CHECKPOINT_ENV_VAR = "NNUNET_MAMBA_TEACHER_CHECKPOINT"
DEFAULT_TEACHER_CHECKPOINT = "checkpoint_final.pth"


class TeacherError(RuntimeError):
    """The teacher cannot be found, read, or does not fit the student."""


@dataclass(frozen=True)
class TeacherRecord:
    """Which teacher a student was distilled from."""

    folder: str
    checkpoint: str
    sha256: str
    trainer_name: str
    plans_name: str
    configuration: str
    fold: str

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TeacherRecord":
        return cls(**{key: str(values[key]) for key in cls.__dataclass_fields__})

    def describe(self) -> str:
        return f"{self.checkpoint} ({self.trainer_name}, sha256 {self.sha256[:12]}...)"


@dataclass(frozen=True)
class StudentSetting:
    """What of the student's plan the teacher must share, and where the student trains."""

    trainer_name: str
    plans_name: str
    configuration: str
    fold: str
    patch_size: tuple[int, ...]
    normalization_schemes: tuple[str, ...]
    num_segmentation_heads: int
    #: the student's dataset folder name (DatasetXXX_Name) and its dataset.json ``labels`` (name -> value)
    dataset_name: str
    labels: dict


def locate_teacher_checkpoint(student: StudentSetting, folder: str | None = None,
                              checkpoint_name: str | None = None) -> Path:
    """The teacher checkpoint for the student's fold, from the arguments or the environment; named errors."""
    folder = (folder if folder is not None else os.environ.get(TEACHER_ENV_VAR, "")).strip()
    if not folder:
        raise TeacherError(
            f"{student.trainer_name} distils from a trained teacher, but {TEACHER_ENV_VAR} is not set. Set it to the "
            f"teacher's nnU-Net results folder, e.g. $nnUNet_results/DatasetXXX_Name/"
            f"nnUNetTrainerUltraLBMUNet__{student.plans_name}__{student.configuration}, after training fold "
            f"{student.fold} of it (nnUNetv2_train DATASET {student.configuration} {student.fold} "
            f"-tr nnUNetTrainerUltraLBMUNet).")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TeacherError(f"{TEACHER_ENV_VAR}={folder!r} is not a folder: it must name the teacher's nnU-Net results "
                           f"folder (<Trainer>__<plans>__<configuration>)")
    for required in ("plans.json", "dataset.json"):
        if not (root / required).is_file():
            raise TeacherError(f"{TEACHER_ENV_VAR}={folder!r} has no {required}, so it is not an nnU-Net results folder "
                               f"(<Trainer>__<plans>__<configuration>, the parent of the fold_N folders)")
    fold_folder = root / f"fold_{student.fold}"
    if not fold_folder.is_dir():
        present = sorted(p.name for p in root.glob("fold_*")) or ["none"]
        raise TeacherError(
            f"the teacher in {root} has no fold_{student.fold} (it has {', '.join(present)}). The student of fold "
            f"{student.fold} distils from the teacher of the same fold, so that no validation case of the student "
            f"was a training case of its teacher: train fold {student.fold} of the teacher first.")
    name = (checkpoint_name if checkpoint_name is not None else
            os.environ.get(TEACHER_CHECKPOINT_ENV_VAR, "").strip() or DEFAULT_TEACHER_CHECKPOINT)
    checkpoint = fold_folder / name
    if not checkpoint.is_file():
        present = sorted(p.name for p in fold_folder.glob("*.pth")) or ["none"]
        hint = " (the teacher's training has not finished: wait for it, or set " \
               f"{TEACHER_CHECKPOINT_ENV_VAR}=checkpoint_best.pth)" if name == DEFAULT_TEACHER_CHECKPOINT else ""
        raise TeacherError(f"no teacher checkpoint {checkpoint}{hint}; checkpoints there: {', '.join(present)}")
    return checkpoint


def check_teacher_fits(student: StudentSetting, teacher_plans: dict, teacher_dataset_json: dict, checkpoint: dict,
                       checkpoint_path: Path) -> None:
    """Refuse a teacher whose outputs mean something else than the student's (named error per difference)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    init_args = checkpoint.get("init_args") or {}
    configuration = str(init_args.get("configuration", ""))
    plans_manager = PlansManager(teacher_plans)
    differences = []
    teacher_dataset = str(teacher_plans.get("dataset_name", "unknown"))
    if teacher_dataset != student.dataset_name:
        differences.append(f"dataset {teacher_dataset!r} (the student's: {student.dataset_name!r})")
    teacher_labels = teacher_dataset_json.get("labels", {})
    if teacher_labels != student.labels:
        differences.append(f"labels {_describe_labels(teacher_labels)} (the student's: "
                           f"{_describe_labels(student.labels)})")
    if plans_manager.plans_name != student.plans_name:
        differences.append(f"plans {plans_manager.plans_name!r} (the student's: {student.plans_name!r})")
    if configuration != student.configuration:
        differences.append(f"configuration {configuration!r} (the student's: {student.configuration!r})")
    if configuration in teacher_plans.get("configurations", {}):
        manager = plans_manager.get_configuration(configuration)
        if tuple(manager.patch_size) != tuple(student.patch_size):
            differences.append(f"patch size {list(manager.patch_size)} (the student's: {list(student.patch_size)})")
        if tuple(manager.normalization_schemes) != tuple(student.normalization_schemes):
            differences.append(f"normalisation {list(manager.normalization_schemes)} (the student's: "
                               f"{list(student.normalization_schemes)})")
    heads = plans_manager.get_label_manager(teacher_dataset_json).num_segmentation_heads
    if heads != student.num_segmentation_heads:
        differences.append(f"{heads} segmentation heads (the student's: {student.num_segmentation_heads})")
    fold = str(init_args.get("fold", student.fold))
    if fold != student.fold:
        differences.append(f"fold {fold} (the student's: {student.fold})")
    if differences:
        raise TeacherError(
            f"the teacher {checkpoint_path} ({checkpoint.get('trainer_name', 'unknown trainer')}) does not fit "
            f"{student.trainer_name}: it was trained with {'; '.join(differences)}. Distillation compares the two "
            f"networks' outputs voxel by voxel, so both must be trained on the same dataset, plans and "
            f"configuration: train the teacher on {student.dataset_name} with -p {student.plans_name} and "
            f"configuration {student.configuration}.")


def _describe_labels(labels: dict) -> str:
    return "{" + ", ".join(f"{name}: {value}" for name, value in labels.items()) + "}"


def load_teacher(student: StudentSetting, device: torch.device, folder: str | None = None,
                 checkpoint_name: str | None = None) -> tuple[nn.Module, TeacherRecord]:
    """The frozen teacher network (eval mode, no gradients) on ``device``, and its record."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mamba.discovery import load_trainer

    path = locate_teacher_checkpoint(student, folder, checkpoint_name)
    root = path.parent.parent
    # read once: the recorded hash is that of the very bytes the weights come from (and a large checkpoint is
    # not read twice)
    try:
        content = path.read_bytes()
        checkpoint = load_training_checkpoint(path, map_location="cpu", content=content)
    except CheckpointReadError as error:  # its message names the file and why
        raise TeacherError(f"cannot read the teacher checkpoint {error}") from error
    except OSError as error:
        raise TeacherError(f"cannot read the teacher checkpoint {path} ({type(error).__name__}: {error})") from error
    missing = [key for key in ("network_weights", "trainer_name", "init_args") if key not in checkpoint]
    if missing:
        raise TeacherError(f"the teacher checkpoint {path} has no {', '.join(missing)}: it is not a checkpoint written "
                           f"by nnUNetv2_train")
    plans, dataset_json = load_json(str(root / "plans.json")), load_json(str(root / "dataset.json"))
    check_teacher_fits(student, plans, dataset_json, checkpoint, path)

    trainer_class = load_trainer(checkpoint["trainer_name"])
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(student.configuration)
    network = trainer_class.build_network_architecture(
        plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, dataset_json),
        student.num_segmentation_heads, False)
    weights = {strip_wrapper_prefixes(key): value for key, value in checkpoint["network_weights"].items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise TeacherError(f"the weights in {path} do not fit the network {checkpoint['trainer_name']} builds from "
                           f"the teacher's plans: {error}") from error
    network.to(device).eval().requires_grad_(False)
    record = TeacherRecord(folder=str(root.resolve()), checkpoint=str(path.resolve()),
                           sha256=hashlib.sha256(content).hexdigest(),
                           trainer_name=str(checkpoint["trainer_name"]), plans_name=plans_manager.plans_name,
                           configuration=student.configuration, fold=student.fold)
    return network, record

