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
    "nnunet_mamba.commands.doctor",
    "nnunet_mamba.commands.demo",
    "nnunet_mamba.commands.benchmark",
    "nnunet_mamba.commands.convert",
    "nnunet_mamba.commands.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-mamba",
        description="Mamba / visual-state-space networks for nnU-Net v2.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
