"""Mamba / visual-state-space segmentation networks for nnU-Net v2."""

__version__ = "0.1.0"
