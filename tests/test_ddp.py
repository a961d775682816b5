"""nnU-Net's DDP code path with our trainer: two CPU processes over gloo, two real train steps."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from e2e_support import DATASET_ID, ext_trainer_paths


def _cpu_ddp(module, device_ids=None, **kwargs):
    # nnU-Net passes device_ids=[local_rank], which only CUDA modules accept; everything else is nnU-Net's
    return torch.nn.parallel.DistributedDataParallel(module, **kwargs)


def _worker(rank: int, world_size: int, init_file: str, env: dict, result_file: str):
    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        trainer_module.DDP = _cpu_ddp
        preprocessed = os.path.join(env["nnUNet_preprocessed"], env["DATASET_NAME"])
        trainer_class = recursive_find_trainer_class_by_name("nnUNetTrainerVMUNetQuick")
        plans = load_json(os.path.join(preprocessed, "nnUNetPlans.json"))
        plans["continue_training"] = False  # nnUNetv2_train adds this before building the trainer
        trainer = trainer_class(plans, "2d", 0, load_json(os.path.join(preprocessed, "dataset.json")),
                                torch.device("cpu"))
        # under DDP nnU-Net assumes one GPU per rank; this test is the CPU/gloo rendition of the same code path
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None
        trainer.initialize()
        assert trainer.is_ddp and isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
        patch = trainer.configuration_manager.patch_size
        generator = torch.Generator().manual_seed(rank)  # each rank sees different data
        losses = []
        for _ in range(2):  # a parameter without gradient makes DDP fail at the second step
            data = torch.randn(trainer.batch_size, 1, *patch, generator=generator)
            seg = torch.randint(0, 3, (trainer.batch_size, 1, *patch), generator=generator).float()
            targets = [torch.nn.functional.interpolate(seg, size=[round(p * s) for p, s in zip(patch, scale)],
                                                       mode="nearest-exact")
                       for scale in trainer._get_deep_supervision_scales()]
            losses.append(float(trainer.train_step({"data": data, "target": targets})["loss"]))
        flat = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            torch.save({"losses": losses, "max_param_difference": float((gathered[0] - gathered[1]).abs().max())},
                       result_file)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_train_steps_keep_replicas_identical(nnunet_workspace, tmp_path):
    env = nnunet_workspace.env()
    env["nnUNet_extTrainer"] = ext_trainer_paths()
    env["DATASET_NAME"] = nnunet_workspace.dataset_folder(DATASET_ID).name
    result_file = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), env, result_file), nprocs=2, join=True)
    result = torch.load(result_file)
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    # gradients were averaged across ranks: both replicas took the same optimiser step
    assert result["max_param_difference"] == pytest.approx(0.0, abs=1e-6)
