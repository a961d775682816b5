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

    def score_test_set(self, dataset_id: int, configuration: str, trainer: str, predictions: Path, fold: int = 0,
                       device: str = "cpu") -> "HeldOutScore":
        """Predict the dataset's ``imagesTs`` with a trained fold, score them against ``labelsTs`` with nnU-Net's
        evaluation and draw the first test case (``<predictions>.png``)."""
        dataset = self.dataset_folder(dataset_id)
        predictions = Path(predictions)
        self.predict(dataset_id, configuration, fold, trainer, dataset / "imagesTs", predictions, device)
        summary = self.evaluate(dataset / "labelsTs", predictions, dataset_id)
        labels = json.loads((dataset / "dataset.json").read_text())["labels"]
        names = {str(value): name for name, value in labels.items()}
        reference = sorted((dataset / "labelsTs").glob("*.nii.gz"))[0]
        case = reference.name[:-len(".nii.gz")]
        figure = write_prediction_figure(dataset / "imagesTs" / f"{case}_0000.nii.gz", reference,
                                         predictions / reference.name, labels,
                                         predictions.with_name(f"{predictions.name}.png"),
                                         f"{trainer} {configuration}: test case {case}")
        return HeldOutScore(configuration, {value: values["Dice"] for value, values in summary["mean"].items()},
                            names, figure, self.trainer_output(dataset_id, configuration, fold, trainer) / "progress.png")

    def trainer_output(self, dataset_id: int, configuration: str, fold: int, trainer: str,
                       plans: str = "nnUNetPlans") -> Path:
        dataset = self.dataset_folder(dataset_id).name
        return self.results / dataset / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


@dataclass
class HeldOutScore:
    """What :meth:`NnUNetWorkspace.score_test_set` found: Dice per label and the pictures to look at."""

    configuration: str
    dice: dict  # label value (a string, as in nnU-Net's summary.json) -> mean Dice over the test cases
    label_names: dict  # label value (string) -> name in dataset.json
    figure: Path  # a test case's image, reference and prediction
    progress: Path  # nnU-Net's training curves

    def report(self) -> str:
        dice = ", ".join(f"{value} {self.label_names[value]} {dice:.3f}" for value, dice in self.dice.items())
        return (f"  {self.configuration}: test Dice per label: {dice}\n"
                f"  {self.configuration}: pictures: {self.figure} (test case), {self.progress} (training curves)")


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


#: label colours of the prediction figures (label 1, 2, ...; background stays unpainted)
LABEL_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def figure_slice(reference) -> int:
    """The slice (first axis) a figure of a 3D case shows: the middle one of those that show the most of the
    reference's labels, so that no label is left out of the picture when one slice can show them all."""
    import numpy as np

    present = [len(set(np.unique(s).tolist()) - {0}) for s in reference]
    best = [i for i, count in enumerate(present) if count == max(present)]
    return best[len(best) // 2]


def write_prediction_figure(image_file: Path, reference_file: Path, prediction_file: Path, labels: dict,
                            png_file: Path, title: str) -> Path:
    """One PNG: the case's image, its reference and the prediction side by side (a 3D case at
    :func:`figure_slice`), with a legend of the labels (``labels``: dataset.json's name -> value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    image, reference, prediction = (sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
                                    for f in (image_file, reference_file, prediction_file))
    if image.ndim == 3:
        index = figure_slice(reference)
        image, reference, prediction = image[index], reference[index], prediction[index]
        title = f"{title}, slice {index}"
    foreground = {name: int(value) for name, value in labels.items() if int(value) != 0}
    with plt.style.context("default"):  # nnU-Net's progress plot leaves seaborn's large fonts in the global style
        figure, axes = plt.subplots(1, 3, figsize=(8.4, 3.4))
        for axis, (panel, label_map) in zip(axes, [("image", None), ("reference", reference),
                                                   ("prediction", prediction)]):
            axis.imshow(image, cmap="gray", interpolation="nearest")
            if label_map is not None:
                overlay = np.zeros((*label_map.shape, 4))
                for value in foreground.values():
                    overlay[label_map == value] = to_rgba(LABEL_COLOURS[(value - 1) % len(LABEL_COLOURS)], alpha=0.65)
                axis.imshow(overlay, interpolation="nearest")
            axis.set_title(panel)
            axis.axis("off")
        figure.legend(handles=[Patch(color=LABEL_COLOURS[(value - 1) % len(LABEL_COLOURS)], label=f"{value} = {name}")
                               for name, value in foreground.items()], loc="lower center", ncol=len(foreground),
                      frameon=False)
        figure.suptitle(title)
        figure.tight_layout(rect=(0, 0.08, 1, 1))
        figure.savefig(png_file, dpi=80)
        plt.close(figure)
    return Path(png_file)
