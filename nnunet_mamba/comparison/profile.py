"""What one trainer costs: parameters, FLOPs, peak training memory, seconds per iteration and inference seconds per
case, measured on the trainer ``nnUNetv2_train`` builds, for any trainer (ours and nnU-Net's); and what a finished
fold of our trainers logged about its own run.

A profile builds the trainer with nnU-Net's ``get_trainer_from_args`` and runs its ``on_train_start`` (data
loaders, unpacking), then real training steps on batches of the preprocessed data. nnU-Net writes its log, plans
and debug files into the trainer's output folder from the constructor on, so ``nnUNet_results`` points at a
temporary folder while a profile runs, which is removed afterwards: a profile never looks like a started fold.

The figures:

* ``parameters``: the network's (``sum(p.numel())``).
* ``flops``: multiply-accumulates of one forward pass of batch 1 at the plan's patch, the network in training mode
  with deep supervision as trained, by :func:`nnunet_mamba.benchmarks.flops.count_flops` (selective scan included;
  the convention the papers print as "FLOPs (G)").
* ``peak_memory_mib``: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps (statistics reset after the
  warm-up): every tensor of the step, weights and optimiser state included. On CPU the process's resident memory
  at its peak during the warm-up and timed steps, less what it was just before the first (warm-up) step, once the
  memory the set-up freed is handed back to the system (glibc keeps it otherwise, see
  :mod:`nnunet_mamba.cpu_allocator`, and the steps would reuse it unseen): the memory training adds to the set-up
  trainer (activations, gradients, optimiser state, allocator caches). The peak is
  sampled every few milliseconds and, where ``getrusage``'s lifetime peak rose during the steps, taken from it
  exactly.
  Data-loader worker processes are not counted. The two are different quantities: compare CPU with CPU figures.
* ``seconds_per_iteration``: the median over the timed steps of ``train_step(next(dataloader_train))``, waiting for
  the batch included as in training (CUDA synchronised before and after).
* ``inference_seconds_per_case``: the mean wall time of nnU-Net's sliding-window prediction
  (``nnUNetPredictor.predict_sliding_window_return_logits``, with ``nnUNetv2_predict``'s defaults: step 0.5,
  Gaussian weighting, test-time mirroring along the trainer's axes) of preprocessed cases of the fold's validation
  set with the freshly built network; preprocessing and export are not included. None when ``predict_cases`` is 0.
"""
from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from nnunet_mamba import discovery
from nnunet_mamba.comparison.runs import PLANNER_OF_PLANS, ComparisonError
from nnunet_mamba.cpu_allocator import release_freed_memory
from nnunet_mamba.resident_memory import current_rss_bytes, lifetime_peak_rss_bytes
from nnunet_mamba.training.trainer_base import unwrap_network

#: how often the resident memory is sampled on CPU (seconds)
RSS_SAMPLE_INTERVAL = 0.002
DEVICES = ("cpu", "cuda")


class ProfileError(ComparisonError):
    """What the user has to fix before a trainer can be profiled; the message names it and the command."""


def profile_trainer(dataset: str | int, configuration: str, trainer: str, plans: str = "nnUNetPlans", fold: int = 0,
                    device: str = "cpu", iterations: int = 3, warmup: int = 1, predict_cases: int = 1, *,
                    verbose: bool = False) -> dict:
    """Profile ``trainer`` on ``dataset``'s ``configuration`` of ``plans`` as ``nnUNetv2_train`` builds it.

    Runs ``warmup`` untimed and ``iterations`` timed training steps on ``device``, counts the forward pass and
    predicts ``predict_cases`` cases (see the module docstring for what each figure is). Nothing is written under
    ``nnUNet_results``. On CUDA nnU-Net's own trainers compile their network in the first step (``nnUNet_compile``
    unset), so keep ``warmup`` at 1 or more there. ``verbose``: show nnU-Net's console output. Raises
    :class:`ProfileError`.
    """
    if iterations < 1 or warmup < 0 or predict_cases < 0:
        raise ProfileError(f"iterations ({iterations}) must be at least 1, warmup ({warmup}) and predict_cases "
                           f"({predict_cases}) at least 0")
    if device not in DEVICES:
        raise ProfileError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ProfileError("device 'cuda' was asked for, but torch sees no CUDA GPU: profile with device 'cpu' or "
                           "run on a GPU machine")
    dataset_name = _dataset_name(dataset)
    _checked_plans(dataset_name, plans, configuration)
    _checked_trainer(trainer)

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    temporary = Path(tempfile.mkdtemp(prefix="nnunet-mamba-profile-"))
    built = None
    try:
        with quiet, _profile_environment(temporary) as real_results, _cudnn_as_nnunet_train(device):
            built = _build_trainer(dataset_name, configuration, fold, trainer, plans, device, real_results)
            row = _measure(built, iterations, warmup, predict_cases)
    finally:
        if built is not None:
            _shut_down_dataloaders(built)
        shutil.rmtree(temporary, ignore_errors=True)
        built = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"trainer": trainer, "plans": plans, "configuration": configuration, "device": device, **row}


