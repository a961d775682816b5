"""The official LightM-UNet training protocol (MrBlankness/LightM-UNet, ``nnUNetTrainerLightMUNet``).

Adam lr 1e-4, weight decay 1e-5 (plain L2 on every parameter, Mamba's A_log and D included), eps 1e-5; nnU-Net's
poly schedule (exponent 0.9, stepped once per epoch); 100 epochs of nnU-Net's 250 iterations; nnU-Net's Dice + CE
without deep supervision; gradient norm clipped at 12; float32 training (no autocast, no gradient scaler). The
paper says SGD; the code that produced its results uses Adam, as here.
"""
from __future__ import annotations

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


class LightMUNetProtocol:
    """Mixin placed before a :class:`~nnunet_mamba.training.MambaTrainerBase` trainer in the bases."""

    autocast_network = False
    adam_eps = 1e-5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-4
        self.weight_decay = 1e-5
        self.num_epochs = 100
        self.enable_deep_supervision = False

    def build_optimizer(self, parameters):
        return torch.optim.Adam(parameters, lr=self.initial_lr, weight_decay=self.weight_decay, eps=self.adam_eps)

    def build_lr_scheduler(self, optimizer):
        return PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.9)
