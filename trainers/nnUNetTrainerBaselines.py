"""nnU-Net's own trainer on our quick CPU schedule: the baseline next to the ...Quick trainers in a smoke run of
``nnunet-mamba compare`` (real comparisons use nnU-Net's ``nnUNetTrainer`` itself, with nnUNetPlans or the ResEnc
presets' plans)."""
import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)


class nnUNetTrainerQuickCPU(nnUNetTrainerNoMirroring):
    """Ours: nnU-Net's trainer (network from the plans, SGD, loss, augmentation) on the quick run's 6 x 25 iterations."""

    #: the network comes from the plans (nnU-Net's UNet or residual-encoder UNet), not from our registry
    network_name = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 6
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 4
        self.save_every = 1
