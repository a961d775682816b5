"""nnU-Net trainers of nnunet-mamba.

nnU-Net finds them through the ``nnUNet_extTrainer`` environment variable, which imports every
module of this folder as a top-level module: ``eval "$(nnunet-mamba env)"`` sets it.
"""
