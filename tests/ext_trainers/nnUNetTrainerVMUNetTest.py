"""Test trainers found by nnU-Net through nnUNet_extTrainer (a second folder next to ours).

Epochs come from NNUNET_MAMBA_TEST_EPOCHS so that a test can stop a run and resume it with ``--c`` under the
same trainer name (the name decides the output folder). NNUNET_MAMBA_TEST_KILL_AT="EPOCH:ITERATION" kills the
process with SIGKILL at that training iteration: a run interrupted the hard way, mid-epoch.
"""
import os
import signal

import torch

from nnunet_mamba.training import DualSelfDistillationTrainer, MambaTrainerBase, QuickCPURun


class _TestSchedule(QuickCPURun):
    iterations_per_epoch = 25

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_MAMBA_TEST_EPOCHS", "4"))
        self.num_iterations_per_epoch = self.iterations_per_epoch
        kill_at = os.environ.get("NNUNET_MAMBA_TEST_KILL_AT")
        self._kill_at = tuple(int(v) for v in kill_at.split(":")) if kill_at else None
        self._iteration = 0

    def on_train_epoch_start(self):
        self._iteration = 0
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        if self._kill_at == (self.current_epoch, self._iteration):
            os.kill(os.getpid(), signal.SIGKILL)
        self._iteration += 1
        return super().train_step(batch)


class nnUNetTrainerVMUNetTest(_TestSchedule, MambaTrainerBase):
    network_name = "vm_unet"


class nnUNetTrainerDSVMUNetTest(_TestSchedule, DualSelfDistillationTrainer):
    network_name = "vm_unet"
    iterations_per_epoch = 10

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_val_iterations_per_epoch = 2
