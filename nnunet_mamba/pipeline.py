"""Drive the stock nnU-Net command-line tools end to end (plan, train, predict, evaluate).

Shared by ``nnunet-mamba demo`` and the end-to-end tests, so both exercise exactly what a user types.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: keep nnU-Net from oversubscribing small CPU machines (augmentation workers, export pools)
CPU_FRIENDLY_ENV = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"}
#: the planner passes nnUNet_n_proc_DA to torch.set_num_threads, which rejects 0
PLANNER_ENV = {"nnUNet_n_proc_DA": "1"}


@dataclass
class NnUNetWorkspace:
    """The three nnU-Net folders under one root, and the environment that points nnU-Net at them."""

    root: Path
    extra_env: dict = field(default_factory=dict)
    log: object = None  # a file-like object the commands' output is copied to

    def __post_init__(self):
        self.root = Path(self.root)
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    def env(self, **overrides: str) -> dict:
        env = dict(os.environ)
        env.update(CPU_FRIENDLY_ENV)
        env.update({"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                    "nnUNet_results": str(self.results), "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def run(self, *command: str, timeout: float | None = None, env: dict | None = None) -> str:
        """Run one nnU-Net command; raise with the tail of its output if it fails."""
        executable = Path(sys.executable).with_name(command[0])
        argv = [str(executable) if executable.exists() else command[0], *command[1:]]
        started = time.time()
        if self.log is not None:
            print(f"\n$ {' '.join(command)}", file=self.log, flush=True)
        result = subprocess.run(argv, env=env or self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=timeout)
        if self.log is not None:
            print(result.stdout, file=self.log, flush=True)
            print(f"[{command[0]} finished in {time.time() - started:.0f} s, exit code {result.returncode}]",
                  file=self.log, flush=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-40:])
            raise RuntimeError(f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{tail}")
        return result.stdout

    def dataset_folder(self, dataset_id: int) -> Path:
        matches = sorted(self.raw.glob(f"Dataset{dataset_id:03d}_*"))
        if not matches:
            raise FileNotFoundError(f"no Dataset{dataset_id:03d}_* in {self.raw}")
        return matches[0]

    def plan_and_preprocess(self, dataset_id: int, configurations: list[str]) -> None:
        self.run("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations,
                 "-np", "1", "-npfp", "1", "--verify_dataset_integrity", env=self.env(**PLANNER_ENV))

    def train(self, dataset_id: int, configuration: str, fold: int, trainer: str, device: str = "cpu",
              resume: bool = False) -> str:
        command = ["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", trainer, "-device", device]
        return self.run(*command, *(["--c"] if resume else []))

    def predict(self, dataset_id: int, configuration: str, fold: int, trainer: str, input_folder: Path,
                output_folder: Path, device: str = "cpu") -> None:
        self.run("nnUNetv2_predict", "-i", str(input_folder), "-o", str(output_folder), "-d", str(dataset_id),
                 "-c", configuration, "-f", str(fold), "-tr", trainer, "-device", device, "--disable_tta",
                 "-npp", "1", "-nps", "1")

    def evaluate(self, reference_folder: Path, prediction_folder: Path, dataset_id: int) -> dict:
        """nnU-Net's own evaluation; returns its summary.json."""
        dataset = self.dataset_folder(dataset_id)
        summary = prediction_folder / "summary.json"
        self.run("nnUNetv2_evaluate_simple", str(reference_folder), str(prediction_folder),
                 "-l", *[str(v) for v in json.loads((dataset / "dataset.json").read_text())["labels"].values() if v],
                 "-o", str(summary), "-np", "1")
        return json.loads(summary.read_text())

    def trainer_output(self, dataset_id: int, configuration: str, fold: int, trainer: str,
                       plans: str = "nnUNetPlans") -> Path:
        dataset = self.dataset_folder(dataset_id).name
        return self.results / dataset / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def write_untrained_results_folder(trainer, results_dataset_folder: str | Path) -> Path:
    """An nnU-Net results folder ``<Trainer>__<plans>__<configuration>`` (plans.json, dataset.json,
    ``fold_N/checkpoint_final.pth``) holding the initialised ``trainer``'s network as built, untrained: what
    ``nnUNetv2_predict`` and a distillation teacher lookup read, at no training cost (benchmarks, tests).
    Returns the folder."""
    folder = Path(results_dataset_folder) / (f"{type(trainer).__name__}__{trainer.plans_manager.plans_name}__"
                                             f"{trainer.configuration_name}")
    (folder / f"fold_{trainer.fold}").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(trainer.plans_manager.plans))
    (folder / "dataset.json").write_text(json.dumps(trainer.dataset_json))
    trainer.save_checkpoint(str(folder / f"fold_{trainer.fold}" / "checkpoint_final.pth"))
    return folder
