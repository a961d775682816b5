"""One registry of networks (timm's pattern): ``@register_network`` on the class, ``build_network`` to build.

``build_network`` is the only way anything builds a network: trainers from their plan, benchmarks and the
FLOP command from :func:`synthetic_configuration`. A network module registers itself on import; the modules
are listed once, in :data:`NETWORK_MODULES`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Sequence

#: modules that define registered networks; importing one registers its networks
NETWORK_MODULES = ("nnunet_mamba.architectures.vm_unet", "nnunet_mamba.architectures.light_m_unet",
                   "nnunet_mamba.architectures.swin_umamba", "nnunet_mamba.architectures.ultralbm_unet")


@dataclass(frozen=True)
class RegisteredNetwork:
    name: str
    network_class: type
    dims: tuple[int, ...]
    description: str
    #: constructor arguments of a small instance: the minutes-long CPU runs (demo, tests) and smoke tests
    small_overrides: dict


_REGISTRY: dict[str, RegisteredNetwork] = {}


def register_network(name: str, dims: Sequence[int] = (2, 3), description: str = "",
                     small_overrides: dict | None = None):
    """Class decorator: make the network buildable by ``name`` for the given spatial dimensionalities.

    ``small_overrides``: constructor arguments for a small instance that still learns in a few hundred CPU
    iterations (used by the quick trainers and the contract tests).
    """
    def register(network_class: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].network_class is not network_class:
            raise ValueError(f"network name {name!r} is registered twice: {_REGISTRY[name].network_class.__name__} "
                             f"and {network_class.__name__}")
        if not hasattr(network_class, "from_plan"):
            raise TypeError(f"{network_class.__name__} has no from_plan classmethod: see docs/adding-a-network.md")
        network_class.network_name = name
        summary = description or (network_class.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = RegisteredNetwork(name, network_class, tuple(dims), summary, dict(small_overrides or {}))
        return network_class
    return register


def _import_network_modules() -> None:
    for module in NETWORK_MODULES:
        importlib.import_module(module)


def registered_networks() -> dict[str, RegisteredNetwork]:
    """Name -> registration of every network, in registration order."""
    _import_network_modules()
    return dict(_REGISTRY)


def get_network(name: str) -> RegisteredNetwork:
    networks = registered_networks()
    if name not in networks:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(sorted(networks))}")
    return networks[name]


def require_supported_dims(name: str, patch_size: Sequence[int],
                           configuration_name: str | None = None) -> RegisteredNetwork:
    """The registration of ``name``; a named error when it does not support the patch's dimensionality."""
    entry = get_network(name)
    spatial_dims = len(patch_size)
    if spatial_dims not in entry.dims:
        where = f"configuration {configuration_name!r}" if configuration_name else "this configuration"
        raise ValueError(
            f"{entry.network_class.__name__} ({name}) supports "
            f"{' and '.join(f'{d}D' for d in entry.dims)} inputs, but the plan's {where} is {spatial_dims}D "
            f"(patch size {list(patch_size)}). Train a configuration of the supported dimensionality "
            f"(e.g. 2d or 3d_fullres).")
    return entry


def build_network(name: str, configuration_manager, num_input_channels: int, num_output_channels: int,
                  deep_supervision: bool, configuration_name: str | None = None, **overrides):
    """Network ``name`` for one plan configuration; ``overrides`` replace constructor arguments.

    ``configuration_manager`` is nnU-Net's ``ConfigurationManager`` or anything with ``patch_size`` and
    ``pool_op_kernel_sizes`` (see :func:`synthetic_configuration`).
    """
    entry = require_supported_dims(name, configuration_manager.patch_size, configuration_name)
    for label, value in (("input channels", num_input_channels), ("output channels", num_output_channels)):
        if int(value) < 1:
            raise ValueError(f"{name}: the number of {label} must be >= 1, got {value}")
    return entry.network_class.from_plan(configuration_manager, int(num_input_channels), int(num_output_channels),
                                         bool(deep_supervision), **overrides)


@dataclass(frozen=True)
class SyntheticConfiguration:
    """The plan entries networks are built from, for building outside a planned dataset."""

    patch_size: tuple[int, ...]
    pool_op_kernel_sizes: tuple[tuple[int, ...], ...]
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    spacing: tuple[float, ...]


def synthetic_configuration(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> SyntheticConfiguration:
    """The poolings nnU-Net's default planner gives ``patch_size`` (isotropic spacing unless given).

    Uses the planner's own topology function, so a network built from it and nnU-Net's default UNet built from it
    share one plan (benchmarks compare them so). Like the planner, it may enlarge the patch to a multiple of the
    total pooling.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    patch = [int(p) for p in patch_size]
    if len(patch) not in (2, 3) or any(p < 1 for p in patch):
        raise ValueError(f"patch size must be 2 or 3 positive numbers, got {list(patch_size)}")
    spacing = [1.0] * len(patch) if spacing is None else [float(v) for v in spacing]
    _, pools, kernels, planned_patch, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    return SyntheticConfiguration(tuple(int(p) for p in planned_patch), tuple(tuple(int(v) for v in s) for s in pools),
                                  tuple(tuple(int(v) for v in k) for k in kernels), tuple(spacing))
