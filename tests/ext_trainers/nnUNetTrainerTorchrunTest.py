"""A DSVM-UNet trainer small enough for a two-process torchrun run on CPU (tests/test_torchrun.py).

DSVM-UNet, so that both the network and a training-only module (the distillation heads, in their own DDP
wrapper) are trained across the ranks. Epochs come from NNUNET_MAMBA_TORCHRUN_TEST_EPOCHS (a resume keeps the
trainer name, which decides the output folder). With NNUNET_MAMBA_TORCHRUN_TEST_PARAMETERS set to a folder,
every rank saves its trainable parameters there at the end of training, for the test to compare the replicas;
that folder is the test's own, not the output folder, where rank 0 alone writes.
"""
import os

import torch
from torch import distributed as dist

from nnunet_mamba.training import DualSelfDistillationTrainer, QuickCPURun

EPOCHS_ENV = "NNUNET_MAMBA_TORCHRUN_TEST_EPOCHS"
PARAMETERS_ENV = "NNUNET_MAMBA_TORCHRUN_TEST_PARAMETERS"


class nnUNetTrainerDSVMUNetTorchrunTest(QuickCPURun, DualSelfDistillationTrainer):
    network_name = "vm_unet"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get(EPOCHS_ENV, "1"))
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1

    def on_train_end(self):
        folder = os.environ.get(PARAMETERS_ENV)
        if folder:
            rank = dist.get_rank() if dist.is_initialized() else 0
            flat = torch.cat([p.detach().cpu().flatten() for p in self.trainable_parameters()])
            torch.save({"parameters": flat, "network_weights": self.bare_network.state_dict(),
                        "batch_size": self.batch_size, "device": str(self.device), "epoch": self.current_epoch},
                       os.path.join(folder, f"rank{rank}.pt"))
        super().on_train_end()
