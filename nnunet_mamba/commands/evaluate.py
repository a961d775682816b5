"""``nnunet-mamba evaluate --pred DIR --ref DIR [--protocol ...]``: paper-protocol metrics."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTOCOL_CHOICES = ("nnunet", "synapse", "amos", "lits", "isic")  # kept here so --help needs no heavy import


def _tolerance(text: str) -> tuple[str, float]:
    name, separator, value = text.partition("=")
    try:
        if not separator:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=MM (or default=MM), got {text!r}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, HD95 and NSD of predictions against references, with the papers' summaries",
        description=(
            "Evaluate every prediction in --pred against the file of the same case in --ref. Writes "
            "metrics.json, metrics_per_case.csv and metrics.png to --out and prints a table. Metric "
            "definitions and empty-mask rules: docs/datasets.md."
        ),
    )
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted segmentations")
    parser.add_argument("--ref", required=True, type=Path, help="folder of reference segmentations (e.g. labelsTr)")
    parser.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="nnunet", help="default: nnunet")
    parser.add_argument(
        "--dataset-json",
        type=Path,
        default=None,
        help="dataset.json naming the labels (default: the one in --pred, else the one next to --ref)",
    )
    parser.add_argument(
        "--transunet-compat",
        action="store_true",
        help="reproduce the published Synapse convention: voxel units, pooled HD95, TransUNet empty-mask rules",
    )
    parser.add_argument(
        "--nsd-tolerance",
        type=_tolerance,
        action="append",
        default=[],
        metavar="NAME=MM",
        help="NSD tolerance for a class (repeatable); 'default=MM' sets it for classes without their own",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <pred>/evaluation_<protocol>)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="cases evaluated in parallel (default 2)")
    parser.add_argument("--no-plot", action="store_true", help="skip metrics.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_mamba.evaluation import EvaluationError, ProtocolError, evaluate_folders
    from nnunet_mamba.evaluation.report import format_table, write_outputs

    for folder in (args.pred, args.ref):
        if not folder.is_dir():
            print(f"error: missing folder: {folder}", file=sys.stderr)
            return 1
    suffix = "_transunet" if args.transunet_compat else ""
    out = args.out or args.pred / f"evaluation_{args.protocol}{suffix}"
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, not a folder; name a folder for the metrics files", file=sys.stderr)
        return 1
    try:
        result = evaluate_folders(
            args.pred,
            args.ref,
            protocol=args.protocol,
            dataset_json=args.dataset_json,
            transunet_compat=args.transunet_compat,
            nsd_tolerances=dict(args.nsd_tolerance),
            num_processes=args.num_processes,
        )
    except (EvaluationError, ProtocolError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        paths = write_outputs(result, out, make_plot=not args.no_plot)
    except OSError as error:
        print(f"error: cannot write the metrics files to --out {out}: {error}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(format_table(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
