"""Wall time of the stock ``nnUNetv2_predict`` on one case, per scan backend, next to nnU-Net's default UNet
(``nnUNetTrainer``) from the same plan (a benchmark, not a test).

One synthetic case of the given shape (with two more for the planner) is planned and preprocessed by the stock
commands. Every trainer's network is written untrained into a results folder (inference time does not depend on
the weights), and whole ``nnUNetv2_predict`` runs are timed: process start, preprocessing, the sliding window
(no test-time mirroring) and the export, as a user of a CPU-only machine experiences them. The runs take turns,
round after round, so that a shared machine slows all of them alike; the median over rounds is reported.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

NNUNET_TRAINER = "nnUNetTrainer"
BENCHMARK_DATASET_ID = 996


def write_untrained(trainer_name: str, configuration: str, dataset_id: int) -> None:
    """In a process whose nnU-Net paths point at the benchmark workspace: the trainer's untrained results folder."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_mamba.discovery import load_trainer
    from nnunet_mamba.pipeline import write_untrained_results_folder

    dataset = maybe_convert_to_dataset_name(dataset_id)
    preprocessed = Path(nnUNet_preprocessed) / dataset
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False  # nnUNetv2_train adds this before building a trainer
    trainer = load_trainer(trainer_name)(plans, configuration, 0, load_json(str(preprocessed / "dataset.json")),
                                         torch.device("cpu"))
    trainer.initialize()
    write_untrained_results_folder(trainer, Path(nnUNet_results) / dataset)


def run_predict_benchmark(trainer: str = "nnUNetTrainerVMUNet", case_shape: Sequence[int] = (64, 128, 128),
                          configuration: str = "3d_fullres", backends: Sequence[str] = ("torch", "numba"),
                          rounds: int = 2, workdir: Path | None = None, device: str = "cpu",
                          compare_nnunet: bool = True) -> List[Dict]:
    """Median seconds of ``nnUNetv2_predict`` of one case per (trainer, backend); ratios to nnU-Net's UNet."""
    from nnunet_mamba import discovery
    from nnunet_mamba.pipeline import NnUNetWorkspace
    from nnunet_mamba.synthetic import make_synthetic_dataset

    discovery.require_configured("nnunet-mamba benchmark predict")
    root = Path(workdir or tempfile.mkdtemp(prefix="nnunet-mamba-predict-benchmark-"))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "benchmark_log.txt", "a") as log:
        workspace = NnUNetWorkspace(root, log=log)
        if not list(workspace.raw.glob(f"Dataset{BENCHMARK_DATASET_ID}_*")):
            make_synthetic_dataset(workspace.raw, BENCHMARK_DATASET_ID, name="PredictBenchmark", num_training=2,
                                   num_test=1, shape=tuple(int(s) for s in case_shape), spacing=(1.0, 1.0, 1.0))
            workspace.plan_and_preprocess(BENCHMARK_DATASET_ID, [configuration])
        candidates = [(trainer, backend) for backend in backends]
        if compare_nnunet:
            candidates.insert(0, (NNUNET_TRAINER, "-"))
        for name in dict.fromkeys(name for name, _ in candidates):
            if not (workspace.results / workspace.dataset_folder(BENCHMARK_DATASET_ID).name /
                    f"{name}__nnUNetPlans__{configuration}" / "fold_0" / "checkpoint_final.pth").is_file():
                subprocess.run([sys.executable, "-c", f"from nnunet_mamba.benchmarks.predict import write_untrained; "
                                                      f"write_untrained({name!r}, {configuration!r}, "
                                                      f"{BENCHMARK_DATASET_ID})"],
                               env=workspace.env(), check=True, stdout=log, stderr=subprocess.STDOUT)
        images = workspace.dataset_folder(BENCHMARK_DATASET_ID) / "imagesTs"
        times: Dict[tuple, List[float]] = {candidate: [] for candidate in candidates}
        for round_index in range(rounds):
            for name, backend in candidates:
                output = root / f"predictions_{name}_{backend}_{round_index}"
                environment = workspace.env(**({"NNUNET_MAMBA_SCAN": backend} if backend != "-" else {}))
                started = time.perf_counter()
                workspace.run("nnUNetv2_predict", "-i", str(images), "-o", str(output), "-d",
                              str(BENCHMARK_DATASET_ID), "-c", configuration, "-f", "0", "-tr", name, "-device",
                              device, "--disable_tta", "-npp", "1", "-nps", "1", env=environment)
                times[(name, backend)].append(time.perf_counter() - started)
    rows = [{"trainer": name, "backend": backend, "seconds": statistics.median(values), "runs": len(values)}
            for (name, backend), values in times.items()]
    if compare_nnunet:
        reference = rows[0]["seconds"]
        for row in rows:
            row["ratio_to_nnunet"] = row["seconds"] / reference
    for row in rows:
        row["case_shape"] = list(case_shape)
        row["workdir"] = str(root)
    return rows


def format_predict_table(rows: List[Dict]) -> str:
    lines = [f"nnUNetv2_predict of one {'x'.join(str(s) for s in rows[0]['case_shape'])} case (no TTA), median of "
             f"{rows[0]['runs']} runs; workspace {rows[0]['workdir']}",
             f"{'trainer':<32} {'scan backend':<13} {'seconds':>9} {'x nnU-Net UNet':>15}"]
    for row in rows:
        ratio = f"{row['ratio_to_nnunet']:.2f}" if "ratio_to_nnunet" in row else "-"
        lines.append(f"{row['trainer']:<32} {row['backend']:<13} {row['seconds']:>9.1f} {ratio:>15}")
    return "\n".join(lines)

