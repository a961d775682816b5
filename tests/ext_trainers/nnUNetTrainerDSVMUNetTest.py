"""A short DSVM-UNet test trainer (found through nnUNet_extTrainer); epochs from NNUNET_MAMBA_TEST_EPOCHS."""
import os

import torch

from nnunet_mamba_trainers.nnUNetTrainerDSVMUNet import nnUNetTrainerDSVMUNetQuick


class nnUNetTrainerDSVMUNetTest(nnUNetTrainerDSVMUNetQuick):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_MAMBA_TEST_EPOCHS", "2"))
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
