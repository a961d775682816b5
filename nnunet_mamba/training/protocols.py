"""The papers' and official codes' training protocols, one mixin each, placed before a trainer base in the bases.

* :class:`PaperProtocol` (``...Paper`` trainers): VM-UNet's code, also DSVM-UNet's (over :class:`PaperSchedule`);
* :class:`LightMUNetProtocol`: LightM-UNet's official trainer;
* :class:`SwinUMambaProtocol` and :class:`SwinUMambaFromScratch`: Swin-UMamba's official trainers;
* :class:`UltraLBMProtocol`: UltraLBM-UNet's official code (teacher and student; over :class:`PaperSchedule`).

Each changes the optimisation only; the networks are the trainers' ``network_name``. A protocol's departures
from nnU-Net's defaults are listed in its docstring.

VM-UNet / DSVM-UNet (:class:`PaperProtocol`), against our nnU-Net-style default:

* loss: VM-UNet's BceDice, 1 * BCE + 1 * (1 - soft Dice) with smooth 1 per sample, on nnU-Net's two-channel
  softmax head. For a binary task softmax over (background, foreground) is the sigmoid of their difference,
  so cross-entropy is the BCE and the foreground-only soft Dice is the paper's Dice: nnU-Net's
  ``DC_and_CE_loss`` with ``batch_dice=False, do_bg=False, smooth=1`` is BceDice minus the constant 1 (a test
  checks it against a direct BceDice). With more classes the same form (CE + mean foreground soft Dice) is
  used; region-based plans use BCE + Dice over the regions.
* no deep supervision (the papers' networks have one output), no gradient clipping;
* ``CosineAnnealingLR(T_max=50, eta_min=1e-5)`` stepped once per epoch (VM-UNet's ISIC config; 100 in its
  Synapse config), which is periodic: the lr climbs back to 1e-3 every 100 epochs; 300 epochs.
Unchanged: nnU-Net's data loading, augmentation and epochs of 250 iterations (the papers' epochs are one pass
over the training images). The papers start from VMamba-S ImageNet weights: set NNUNET_MAMBA_PRETRAINED.
"""
from __future__ import annotations

import os

import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import SoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_mamba.training.encoder_freeze import EncoderFreeze
from nnunet_mamba.training.lr_scheduler import CosineAnnealingLRScheduler
from nnunet_mamba.training.trainer_base import PRETRAINED_ENV_VAR

#: the official Swin-UMamba trainers keep checkpoint_{epoch}.pth every nnU-Net save_every (50) epochs
SWIN_UMAMBA_EPOCH_CHECKPOINT_EVERY = 50


def bce_dice_loss(label_manager, is_ddp: bool):
    """VM-UNet's BceDice (minus the constant 1) for nnU-Net's heads; see the module docstring."""
    dice = {"batch_dice": False, "smooth": 1.0, "ddp": is_ddp}
    if label_manager.has_regions:
        return DC_and_BCE_loss({}, {**dice, "do_bg": True}, weight_ce=1, weight_dice=1,
                               use_ignore_label=label_manager.ignore_label is not None, dice_class=SoftDiceLoss)
    return DC_and_CE_loss({**dice, "do_bg": False}, {}, weight_ce=1, weight_dice=1,
                          ignore_label=label_manager.ignore_label, dice_class=SoftDiceLoss)


class PaperSchedule:
    """Mixin placed before a :class:`~nnunet_mamba.training.MambaTrainerBase` trainer in the bases: the papers'
    optimisation (AdamW 1e-3 / 1e-2 from the base, periodic cosine to 1e-5, 300 epochs, no deep supervision, no
    gradient clipping), nnU-Net's loss."""

    gradient_clip_norm = None
    #: CosineAnnealingLR's T_max, in epochs; None: a sixth of the run, i.e. three full cycles whatever its length
    cosine_t_max_epochs: int | None = 50

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.num_epochs = 300

    @property
    def cosine_period_epochs(self) -> int:
        """T_max of the periodic cosine (half its period)."""
        return self.cosine_t_max_epochs or max(1, round(self.schedule_epochs / 6))

    def build_lr_scheduler(self, optimizer):
        return CosineAnnealingLRScheduler(optimizer, self.initial_lr, self.min_lr, self.cosine_period_epochs,
                                          periodic=True)


