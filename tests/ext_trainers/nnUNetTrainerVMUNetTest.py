"""A test trainer found by nnU-Net through nnUNet_extTrainer (a second folder next to ours).

Its epoch count comes from NNUNET_MAMBA_TEST_EPOCHS so that a test can stop a run early and resume it
with ``--c`` under the same trainer name (the name decides the output folder).
"""
import os

import torch

from nnunet_mamba_trainers.nnUNetTrainerVMUNet import nnUNetTrainerVMUNetQuick


class nnUNetTrainerVMUNetTest(nnUNetTrainerVMUNetQuick):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_MAMBA_TEST_EPOCHS", "4"))
