"""The ``nnunet-mamba`` command: one entry point, one module per subcommand.

Each module in :mod:`nnunet_mamba.commands` exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (a callable taking the parsed namespace and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "nnunet_mamba.commands.env",
    "nnunet_mamba.commands.models",
    "nnunet_mamba.commands.doctor",
    "nnunet_mamba.commands.demo",
    "nnunet_mamba.commands.benchmark",
    "nnunet_mamba.commands.convert",
    "nnunet_mamba.commands.evaluate",
    "nnunet_mamba.commands.train",
    "nnunet_mamba.commands.plan",
    "nnunet_mamba.commands.compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-mamba",
        description="Mamba / visual-state-space networks for nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_versions()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from nnunet_mamba import __version__

    others = []
    for package in ("nnunetv2", "torch"):
        try:
            others.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            others.append(f"{package} not installed")
    return f"{__version__} ({', '.join(others)})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
