"""Networks and the registry that builds them from nnU-Net plans (see docs/adding-a-network.md)."""
from nnunet_mamba.architectures.base import LevelFeatureNetwork, PretrainedNotSupported, SegmentationNetwork
from nnunet_mamba.architectures.plans import PlanTopology, strides_from_plan, synthetic_configuration
from nnunet_mamba.architectures.registry import (
    build_network,
    get_network,
    register_network,
    register_variant,
    registered_networks,
)
from nnunet_mamba.architectures.vm_unet import VMUNet

__all__ = ["LevelFeatureNetwork", "PlanTopology", "PretrainedNotSupported", "SegmentationNetwork", "VMUNet",
           "build_network", "get_network", "register_network", "register_variant", "registered_networks",
           "strides_from_plan",
           "synthetic_configuration"]
