"""``nnunet-mamba demo``: the whole nnU-Net pipeline with a VM-UNet trainer on a synthetic dataset, on CPU."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

DEMO_DATASET_ID = 990


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="plan, train, predict and evaluate a quick VM-UNet on a small synthetic dataset (CPU)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where nnUNet_raw/_preprocessed/_results are created (default: a new temporary folder)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"],
                        choices=["2d", "3d_fullres"], help="nnU-Net configurations to train (default: both)")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerVMUNetQuick",
                        help="trainer to run (default: the short nnUNetTrainerVMUNetQuick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mamba import discovery
    from nnunet_mamba.pipeline import NnUNetWorkspace
    from nnunet_mamba.synthetic import make_synthetic_dataset

    try:
        discovery.require_configured("nnunet-mamba demo")
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = args.workdir or Path(tempfile.mkdtemp(prefix="nnunet-mamba-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "demo_log.txt"
    print(f"nnunet-mamba demo in {root} (full command output: {log_path})")
    with open(log_path, "a") as log:
        workspace = NnUNetWorkspace(root, log=log)

        def step(title, action):
            started = time.time()
            print(f"- {title} ...", end=" ", flush=True)
            result = action()
            print(f"{time.time() - started:.0f} s", flush=True)
            return result

        try:
            step("synthetic dataset (bright sphere = 1, dark cube = 2)",
                 lambda: make_synthetic_dataset(workspace.raw, DEMO_DATASET_ID)
                 if not list(workspace.raw.glob(f"Dataset{DEMO_DATASET_ID}_*"))
                 else workspace.dataset_folder(DEMO_DATASET_ID))
            step("nnUNetv2_plan_and_preprocess",
                 lambda: workspace.plan_and_preprocess(DEMO_DATASET_ID, args.configurations))
            for configuration in args.configurations:
                step(f"nnUNetv2_train {DEMO_DATASET_ID} {configuration} 0 -tr {args.trainer}",
                     lambda: workspace.train(DEMO_DATASET_ID, configuration, 0, args.trainer, args.device))
                score = step(f"nnUNetv2_predict, nnUNetv2_evaluate_simple and a picture -c {configuration}",
                             lambda: workspace.score_test_set(DEMO_DATASET_ID, configuration, args.trainer,
                                                              root / f"predictions_{configuration}",
                                                              device=args.device))
                print(score.report(), flush=True)
        except RuntimeError as error:
            print(f"\nerror: {error}", file=sys.stderr)
            return 1
    return 0
