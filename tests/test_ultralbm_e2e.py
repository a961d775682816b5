"""UltraLBM-UNet-T's hybrid distillation through the stock CLI on the session's synthetic dataset: train the teacher,
distil the student from it with NNUNET_MAMBA_TEACHER, continue with --c (the recorded teacher, verified), predict
with the student. The refusals and the 3D / multi-class steps are in test_ultralbm_training.py, the DDP step in
test_ddp.py."""
import hashlib
import re

import numpy as np
import pytest
import torch

from e2e_support import DATASET_ID, predict_test_images
from nnunet_mamba.architectures import build_network
from nnunet_mamba.training.hybrid_distillation import TEACHER_RECORD_KEY
from nnunet_mamba.training.loss_terms import PLOT_NAME
from nnunet_mamba.training.teacher import TEACHER_ENV_VAR

pytestmark = pytest.mark.slow

TEACHER = "nnUNetTrainerUltraLBMUNetTest"
STUDENT = "nnUNetTrainerUltraLBMUNetTTest"
TERMS = ("dkd_distillation", "attention_distillation", "edge_distillation")


def _epochs_in_log(output_folder):
    text = sorted(output_folder.glob("training_log_*.txt"))[-1].read_text()
    return [int(m) for m in re.findall(r"^\S+ \S+: Epoch (\d+)\s*$", text, flags=re.M)]


def test_teacher_then_distilled_student_resumes_and_predicts(nnunet_workspace):
    workspace = nnunet_workspace
    teacher_output = workspace.trainer_output(DATASET_ID, "2d", 0, TEACHER)
    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TEACHER, "-device", "cpu",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="1", NNUNET_MAMBA_TEST_ITERATIONS="10",
                                    NNUNET_MAMBA_TEST_SKIP_VALIDATION="1"))
    teacher_checkpoint = teacher_output / "checkpoint_final.pth"
    teacher_sha256 = hashlib.sha256(teacher_checkpoint.read_bytes()).hexdigest()

    student_output = workspace.trainer_output(DATASET_ID, "2d", 0, STUDENT)
    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", STUDENT, "-device", "cpu",
                  env=workspace.env(NNUNET_MAMBA_TEST_EPOCHS="1", NNUNET_MAMBA_TEST_ITERATIONS="10",
                                    NNUNET_MAMBA_TEST_SKIP_VALIDATION="1",
                                    **{TEACHER_ENV_VAR: str(teacher_output.parent)}))
    first = torch.load(student_output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    record = first[TEACHER_RECORD_KEY]
    assert record["sha256"] == teacher_sha256 and record["checkpoint"] == str(teacher_checkpoint.resolve())
    assert (record["trainer_name"], record["configuration"], record["fold"]) == (TEACHER, "2d", "0")

    # continued without the variable: the recorded teacher is read again and verified
    workspace.run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", STUDENT, "-device", "cpu", "--c",
                  env={key: value for key, value in workspace.env(NNUNET_MAMBA_TEST_EPOCHS="2",
                                                                  NNUNET_MAMBA_TEST_ITERATIONS="10").items()
                       if key != TEACHER_ENV_VAR})
    assert _epochs_in_log(student_output) == [1]
    final = torch.load(student_output / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and final[TEACHER_RECORD_KEY] == record
    log = sorted(student_output.glob("training_log_*.txt"))[-1].read_text()
    assert "continuing with the teacher recorded in the checkpoint" in log and "Hybrid distillation from" in log
    for name in TERMS:
        values = final["loss_term_logging"][name]
        assert len(values) == 2 and all(np.isfinite(values)) and all(v >= 0 for v in values), (name, values)
    assert (student_output / PLOT_NAME).is_file()

    # the checkpoint holds the student and nothing else: exactly the network nnUNetv2_predict builds for it
    teacher_weights = torch.load(teacher_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    student_shapes = {k: tuple(v.shape) for k, v in final["network_weights"].items()}
    student_network = build_network("ultralbm_unet_t", _configuration(workspace), 1, 3, False)
    assert student_shapes == {k: tuple(v.shape) for k, v in student_network.state_dict().items()}
    assert final["training_modules"] == {}
    assert sum(v.numel() for v in final["network_weights"].values()) < \
        sum(v.numel() for v in teacher_weights.values()) / 2

    predict_test_images(workspace, "2d", STUDENT, "pred_ultralbm_t_2d")


def _configuration(workspace):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = workspace.preprocessed / workspace.dataset_folder(DATASET_ID).name
    return PlansManager(load_json(str(folder / "nnUNetPlans.json"))).get_configuration("2d")
