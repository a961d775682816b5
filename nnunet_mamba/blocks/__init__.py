"""Building blocks shared by every network: patch (un)embedding and the VSS block (SS2D / SS3D),
with VMamba's drop-path schedule and weight initialisation."""
from nnunet_mamba.blocks.patching import PatchEmbedding, PatchExpanding, PatchMerging
from nnunet_mamba.blocks.vss import SS2D, SS3D, CrossScanSSM, VSSBlock, VSSStage, init_vmamba_weights, stage_drop_paths

__all__ = ["PatchEmbedding", "PatchExpanding", "PatchMerging", "CrossScanSSM", "SS2D", "SS3D", "VSSBlock", "VSSStage",
           "init_vmamba_weights", "stage_drop_paths"]
