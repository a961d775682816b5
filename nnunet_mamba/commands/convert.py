"""``nnunet-mamba convert <name> --src DIR --dataset-id N``: official download -> nnU-Net raw dataset."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    # The registry module is light (no SimpleITK/PIL at import), so the choices can be listed here.
    from nnunet_mamba.datasets.registry import CONVERTERS

    epilog = "converters:\n" + "\n".join(f"  {name:<10} {c.summary}" for name, c in CONVERTERS.items())
    parser = subparsers.add_parser(
        "convert",
        help="convert an official dataset download into an nnU-Net raw dataset",
        description=(
            "Write Dataset<N>_<Name> (imagesTr, labelsTr, imagesTs, dataset.json) under $nnUNet_raw, and the "
            "standard split as splits_final.json under $nnUNet_preprocessed/Dataset<N>_<Name>/ (a copy also "
            "stays in the raw dataset folder). The id must be unused in $nnUNet_raw, $nnUNet_preprocessed and "
            "$nnUNet_results. See docs/datasets.md."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=list(CONVERTERS), metavar="NAME", help="converter, see below")
    parser.add_argument("--src", required=True, type=Path, help="folder of the official download")
    parser.add_argument("-d", "--dataset-id", required=True, type=int, help="nnU-Net dataset id (1-999)")
    parser.add_argument("--out", type=Path, default=None, help="raw-data root to write to (default: $nnUNet_raw)")
    parser.add_argument(
        "--preprocessed",
        type=Path,
        default=None,
        help="where to place splits_final.json (default: $nnUNet_preprocessed; skipped if neither is set)",
    )
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="cases converted in parallel (default 2)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset folder and a different splits_final.json in $nnUNet_preprocessed",
    )
    parser.add_argument(
        "--no-test-images", action="store_true", help="leave out unlabelled official test images (imagesTs)"
    )
    parser.add_argument(
        "--resize",
        nargs=2,
        type=int,
        metavar=("HEIGHT", "WIDTH"),
        default=None,
        help="2D datasets only: resize images (bicubic) and masks (nearest), e.g. 256 256 as in VM-UNet",
    )
    parser.set_defaults(func=run)


def _root(option: Path | None, variable: str) -> Path | None:
    if option is not None:
        return option
    return Path(os.environ[variable]) if os.environ.get(variable) else None


def run(args: argparse.Namespace) -> int:
    from nnunet_mamba.datasets import ConversionError, SourceOptions, convert

    preprocessed = _root(args.preprocessed, "nnUNet_preprocessed")
    try:
        options = SourceOptions(
            include_unlabelled_test=not args.no_test_images,
            resize=tuple(args.resize) if args.resize else None,
        )
        folder = convert(
            args.name,
            args.src,
            args.dataset_id,
            out_root=args.out,
            num_processes=args.num_processes,
            overwrite=args.overwrite,
            preprocessed_root=preprocessed,
            options=options,
            results_root=_root(None, "nnUNet_results"),
        )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    print(f"wrote {folder}")
    splits = folder / "splits_final.json"
    if splits.is_file():
        if preprocessed is not None:
            print(f"placed {Path(preprocessed) / folder.name / 'splits_final.json'}")
        else:
            print(
                "nnUNet_preprocessed is not set, so the split was not placed; before training run:\n"
                f"  mkdir -p $nnUNet_preprocessed/{folder.name} && "
                f"cp {splits} $nnUNet_preprocessed/{folder.name}/"
            )
    return 0
