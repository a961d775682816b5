"""Initialising networks from public pretrained checkpoints (local files only; nothing is downloaded)."""
from nnunet_mamba.pretrained.vmamba import (
    PretrainedReport,
    load_vmamba_pretrained,
    vmamba_to_vm_unet_state_dict,
)

__all__ = ["PretrainedReport", "load_vmamba_pretrained", "vmamba_to_vm_unet_state_dict"]
