"""``nnunet-mamba models``: every registered name (networks and their variants) and every trainer, with what they
are (timm's list_models)."""
from __future__ import annotations

import inspect


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the registered networks (dimensions, parameter counts) and the nnU-Net trainers",
        description="List every registered network and variant (every name `plan --network` and `benchmark flops` "
                    "take) with the dimensionalities it supports and its parameter count "
                    "(2D: 3 input channels, 1 class, 256 x 256 plan; 3D: 1 input channel, 1 class, 128^3 plan; "
                    "no deep supervision), then every trainer with its network and a one-line description.")
    parser.add_argument("--no-counts", action="store_true", help="skip building the networks to count parameters")
    parser.set_defaults(func=run)


#: what a trainer of nnU-Net's own networks (network_name None) shows in place of a registered name
PLANS_NETWORK = "(plans)"
#: the configurations parameter counts are given for: (input channels, patch size)
COUNTED = {2: (3, (256, 256)), 3: (1, (128, 128, 128))}


def parameter_count(name: str, dims: int) -> int:
    from nnunet_mamba.architectures import build_network, synthetic_configuration

    channels, patch = COUNTED[dims]
    network = build_network(name, synthetic_configuration(patch), channels, 1, deep_supervision=False)
    return sum(p.numel() for p in network.parameters())


def _network_of(entry, names: dict) -> str:
    """The network a registered name builds (a variant's variant_of, followed to the network)."""
    while entry.variant_of is not None:
        entry = names[entry.variant_of]
    return entry.name


def run(args) -> int:
    from nnunet_mamba import discovery
    from nnunet_mamba.architectures import registered_networks

    print("networks, each followed by its variants (registry name, dimensions, parameters, description):")
    names = registered_networks(variants=True)
    width = max(16, *map(len, names))
    for name, entry in sorted(names.items(), key=lambda item: list(names).index(_network_of(item[1], names))):
        counts = "" if args.no_counts else ", ".join(
            f"{d}D {parameter_count(name, d) / 1e6:.2f} M" for d in entry.dims)
        dims = "/".join(f"{d}D" for d in entry.dims)
        print(f"  {name:<{width}} {dims:<6} {counts:<28} {entry.description}")
    print("\ntrainers (nnUNetv2_train ... -tr NAME; network; description):")
    for name, trainer in discovery.our_trainers().items():
        summary = (inspect.getdoc(trainer) or "").split("\n")[0]
        print(f"  {name:<32} {trainer.network_name or PLANS_NETWORK:<10} {summary}")
    return 0