# --- checks that name what to fix ---------------------------------------------------------------------------------

def _dataset_name(dataset: str | int) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise ProfileError("nnUNet_preprocessed is not set: point it at nnU-Net's preprocessed folder (see nnU-Net's "
                           "documentation/setting_up_paths.md)")
    try:
        name = maybe_convert_to_dataset_name(dataset if isinstance(dataset, str) else int(dataset))
    except (RuntimeError, ValueError):
        raise ProfileError(f"dataset {dataset} is not found in nnUNet_raw, nnUNet_preprocessed or nnUNet_results: "
                           f"convert it into nnUNet_raw and run `nnUNetv2_plan_and_preprocess -d {dataset}`") from None
    if not (Path(nnUNet_preprocessed.get()) / name).is_dir():
        raise ProfileError(f"dataset {name} is not preprocessed (no {Path(nnUNet_preprocessed.get()) / name}): run "
                           f"`nnUNetv2_plan_and_preprocess -d {_dataset_id(name)}`")
    return name


def _dataset_id(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset"):len("Dataset") + 3])


def plan_command(dataset_name: str, plans: str) -> str:
    """The command that writes (and preprocesses) ``plans`` for the dataset, as far as it can be told by the name."""
    dataset_id = _dataset_id(dataset_name)
    if plans in PLANNER_OF_PLANS:
        return f"nnUNetv2_plan_and_preprocess -d {dataset_id} -pl {PLANNER_OF_PLANS[plans]}"
    ours = re.fullmatch(r"nnUNetMambaPlans_(.+)_([0-9.]+)G", plans)
    if ours:
        return f"nnunet-mamba plan -d {dataset_id} --network {ours[1]} --gpu-memory-gb {ours[2]}"
    return f"nnUNetv2_plan_and_preprocess -d {dataset_id} -pl <the planner that writes {plans}>"


def _checked_plans(dataset_name: str, plans: str, configuration: str) -> dict:
    """The plans, checked to hold ``configuration`` and to have it preprocessed."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(nnUNet_preprocessed.get()) / dataset_name
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        present = sorted(p.stem for p in folder.glob("*Plans*.json"))
        raise ProfileError(f"the plans {plans} of {dataset_name} do not exist (no {plans_file}; there are "
                           f"{', '.join(present) or 'none'}): run `{plan_command(dataset_name, plans)}`")
    plans_dict = load_json(str(plans_file))
    available = list(plans_dict.get("configurations", {}))
    if configuration not in available:
        raise ProfileError(f"configuration {configuration!r} is not in the plans {plans} of {dataset_name}, which "
                           f"have {', '.join(available) or 'none'}: choose one of those")
    data = folder / PlansManager(plans_dict).get_configuration(configuration).data_identifier
    if not data.is_dir() or not any(data.iterdir()):
        raise ProfileError(f"configuration {configuration} of the plans {plans} of {dataset_name} is planned but not "
                           f"preprocessed (no cases in {data}): run `nnUNetv2_preprocess -d {_dataset_id(dataset_name)}"
                           f" -plans_name {plans} -c {configuration}`")
    return plans_dict


def _checked_trainer(trainer: str) -> None:
    found, error = discovery.find_with_nnunet(trainer)
    if found is None:
        raise ProfileError(f"nnU-Net cannot find the trainer {trainer!r} ({error}): check its name; nnunet-mamba's "
                           f"trainers are found after `eval \"$(nnunet-mamba env)\"` (`nnunet-mamba doctor` checks)")


# --- building and measuring -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _profile_environment(results: Path):
    """nnU-Net's results folder at ``results``, and no Weights & Biases run, while the profile runs; yields the real
    results folder (None when unset)."""
    from nnunetv2.paths import nnUNet_results

    real_results = nnUNet_results.get()
    saved = {key: os.environ.get(key) for key in ("nnUNet_results", "nnUNet_wandb_enabled")}
    os.environ["nnUNet_results"] = str(results)
    os.environ["nnUNet_wandb_enabled"] = "0"
    try:
        yield real_results
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _cudnn_as_nnunet_train(device: str):
    """cuDNN's settings as ``nnUNetv2_train`` leaves them (autotuned, not deterministic), restored afterwards."""
    from torch.backends import cudnn

    saved = cudnn.deterministic, cudnn.benchmark
    if device == "cuda":
        cudnn.deterministic, cudnn.benchmark = False, True
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def _build_trainer(dataset_name: str, configuration: str, fold: int, trainer: str, plans: str, device: str,
                   real_results: str | None):
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_mamba.planning.record import PlanNetworkMismatch

    built = get_trainer_from_args(dataset_name, configuration, fold, trainer, plans, continue_training=False,
                                  device=torch.device(device))
    if built.is_cascaded:
        # the previous stage's predictions are read from the real results folder, as in training
        built.folder_with_segs_from_previous_stage = None if real_results is None else os.path.join(
            real_results, built.plans_manager.dataset_name,
            f"{type(built).__name__}__{plans}__{built.configuration_manager.previous_stage_name}",
            "predicted_next_stage", configuration)
    try:
        built.on_train_start()
    except BaseException as error:
        _shut_down_dataloaders(built)  # the loaders' workers may have started before the failure
        if isinstance(error, PlanNetworkMismatch):
            raise ProfileError(str(error)) from None
        raise
    return built


def _measure(trainer, iterations: int, warmup: int, predict_cases: int) -> dict:
    device = trainer.device
    trainer.on_train_epoch_start()  # training mode and the first epoch's learning rate, as the epoch loop sets them
    release_freed_memory()  # or the steps would reuse what the set-up freed, kept resident, unseen
    baseline_rss = current_rss_bytes()
    # on CPU the window opens before the warm-up, whose first step allocates the gradients and the optimiser state
    # (training memory too, which later steps reuse); on CUDA max_memory_allocated counts them after any reset
    on_cpu = device.type != "cuda"
    seconds = []
    with _PeakMemory(device, baseline_rss) if on_cpu else contextlib.nullcontext() as cpu_memory:
        for _ in range(warmup):
            trainer.train_step(next(trainer.dataloader_train))
        with contextlib.nullcontext() if on_cpu else _PeakMemory(device, baseline_rss) as cuda_memory:
            for _ in range(iterations):
                _synchronize(device)
                started = time.perf_counter()
                trainer.train_step(next(trainer.dataloader_train))
                _synchronize(device)
                seconds.append(time.perf_counter() - started)
    memory = cpu_memory if on_cpu else cuda_memory
    network = unwrap_network(trainer.network)
    return {
        "parameters": sum(p.numel() for p in network.parameters()),
        "flops": _forward_macs(trainer, network),
        "peak_memory_mib": memory.peak_mib,
        "seconds_per_iteration": statistics.median(seconds),
        "batch_size": int(trainer.batch_size),
        "patch_size": [int(s) for s in trainer.configuration_manager.patch_size],
        "inference_seconds_per_case": _inference_seconds_per_case(trainer, network, predict_cases),
    }


def _forward_macs(trainer, network: nn.Module) -> int:
    from nnunet_mamba.benchmarks.flops import count_flops

    channels = trainer.num_input_channels
    patch = [int(s) for s in trainer.configuration_manager.patch_size]
    network.train()  # as trained: deep supervision heads run, as set by on_train_start
    return count_flops(network, torch.zeros(1, channels, *patch, device=trainer.device)).total_macs


def _inference_seconds_per_case(trainer, network: nn.Module, cases: int) -> float | None:
    """nnU-Net's sliding window over preprocessed cases, as its final validation calls it (``nnUNetv2_predict``'s
    settings); the bare network, as ``nnUNetv2_predict`` builds it uncompiled."""
    if cases == 0:
        return None
    import numpy as np
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

    train_keys, validation_keys = trainer.do_split()
    keys = (list(validation_keys) + list(train_keys))[:cases]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=trainer.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    seconds = []
    for key in keys:
        data, _, previous_stage, _ = dataset.load_case(key)
        data = data[:]
        if trainer.is_cascaded:
            one_hot = convert_labelmap_to_one_hot(previous_stage[:], trainer.label_manager.foreground_labels,
                                                  output_dtype=data.dtype)
            data = np.vstack((data, one_hot))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a read-only array
            data = torch.from_numpy(data)
        _synchronize(trainer.device)
        started = time.perf_counter()
        predictor.predict_sliding_window_return_logits(data)
        _synchronize(trainer.device)
        seconds.append(time.perf_counter() - started)
    return sum(seconds) / len(seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shut_down_dataloaders(trainer) -> None:
    """Stop the augmentation workers, as nnU-Net's ``on_train_end`` does (its own console chatter hidden)."""
    with contextlib.redirect_stdout(io.StringIO()):
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            finish = getattr(loader, "_finish", None)
            if finish is not None:
                finish()
    trainer.dataloader_train = trainer.dataloader_val = None


# --- memory ---------------------------------------------------------------------------------------------------------

class _PeakMemory:
    """Peak memory of what runs inside ``with``, in MiB (see the module docstring); None where it cannot be read."""

    def __init__(self, device: torch.device, baseline_rss: int | None):
        self.device = device
        self.baseline_rss = baseline_rss
        self.peak_mib: float | None = None
        self._sampled_peak = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._lifetime_peak_before: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._lifetime_peak_before = lifetime_peak_rss_bytes()
        if self.baseline_rss is not None:
            self._sampled_peak = current_rss_bytes() or 0
            self._sampler = threading.Thread(target=self._sample, name="profile-rss-sampler", daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL):
            self._sampled_peak = max(self._sampled_peak, current_rss_bytes() or 0)

    def __exit__(self, *exc_info):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return False
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        if self.baseline_rss is None:
            return False
        peak = self._sampled_peak
        lifetime_after = lifetime_peak_rss_bytes()
        if lifetime_after is not None and self._lifetime_peak_before is not None \
                and lifetime_after > self._lifetime_peak_before:
            peak = max(peak, lifetime_after)  # a new lifetime peak was reached inside: that is the exact peak
        self.peak_mib = max(0, peak - self.baseline_rss) / 2**20
        return False


# --- what a finished fold logged ----------------------------------------------------------------------------------

def training_resources(fold_folder: Path) -> dict:
    """What a finished fold's ``checkpoint_final.pth`` logged about its run.

    ``gpu_hours``: the sum of the epochs' durations (nnU-Net's ``epoch_end_timestamps`` less
    ``epoch_start_timestamps``, which every nnU-Net trainer logs; breaks between resumed runs are not counted) in
    hours; device-hours when ``device`` is ``cpu``. ``peak_memory_mib``: the largest per-epoch peak our trainers log
    (None for nnU-Net's trainers, which do not). ``epochs``: the epochs timed. ``device``: what the run trained on.
    """
    from nnunet_mamba.pretrained.checkpoint_io import CheckpointReadError, load_training_checkpoint

    path = Path(fold_folder) / "checkpoint_final.pth"
    if not path.is_file():
        raise ProfileError(f"{Path(fold_folder)} has no checkpoint_final.pth: the fold has not finished training; "
                           f"finish it with nnUNetv2_train (--c continues it)")
    try:
        checkpoint = load_training_checkpoint(path)
    except CheckpointReadError as error:
        raise ProfileError(str(error)) from None
    logging = checkpoint.get("logging") or {}
    durations = [end - start for start, end in zip(logging.get("epoch_start_timestamps", []),
                                                    logging.get("epoch_end_timestamps", []))]
    peaks = [value for value in logging.get("peak_memory_mib", []) if value is not None]
    device = (checkpoint.get("init_args") or {}).get("device")
    return {"gpu_hours": sum(durations) / 3600, "peak_memory_mib": max(peaks) if peaks else None,
            "epochs": len(durations), "device": getattr(device, "type", None if device is None else str(device))}


# --- one profile in a process of its own ----------------------------------------------------------------------------

def profile_in_new_process(dataset: str | int, configuration: str, trainer: str, plans: str, fold: int, device: str,
                           iterations: int) -> dict:
    """:func:`profile_trainer` in a fresh Python process. Memory a process once held stays resident after it is
    freed, so on CPU a second profile in the same process would see no growth; a process of its own also starts
    from the same allocator, thread and cuDNN state as ``nnUNetv2_train``. On CPU every trainer's process, nnU-Net's
    included, keeps freed memory as ours do when they train (:mod:`nnunet_mamba.cpu_allocator`): the same allocator
    for all. Its inference time is measured under it too, as ``nnUNetv2_predict`` runs our trainers on a machine
    without a GPU (nnU-Net's own keeps glibc's defaults there, under which its 3D forward pass was 1.3 to 1.7 times
    slower: ``docs/benchmarks.md``, "CPU efficiency, sixth part")."""
    import json
    import subprocess

    from nnunet_mamba.cpu_allocator import subprocess_environment

    arguments = json.dumps([str(dataset), configuration, trainer, plans, fold, device, iterations])
    allocator = subprocess_environment() if torch.device(device).type == "cpu" else {}
    result = subprocess.run([sys.executable, "-m", "nnunet_mamba.comparison.profile", arguments],
                            capture_output=True, text=True, env={**os.environ, **allocator})
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    lines = result.stderr.strip().splitlines()
    message = lines[-1] if lines else f"exit code {result.returncode}"
    raise ProfileError(message.removeprefix("error: "))


def _main(arguments: str) -> int:
    import json

    dataset, configuration, trainer, plans, fold, device, iterations = json.loads(arguments)
    try:
        row = profile_trainer(dataset, configuration, trainer, plans, fold=fold, device=device, iterations=iterations)
    except ProfileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
