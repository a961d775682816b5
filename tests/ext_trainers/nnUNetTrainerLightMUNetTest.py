"""A LightM-UNet trainer for the end-to-end tests (tests/test_light_m_unet_e2e.py), found through nnUNet_extTrainer.

The official protocol (Adam, poly, no deep supervision, float32) on the registry's small LightM-UNet with the quick
CPU settings; epochs come from NNUNET_MAMBA_TEST_EPOCHS so that a run can be continued with ``--c`` under the same
trainer name (the name decides the output folder).
"""
import os

import torch

from nnunet_mamba.training import LightMUNetProtocol, MambaTrainerBase, QuickCPURun


class nnUNetTrainerLightMUNetTest(QuickCPURun, LightMUNetProtocol, MambaTrainerBase):
    network_name = "light_m_unet"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_MAMBA_TEST_EPOCHS", "4"))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_MAMBA_TEST_ITERATIONS", "25"))
        self.num_val_iterations_per_epoch = 2
