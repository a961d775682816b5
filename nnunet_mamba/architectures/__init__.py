"""One registry of networks, each built from an nnU-Net plan by a small function.

Trainers name a network; :func:`build_network` turns the plan's configuration into constructor
arguments. Networks themselves are plain modules that know nothing of nnU-Net's trainers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from nnunet_mamba.architectures.plans import strides_from_plan
from nnunet_mamba.architectures.vm_unet import VMUNet

CONV_OPS = {2: nn.Conv2d, 3: nn.Conv3d}


@dataclass(frozen=True)
class NetworkSpec:
    network_class: type[nn.Module]
    kwargs_from_plan: Callable[[object], dict]
    supported_dims: tuple[int, ...] = (2, 3)


def _vm_unet_kwargs(configuration_manager) -> dict:
    patch_size = list(configuration_manager.patch_size)
    return {
        "conv_op": CONV_OPS[len(patch_size)],
        "patch_size": patch_size,
        "strides": strides_from_plan(configuration_manager.pool_op_kernel_sizes, len(patch_size), (2, 1, 1, 1)),
    }


NETWORKS: dict[str, NetworkSpec] = {
    "vm_unet": NetworkSpec(VMUNet, _vm_unet_kwargs),
}


def build_network(
    name: str,
    configuration_manager,
    num_input_channels: int,
    num_output_channels: int,
    deep_supervision: bool,
    configuration_name: str | None = None,
    **overrides,
) -> nn.Module:
    """Build network ``name`` for one plan configuration; ``overrides`` replace constructor arguments."""
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    spec = NETWORKS[name]
    spatial_dims = len(configuration_manager.patch_size)
    if spatial_dims not in spec.supported_dims:
        where = f"configuration {configuration_name!r}" if configuration_name else "this configuration"
        raise ValueError(
            f"{spec.network_class.__name__} supports {' and '.join(f'{d}D' for d in spec.supported_dims)} inputs, "
            f"but the plan's {where} is {spatial_dims}D (patch size {list(configuration_manager.patch_size)}). "
            f"Train a configuration of the supported dimensionality (e.g. 2d or 3d_fullres).")
    kwargs = spec.kwargs_from_plan(configuration_manager) | overrides
    return spec.network_class(num_input_channels, num_output_channels, deep_supervision=deep_supervision, **kwargs)


__all__ = ["NETWORKS", "NetworkSpec", "VMUNet", "build_network", "strides_from_plan"]
