"""LightM-UNet trainers: one name for 2d and 3d_fullres, the plan decides.

The official protocol lives in nnunet_mamba.training.protocols."""
from nnunet_mamba.training import LightMUNetProtocol, MambaTrainerBase, QuickCPURun


class nnUNetTrainerLightMUNet(LightMUNetProtocol, MambaTrainerBase):
    """Official protocol: LightM-UNet (the code at HEAD), Adam 1e-4, poly, 100 epochs, clip 12, float32."""

    network_name = "light_m_unet"


class nnUNetTrainerLightMUNetAMP(nnUNetTrainerLightMUNet):
    """Ours: the official settings with nnU-Net's mixed precision (the selective scan still computes in float32)."""

    autocast_network = True


class nnUNetTrainerLightMUNetV0(nnUNetTrainerLightMUNet):
    """Official protocol: LightM-UNet's first upload (full-conv stem, ResBlock decoder, 1x1 head).

    The paper's complexity figures were counted on this network."""

    network_name = "light_m_unet_v0"


class nnUNetTrainerLightMUNetNoMamba(nnUNetTrainerLightMUNet):
    """Ours (ablation): LightM-UNet without its selective scan, all else equal; takes LightM-UNet's plans."""

    network_name = "light_m_unet_no_mamba"


class nnUNetTrainerLightMUNetQuick(QuickCPURun, nnUNetTrainerLightMUNet):
    """Ours: a minutes-long CPU run for tests (init_filters 16, one block per level; 6 x 25 iterations, lr 2e-3)."""


class nnUNetTrainerLightMUNetNoMambaQuick(QuickCPURun, nnUNetTrainerLightMUNetNoMamba):
    """Ours: the minutes-long CPU run of nnUNetTrainerLightMUNetQuick, without the selective scan."""
