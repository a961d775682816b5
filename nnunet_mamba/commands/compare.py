"""``nnunet-mamba compare -d ID -c CONFIG --trainers TRAINER[:PLANS] ... --folds F ...``: trainers side by side on
one dataset's cross-validation, ours and nnU-Net's, with paired statistics (docs/benchmarking.md)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _trainer_run(text: str):
    from nnunet_mamba.comparison.runs import ComparisonError, TrainerRun

    try:
        return TrainerRun.parse(text)
    except ComparisonError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _fold(text: str):
    if text == "all" or text.isdigit():
        return int(text) if text.isdigit() else text
    raise argparse.ArgumentTypeError(f"a fold is a number (0-4 for nnU-Net's five folds) or 'all', got {text!r}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="trainers side by side on one dataset's cross-validation: Dice with paired statistics, memory, time",
        description=(
            "Compare trainers (ours, their No-Mamba ablations, nnU-Net's own with any plans) on the same folds of "
            "one dataset and configuration, as nnU-Net Revisited did: refuses runs trained on other splits or "
            "other preprocessing, scores every fold's validation predictions, and reports per trainer the mean "
            "Dice per class, the paired difference to the first trainer with a 95%% bootstrap CI over cases and "
            "a Wilcoxon signed-rank p-value, parameters, FLOPs, peak training memory, s/iteration, GPU-hours and "
            "inference s/case. Writes compare.md, compare.csv, compare.json and compare.png. Protocol and how to "
            "read it: docs/benchmarking.md."),
        epilog="example: nnunet-mamba compare -d 990 -c 3d_fullres --trainers nnUNetTrainerVMUNet "
               "nnUNetTrainerVMUNetNoMamba nnUNetTrainer nnUNetTrainer:nnUNetResEncUNetMPlans --folds 0 1 2 3 4 "
               "--train --match-memory")
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or ID")
    parser.add_argument("-c", "--configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("--trainers", required=True, nargs="+", type=_trainer_run, metavar="TRAINER[:PLANS]",
                        help="trainers to compare, the first is the reference; plans default to nnUNetPlans")
    parser.add_argument("--folds", nargs="+", type=_fold, default=[0, 1, 2, 3, 4], metavar="F",
                        help="folds to compare (default: 0 1 2 3 4)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--train", action="store_true",
                      help="train every fold that is missing (resuming interrupted ones with --c; finished folds "
                           "are never trained again), then compare")
    what.add_argument("--emit-commands", action="store_true",
                      help="print the commands that train what is missing, and stop")
    what.add_argument("--emit-slurm", action="store_true",
                      help="print a SLURM job array that trains what is missing, and stop")
    parser.add_argument("--plan-missing", action="store_true",
                        help="make plans a baseline needs with nnU-Net's planners (e.g. nnUNetResEncUNetMPlans: "
                             "nnUNetPlannerResEncM)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device of the training runs and the profiles (default: cuda where torch sees a GPU, "
                             "else cpu)")
    parser.add_argument("--match-memory", action="store_true",
                        help="name, for each of our trainers, the nnU-Net baseline whose peak memory is closest")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the profile of each trainer (parameters, FLOPs, memory, s/iteration, inference)")
    parser.add_argument("--profile-iterations", type=_positive, default=3,
                        help="timed training iterations per profile (default: 3)")
    parser.add_argument("--resamples", type=_positive, default=10000, help="bootstrap resamples (default: 10000)")
    parser.add_argument("--output", type=Path, default=None,
                        help="report folder (default: nnUNet_results/DatasetXXX/nnunet_mamba_compare/CONFIG)")
    parser.add_argument("-np", "--num-processes", type=_positive, default=2,
                        help="cases scored in parallel (default: 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_mamba.comparison.compare import compare
    from nnunet_mamba.comparison.runs import ComparisonError, planning_commands, slurm_array, training_commands
    from nnunet_mamba.comparison.runs import missing_plans

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if args.emit_commands or args.emit_slurm:
            missing = missing_plans(args.dataset, args.trainers)
            if missing and not args.plan_missing:
                raise ComparisonError(f"plans {', '.join(missing)} do not exist yet: add --plan-missing to print "
                                      f"the commands that make them")
            planning = planning_commands(args.dataset, args.configuration, missing)
            if args.emit_slurm:
                shebang, rest = slurm_array(args.dataset, args.configuration, args.trainers, args.folds).split("\n", 1)
                first = "".join(f"# run first, once: {shlex.join(command)}\n" for command in planning)
                print(f"{shebang}\n{first}{rest}", end="")
            else:
                for command in planning + training_commands(args.dataset, args.configuration, args.trainers,
                                                            args.folds, args.device):
                    print(shlex.join(command))
            return 0
        result = compare(args.dataset, args.configuration, args.trainers, args.folds, output=args.output,
                         train=args.train, plan=args.plan_missing, device=args.device, profile=not args.no_profile,
                         profile_iterations=args.profile_iterations, match_memory=args.match_memory,
                         resamples=args.resamples, num_processes=args.num_processes)
    except ComparisonError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.files["md"].read_text(), end="")
    print("wrote " + ", ".join(str(path) for path in result.files.values()))
    return 0
