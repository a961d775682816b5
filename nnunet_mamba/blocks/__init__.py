"""Building blocks shared by every network: patch (un)embedding and the VSS block."""
from nnunet_mamba.blocks.patching import PatchEmbedding, PatchExpanding, PatchMerging
from nnunet_mamba.blocks.vss import CrossScanSSM, VSSBlock, VSSStage

__all__ = ["PatchEmbedding", "PatchExpanding", "PatchMerging", "CrossScanSSM", "VSSBlock", "VSSStage"]
