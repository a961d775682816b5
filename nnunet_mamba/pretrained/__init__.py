"""Initialising networks from public pretrained checkpoints (local files only; nothing is downloaded).

Each network maps its own keys in its ``load_pretrained``; the reading of checkpoint formats is shared here.
"""
from nnunet_mamba.pretrained.checkpoint_io import read_checkpoint, unwrap_state_dict
from nnunet_mamba.pretrained.vmamba import (
    PretrainedReport,
    load_vmamba_v0,
    map_vmamba_v0_state_dict,
    vmamba_v0_block_key,
    vmamba_v0_encoder_counterpart,
)

__all__ = ["PretrainedReport", "load_vmamba_v0", "map_vmamba_v0_state_dict", "read_checkpoint",
           "unwrap_state_dict", "vmamba_v0_block_key", "vmamba_v0_encoder_counterpart"]
