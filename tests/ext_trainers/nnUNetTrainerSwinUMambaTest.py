"""Swin-UMamba test trainers for nnUNetv2_train: the quick CPU schedule, epochs from NNUNET_MAMBA_TEST_EPOCHS (so a
run can be continued with --c under the same name), and a pretrained encoder frozen for the first 2 epochs."""
import os

import torch

from nnunet_mamba.training import EncoderFreeze, MambaTrainerBase, QuickCPURun


class _SwinUMambaTestSchedule(QuickCPURun, EncoderFreeze, MambaTrainerBase):
    encoder_freeze_epochs = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_MAMBA_TEST_EPOCHS", "4"))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_MAMBA_TEST_ITERATIONS", "25"))
        self.num_val_iterations_per_epoch = 1


class nnUNetTrainerSwinUMambaTest(_SwinUMambaTestSchedule):
    network_name = "swin_umamba"


class nnUNetTrainerSwinUMambaDTest(_SwinUMambaTestSchedule):
    network_name = "swin_umamba_d"
