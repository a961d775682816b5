"""Test trainers found by nnU-Net through nnUNet_extTrainer (a second folder next to ours), on one test schedule.

The schedule is the quick CPU one with epochs from NNUNET_MAMBA_TEST_EPOCHS (and iterations from
NNUNET_MAMBA_TEST_ITERATIONS when set), so that a test can stop a run and resume it with ``--c`` under the same
trainer name (the name decides the output folder). NNUNET_MAMBA_TEST_KILL_AT="EPOCH:ITERATION" kills the process
with SIGKILL at that training iteration: a run interrupted the hard way, mid-epoch. NNUNET_MAMBA_TEST_SKIP_VALIDATION=1
leaves out nnU-Net's final validation in a run whose validation no test reads (one that a test continues with
``--c``, distils from, or predicts with ``nnUNetv2_predict``): with the two worker pools it spawns, it costs about
25 s of a 40 s run on two cores. Swin-UMamba's and UltraLBM-UNet-T's final runs still validate; VM-UNet's,
DSVM-UNet's, torchrun's and ``compare``'s tests read what their runs' validation writes.
"""
import os
import random
import signal

import numpy as np
import torch

from nnunet_mamba.training import (
    DualSelfDistillationTrainer,
    EncoderFreeze,
    HybridDistillationTrainer,
    LightMUNetProtocol,
    MambaTrainerBase,
    QuickCPURun,
    UltraLBMProtocol,
)


class _TestSchedule(QuickCPURun):
    iterations_per_epoch = 25
    val_iterations_per_epoch = 4
    #: seeds weights, sampling and augmentation (nnU-Net seeds nothing) where a test's few iterations need a run
    #: that is known to learn; None leaves them random
    seed: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.seed is not None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_MAMBA_TEST_EPOCHS", "4"))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_MAMBA_TEST_ITERATIONS", self.iterations_per_epoch))
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        kill_at = os.environ.get("NNUNET_MAMBA_TEST_KILL_AT")
        self._kill_at = tuple(int(v) for v in kill_at.split(":")) if kill_at else None
        self._iteration = 0

    def on_train_epoch_start(self):
        self._iteration = 0
        super().on_train_epoch_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("NNUNET_MAMBA_TEST_SKIP_VALIDATION") == "1":
            self.print_to_log_file("final validation left out (NNUNET_MAMBA_TEST_SKIP_VALIDATION=1)")
            return
        super().perform_actual_validation(save_probabilities)

    def train_step(self, batch: dict) -> dict:
        if self._kill_at == (self.current_epoch, self._iteration):
            os.kill(os.getpid(), signal.SIGKILL)
        self._iteration += 1
        return super().train_step(batch)


class nnUNetTrainerVMUNetTest(_TestSchedule, MambaTrainerBase):
    network_name = "vm_unet"


class nnUNetTrainerVMUNetNoMambaTest(_TestSchedule, MambaTrainerBase):
    network_name = "vm_unet_no_mamba"


class nnUNetTrainerUNetTest(_TestSchedule):
    """nnU-Net's own trainer and network (from the plans) on the test schedule: a baseline for `compare`."""


class nnUNetTrainerDSVMUNetTest(_TestSchedule, DualSelfDistillationTrainer):
    network_name = "vm_unet"
    iterations_per_epoch = 10
    val_iterations_per_epoch = 2


class nnUNetTrainerLightMUNetTest(_TestSchedule, LightMUNetProtocol, MambaTrainerBase):
    """The official LightM-UNet protocol (Adam, poly, no deep supervision, float32) on the small LightM-UNet.
    Seeded: from some random starts its 75 test iterations learn nothing (Dice 0 in one CI run)."""

    network_name = "light_m_unet"
    val_iterations_per_epoch = 2
    seed = 0


class _SwinUMambaTest(_TestSchedule, EncoderFreeze, MambaTrainerBase):
    """A pretrained encoder frozen for the first 2 epochs. Seeded: from some random starts the cube stays
    unlearnt through the 2D test's 50 iterations (Dice 0.03 in one CI run; issue 23, item 7)."""

    encoder_freeze_epochs = 2
    val_iterations_per_epoch = 1
    seed = 0


class nnUNetTrainerSwinUMambaTest(_SwinUMambaTest):
    network_name = "swin_umamba"


class nnUNetTrainerSwinUMambaDTest(_SwinUMambaTest):
    network_name = "swin_umamba_d"


class nnUNetTrainerUltraLBMUNetTest(_TestSchedule, UltraLBMProtocol, MambaTrainerBase):
    """The UltraLBM-UNet teacher with the paper's optimisation."""

    network_name = "ultralbm_unet"
    val_iterations_per_epoch = 2


class nnUNetTrainerUltraLBMUNetTTest(_TestSchedule, UltraLBMProtocol, HybridDistillationTrainer):
    """The -T student with hybrid distillation from NNUNET_MAMBA_TEACHER."""

    network_name = "ultralbm_unet_t"
    val_iterations_per_epoch = 2
