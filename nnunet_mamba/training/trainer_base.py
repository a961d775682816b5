"""What every nnunet-mamba trainer shares; concrete trainers only name their network.

Hyperparameters are set after ``super().__init__`` and the constructor signature is nnU-Net's own:
nnU-Net rebuilds trainers from checkpoints with the recorded ``init_args`` of that signature.
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_mamba.architectures import build_network
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler

COMPILE_DISABLED_REASON = (
    "torch.compile is disabled for nnunet-mamba networks: the selective scan is an opaque custom autograd "
    "function (chunked PyTorch loops or the mamba-ssm CUDA kernel), which the compiler can only break the "
    "graph around, for long compile times and little gain."
)


class MambaTrainerBase(nnUNetTrainer):
    """nnU-Net trainer for a network of the :mod:`nnunet_mamba.architectures` registry.

    Optimiser and schedule follow VM-UNet/DSVM-UNet: AdamW (lr 1e-3, weight decay 1e-2) with a
    cosine decay to 1e-5, expressed over nnU-Net's epochs (``num_epochs``) instead of the papers'
    epochs over a fixed dataset.
    """

    network_name: str = ""
    #: constructor arguments that replace the plan-derived ones (e.g. a narrower network)
    network_overrides: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.weight_decay = 1e-2
        self.min_lr = 1e-5
        self._compile_notice_logged = False

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        if not cls.network_name:
            raise TypeError(f"{cls.__name__} does not name a network (set the class attribute network_name)")
        return build_network(cls.network_name, configuration_manager, num_input_channels, num_output_channels,
                             enable_deep_supervision, **cls.network_overrides)

    @property
    def bare_network(self) -> torch.nn.Module:
        """The network without DDP or torch.compile wrappers."""
        network = self.network
        if isinstance(network, DistributedDataParallel):
            network = network.module
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        return network

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        if self.network is None:
            raise RuntimeError("deep supervision scales are taken from the network: call initialize() first")
        return self.bare_network.deep_supervision_scales()

    def _do_i_compile(self) -> bool:
        if not self._compile_notice_logged:
            self._compile_notice_logged = True
            self.print_to_log_file(COMPILE_DISABLED_REASON)
        return False

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      betas=(0.9, 0.999), eps=1e-8)
        scheduler = CosineAnnealingLRScheduler(optimizer, self.initial_lr, self.min_lr, self.num_epochs)
        return optimizer, scheduler