class PaperProtocol(PaperSchedule):
    """The VM-UNet / DSVM-UNet papers' schedule and BceDice loss (see the module docstring)."""

    def _build_loss(self):
        return bce_dice_loss(self.label_manager, self.is_ddp)

    def on_train_start(self):
        if not os.environ.get(PRETRAINED_ENV_VAR, "").strip():
            self.print_to_log_file(f"note: the papers start from VMamba-S ImageNet weights; set {PRETRAINED_ENV_VAR} "
                                   f"to a local vmamba_small_e238_ema.pth to do the same (2D only)")
        super().on_train_start()


class UltraLBMProtocol(PaperSchedule):
    """UltraLBM-UNet's optimisation (LinLinLin-X/UltraLBM-UNet, configs/config_setting.py): AdamW 1e-3 / 1e-2,
    CosineAnnealingLR to 1e-5 with T_max a sixth of the run (50 of its 300 epochs: three full cycles), no deep
    supervision, no gradient clipping, float32 (the official teacher and student train without autocast: so does
    a distilling student's teacher forward pass here); nnU-Net's loss, augmentation and epochs of 250 iterations.
    ``autocast_network = True`` (the ``...AMP`` trainers) trains under nnU-Net's mixed precision instead."""

    cosine_t_max_epochs = None
    autocast_network = False


class LightMUNetProtocol:
    """The official LightM-UNet protocol (MrBlankness/LightM-UNet, ``nnUNetTrainerLightMUNet``).

    Adam lr 1e-4, weight decay 1e-5 (plain L2 on every parameter, Mamba's A_log and D included), eps 1e-5;
    nnU-Net's poly schedule (exponent 0.9, stepped once per epoch); 100 epochs of nnU-Net's 250 iterations;
    nnU-Net's Dice + CE without deep supervision; gradient norm clipped at 12; float32 training (no autocast, no
    gradient scaler). The paper says SGD; the code that produced its results uses Adam, as here.
    """

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
        return PolyLRScheduler(optimizer, self.initial_lr, self.schedule_epochs, exponent=0.9)


class SwinUMambaProtocol(EncoderFreeze):
    """The official Swin-UMamba protocol (JiarunLiu/Swin-UMamba, ``nnUNetTrainerSwinUMamba``): AdamW lr 1e-4,
    weight decay 0.05, eps 1e-5; cosine to 1e-6 over nnU-Net's epochs (no warmup); nnU-Net's loss, deep
    supervision, augmentation, AMP (scan in float32) and clipping at 12; an ImageNet-initialised encoder frozen
    for the first 10 epochs (:class:`~nnunet_mamba.training.EncoderFreeze`).

    The official runs train a 1000-epoch cosine and the paper reports ``checkpoint_99`` (AbdomenMR),
    ``checkpoint_249`` (Endoscopy) and ``checkpoint_349`` (Microscopy) of it: ``evaluated_epochs`` stops the run
    there, on that epoch's learning rate of the full schedule.
    """

    adamw_eps = 1e-5
    #: train only the first this many epochs of the 1000-epoch schedule (where the paper evaluated); None: all
    evaluated_epochs: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-4
        self.weight_decay = 0.05
        self.min_lr = 1e-6
        if self.evaluated_epochs is not None:
            self.lr_schedule_epochs, self.num_epochs = self.num_epochs, self.evaluated_epochs


class SwinUMambaFromScratch:
    """The official dagger-from-scratch trainer (``nnUNetTrainerSwinUMambaDScratch``), placed before a Swin-UMamba
    trainer in the bases: no ImageNet initialisation (``NNUNET_MAMBA_PRETRAINED`` is ignored, and said), no deep
    supervision, ``checkpoint_{epoch}.pth`` every 50 epochs."""

    epoch_checkpoint_every = SWIN_UMAMBA_EPOCH_CHECKPOINT_EVERY

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    def maybe_initialise_from_pretrained(self):
        if os.environ.get(PRETRAINED_ENV_VAR, "").strip():
            self.print_to_log_file(f"{PRETRAINED_ENV_VAR} ignored: {type(self).__name__} trains from scratch, as the "
                                   f"official nnUNetTrainerSwinUMambaDScratch does")
        return None
