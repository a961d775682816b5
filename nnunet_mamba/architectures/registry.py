"""One registry of networks (timm's pattern): ``@register_network`` on the class, ``register_variant`` for a name
that builds it with other default arguments (timm's builder functions), ``build_network`` to build.

``build_network`` is the only way anything builds a network: trainers from their plan; the planner, benchmarks
and the FLOP command from a :class:`~nnunet_mamba.architectures.plans.PlanTopology`. A network module registers
itself on import; the modules are listed once, in :data:`NETWORK_MODULES`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Sequence

#: modules that define registered networks; importing one registers its networks
NETWORK_MODULES = ("nnunet_mamba.architectures.vm_unet", "nnunet_mamba.architectures.light_m_unet",
                   "nnunet_mamba.architectures.swin_umamba", "nnunet_mamba.architectures.ultralbm_unet")


@dataclass(frozen=True)
class RegisteredNetwork:
    """One name ``build_network`` takes: a network class and the constructor arguments that name stands for."""

    name: str
    network_class: type
    dims: tuple[int, ...]
    description: str
    #: constructor arguments the name builds with (in place of the class defaults; a caller's overrides and
    #: nothing else replace them); empty for a network's own name
    default_args: dict = field(default_factory=dict)
    #: the registered name this one is a variant of; None for a network's own name (its class's registration)
    variant_of: str | None = None
    #: the registered name of the small instance, for minutes-long CPU runs (quick trainers, demo, tests); the name
    #: itself where no smaller one is registered (a variant, or a network that is small already)
    small_instance: str = ""


_REGISTRY: dict[str, RegisteredNetwork] = {}
#: suffix of the small instance a network registers with ``register_network(..., small=...)``
SMALL_SUFFIX = "_small"
#: suffix of every network's No-Mamba ablation (its scan replaced by identity; see nnunet_mamba.blocks.token_mixer)
NO_MAMBA_SUFFIX = "_no_mamba"
NO_MAMBA_ARGS = {"token_mixer": "identity"}


def _add(entry: RegisteredNetwork) -> RegisteredNetwork:
    known = _REGISTRY.get(entry.name)
    if known is not None and known != entry:
        raise ValueError(f"network name {entry.name!r} is registered twice: {known.network_class.__name__} "
                         f"{known.default_args or ''} and {entry.network_class.__name__} {entry.default_args or ''}")
    _REGISTRY[entry.name] = entry
    return entry


def register_network(name: str, dims: Sequence[int] = (2, 3), description: str = "", small: dict | None = None):
    """Class decorator: make the network buildable by ``name`` for the given spatial dimensionalities.

    ``small``: constructor arguments of a small instance that still learns in a few hundred CPU iterations,
    registered as the variant ``<name>_small`` (what the quick trainers and the contract tests build). A network
    that is small already registers none.

    Every network also gets its No-Mamba ablation, ``<name>_no_mamba`` (with ``<name>_no_mamba_small`` where
    there is a small instance): the network constructed with ``token_mixer="identity"``, which needs a
    ``token_mixer`` constructor argument.
    """
    def register(network_class: type) -> type:
        if not hasattr(network_class, "from_plan"):
            raise TypeError(f"{network_class.__name__} has no from_plan classmethod: see docs/adding-a-network.md")
        summary = description or (network_class.__doc__ or "").strip().split("\n")[0]
        small_name = name + SMALL_SUFFIX if small else name
        _add(RegisteredNetwork(name, network_class, tuple(dims), summary, small_instance=small_name))
        network_class.network_name = name
        if small:
            arguments = ", ".join(f"{key}={value}" for key, value in small.items())
            register_variant(small_name, of=name, args=small,
                             description=f"{name}, small for minutes-long CPU runs and tests ({arguments})")
        ablation = f"{name}{NO_MAMBA_SUFFIX}"
        ablation_small = f"{ablation}{SMALL_SUFFIX}" if small else ablation
        register_variant(ablation, of=name, args=NO_MAMBA_ARGS, small_instance=ablation_small,
                         description=f"{name} without its selective scan (No-Mamba ablation, token_mixer='identity')")
        if small:
            register_variant(ablation_small, of=small_name, args=NO_MAMBA_ARGS,
                             description=f"{small_name} without its selective scan (No-Mamba ablation)")
        return network_class
    return register


def register_variant(name: str, of: str, args: dict, description: str,
                     small_instance: str | None = None) -> RegisteredNetwork:
    """Register ``name``: the registered network (or variant) ``of`` built with the constructor arguments ``args``
    (over those of ``of``), as timm registers a builder function with its default arguments. It can be planned for,
    trained (a trainer's ``network_name``), listed and counted like any network. ``small_instance``: the registered
    name quick runs build in its place (default: ``name`` itself)."""
    base = _REGISTRY.get(of)
    if base is None:
        raise KeyError(f"variant {name!r} of {of!r}: {of!r} is not registered (register the network first)")
    return _add(RegisteredNetwork(name, base.network_class, base.dims, description, {**base.default_args, **args},
                                  variant_of=of, small_instance=small_instance or name))


def _import_network_modules() -> None:
    for module in NETWORK_MODULES:
        importlib.import_module(module)


def registered_networks(variants: bool = False) -> dict[str, RegisteredNetwork]:
    """Name -> registration of every network (a class's own name), in registration order; with ``variants``
    every name ``build_network`` takes (the variants and small instances too)."""
    _import_network_modules()
    return {name: entry for name, entry in _REGISTRY.items() if variants or entry.variant_of is None}


def get_network(name: str) -> RegisteredNetwork:
    """The registration of ``name``, a network or a variant."""
    names = registered_networks(variants=True)
    if name not in names:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(sorted(names))}")
    return names[name]


def ablated_network(name: str) -> str | None:
    """The network whose No-Mamba ablation ``name`` is (``vm_unet`` for ``vm_unet_no_mamba``); None otherwise."""
    entry = get_network(name)
    return entry.variant_of if name.endswith(NO_MAMBA_SUFFIX) else None


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
    """Network ``name`` (a network or a variant) for one plan configuration; ``overrides`` replace constructor
    arguments, the variant's included.

    ``configuration_manager`` is nnU-Net's ``ConfigurationManager`` or anything with ``patch_size`` and
    ``pool_op_kernel_sizes`` (see :class:`~nnunet_mamba.architectures.plans.PlanTopology`).
    """
    entry = require_supported_dims(name, configuration_manager.patch_size, configuration_name)
    for label, value in (("input channels", num_input_channels), ("output channels", num_output_channels)):
        if int(value) < 1:
            raise ValueError(f"{name}: the number of {label} must be >= 1, got {value}")
    return entry.network_class.from_plan(configuration_manager, int(num_input_channels), int(num_output_channels),
                                         bool(deep_supervision), **{**entry.default_args, **overrides})
