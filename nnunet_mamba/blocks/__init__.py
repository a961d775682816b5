"""Building blocks shared by every network: patch (un)embedding and the VSS block (SS2D / SS3D)."""
from nnunet_mamba.blocks.patching import PatchEmbedding, PatchExpanding, PatchMerging
from nnunet_mamba.blocks.vss import SS2D, SS3D, CrossScanSSM, VSSBlock, VSSStage

__all__ = ["PatchEmbedding", "PatchExpanding", "PatchMerging", "CrossScanSSM", "SS2D", "SS3D", "VSSBlock", "VSSStage"]
