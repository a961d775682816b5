"""VM-UNet trainers: one name for 2d and 3d_fullres, the plan decides."""
import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

from nnunet_mamba.training import MambaTrainerBase


class nnUNetTrainerVMUNet(MambaTrainerBase):
    network_name = "vm_unet"


class nnUNetTrainerVMUNetQuick(nnUNetTrainerVMUNet, nnUNetTrainerNoMirroring):
    """A minutes-long CPU run for the demo and tests: a narrow VM-UNet, short epochs, no mirroring, and a
    higher learning rate so that a few hundred iterations learn something."""

    network_overrides = {"embed_dim": 32, "drop_path_rate": 0.0}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 2e-3
        self.num_epochs = 6
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 4
        self.save_every = 1
