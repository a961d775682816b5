"""Trainer pieces that need no data: network from a plan, deep-supervision scales, optimiser, schedule."""
import math

import pytest
import torch

from nnunet_mamba.training import CosineAnnealingLRScheduler
from nnunet_mamba_trainers.nnUNetTrainerVMUNet import nnUNetTrainerVMUNet, nnUNetTrainerVMUNetQuick


def test_cosine_schedule_endpoints_and_resume():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = CosineAnnealingLRScheduler(optimizer, 1e-3, 1e-5, max_steps=100)
    scheduler.step(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    scheduler.step(50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    scheduler.step(100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    # a fresh scheduler stepped to the epoch of a checkpoint gives the same lr: resuming is exact
    resumed = CosineAnnealingLRScheduler(optimizer, 1e-3, 1e-5, max_steps=100)
    resumed.step(37)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.37)))


class _Configuration:
    def __init__(self, patch_size, strides):
        self.patch_size = patch_size
        self.pool_op_kernel_sizes = strides


def test_trainer_builds_vm_unet_from_the_plan_with_plan_strides():
    configuration = _Configuration([20, 96, 80], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
    network = nnUNetTrainerVMUNetQuick.build_network_architecture(None, configuration, 2, 4, True)
    assert network.strides == [(2, 4, 4), (2, 2, 2), (1, 2, 2), (1, 1, 1)]
    assert network.dims[0] == 32
    outputs = network(torch.zeros(1, 2, 20, 96, 80))
    assert [tuple(o.shape[2:]) for o in outputs] == [(20, 96, 80), (5, 12, 10), (5, 6, 5), (5, 6, 5)]
    inference = nnUNetTrainerVMUNet.build_network_architecture(None, _Configuration([64, 64], [[1, 1], [2, 2]]),
                                                               1, 2, False)
    assert inference.dims[0] == 96 and not inference.decoder.deep_supervision


def test_trainer_signature_is_nnunets():
    """nnU-Net re-creates trainers from checkpoints with the recorded init_args of this signature."""
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    expected = list(inspect.signature(nnUNetTrainer.__init__).parameters)
    for trainer in (nnUNetTrainerVMUNet, nnUNetTrainerVMUNetQuick):
        assert list(inspect.signature(trainer.__init__).parameters) == expected
