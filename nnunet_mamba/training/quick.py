"""Settings of the minutes-long CPU runs (demo and tests), for any of our trainers."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

from nnunet_mamba.architectures import get_network


class QuickCPURun(nnUNetTrainerNoMirroring):
    """Mixin placed before one of our trainers in the bases: the registered small instance of the trainer's network
    (``vm_unet_small`` for ``vm_unet``), short epochs, no mirroring, and a higher learning rate so that a few hundred
    iterations learn something. ``network_name`` stays the network's: its plans fit the small instance."""

    @classmethod
    def network_to_build(cls) -> str:
        name = super().network_to_build()
        return get_network(name).small_instance if name else name

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 2e-3
        self.num_epochs = 6
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 4
        self.save_every = 1
