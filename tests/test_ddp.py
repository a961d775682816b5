"""nnU-Net's DDP code path with our trainer: two CPU processes over gloo, two real train steps."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from e2e_support import DATASET_ID, ext_trainer_paths, random_training_batch
from nnunet_mamba.pipeline import write_untrained_results_folder
from nnunet_mamba.training.teacher import TEACHER_ENV_VAR

pytestmark = pytest.mark.slow


def _cpu_ddp(module, device_ids=None, **kwargs):
    # nnU-Net passes device_ids=[local_rank], which only CUDA modules accept; everything else is nnU-Net's
    return torch.nn.parallel.DistributedDataParallel(module, **kwargs)


def _worker(rank: int, world_size: int, init_file: str, env: dict, result_file: str, trainer_name: str,
            deep_supervision: bool):
    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        trainer_module.DDP = _cpu_ddp
        # nnU-Net converts BatchNorms (UltraLBM-UNet's separable convs) to SyncBatchNorm, which needs CUDA
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(lambda cls, module, process_group=None: module)
        preprocessed = os.path.join(env["nnUNet_preprocessed"], env["DATASET_NAME"])
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
        plans["continue_training"] = False  # nnUNetv2_train adds this before building the trainer
        trainer = trainer_class(plans, "2d", 0, load_json(os.path.join(preprocessed, "dataset.json")),
                                torch.device("cpu"))
        # under DDP nnU-Net assumes one GPU per rank; this test is the CPU/gloo rendition of the same code path
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None
        trainer.enable_deep_supervision = deep_supervision
        trainer.initialize()
        if hasattr(trainer, "load_distillation_teacher"):  # nnU-Net's on_train_start does this before training
            trainer.load_distillation_teacher()
        assert trainer.is_ddp and isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
        generator = torch.Generator().manual_seed(rank)  # each rank sees different data
        losses = []
        for _ in range(2):  # a parameter without gradient makes DDP fail at the second step
            losses.append(float(trainer.train_step(random_training_batch(trainer, generator))["loss"]))
        # network and training-only heads (DSVM-UNet) alike
        flat = torch.cat([p.detach().flatten() for p in trainer.trainable_parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            torch.save({"losses": losses, "max_param_difference": float((gathered[0] - gathered[1]).abs().max()),
                        "parameters": flat.numel()}, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("trainer_name, deep_supervision", [
    ("nnUNetTrainerVMUNetQuick", False),  # the decoder's deep heads then get no gradient
    ("nnUNetTrainerDSVMUNetQuick", True),  # the network and the distillation heads, each in its own DDP wrapper
    ("nnUNetTrainerLightMUNetQuick", False),  # a network without deep supervision, Adam and poly
    ("nnUNetTrainerUltraLBMUNetTQuick", False),  # a student with a frozen teacher outside the DDP wrapper
])
def test_two_process_gloo_train_steps_keep_replicas_identical(nnunet_workspace, make_trainer, tmp_path, trainer_name,
                                                               deep_supervision):
    env = nnunet_workspace.env()
    if trainer_name == "nnUNetTrainerUltraLBMUNetTQuick":
        teacher = make_trainer("nnUNetTrainerUltraLBMUNetQuick")
        teacher.initialize()
        env[TEACHER_ENV_VAR] = str(write_untrained_results_folder(teacher, tmp_path / "results"))
    env["nnUNet_extTrainer"] = ext_trainer_paths()
    env["DATASET_NAME"] = nnunet_workspace.dataset_folder(DATASET_ID).name
    result_file = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), env, result_file, trainer_name, deep_supervision),
             nprocs=2, join=True)
    result = torch.load(result_file)
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    # gradients were averaged across ranks: both replicas took the same optimiser step
    assert result["max_param_difference"] == pytest.approx(0.0, abs=1e-6)
