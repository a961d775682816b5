"""What ``nnunet-mamba plan`` picks for a typical CT fingerprint, next to nnU-Net's default plans (README table),
and how every network's memory model compares with a real forward pass (docs/benchmarks.md).

    nnunet-mamba benchmark planner [--budgets 8 24 80] [--networks vm_unet ...]
    nnunet-mamba benchmark memory-model [--networks vm_unet ...]

Plans a fingerprint-only dataset (no images are read; nnU-Net's planners need only the fingerprint and the file
names) in a temporary folder with nnU-Net's default planner and with ours for every registered network and
budget, and prints a markdown table. The fingerprint: 50 abdominal CT scans of 400 x 400 x ~400 mm, 512 x 512 in
plane at 0.7-0.9 mm, slices of 1.5-5 mm (median spacing 2.5 x 0.8 x 0.8 mm).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

DATASET_ID = 990
DATASET_NAME = "Dataset990_TypicalCT"
CASES = 50
SLICE_SPACINGS = (1.5, 2.0, 2.5, 3.0, 5.0)
IN_PLANE_SPACINGS = (0.7, 0.75, 0.8, 0.85, 0.9)
BODY_LENGTH_MM = 400.0
#: patch sizes the memory models are checked at (tests/test_memory_model.py): small, non-square, anisotropic
MEMORY_MODEL_PATCHES = {2: [(64, 64), (48, 96)], 3: [(32, 32, 32), (16, 32, 48)]}
MEMORY_MODEL_INPUT_CHANNELS = 2
MEMORY_MODEL_CLASSES = 3


def typical_ct_fingerprint() -> dict:
    """nnU-Net's dataset_fingerprint.json for the scans described in the module docstring."""
    spacings, shapes = [], []
    for case in range(CASES):
        slice_spacing = SLICE_SPACINGS[case % len(SLICE_SPACINGS)]
        in_plane = IN_PLANE_SPACINGS[(case // len(SLICE_SPACINGS)) % len(IN_PLANE_SPACINGS)]
        spacings.append([slice_spacing, in_plane, in_plane])
        shapes.append([round(BODY_LENGTH_MM / slice_spacing), 512, 512])
    intensities = {"mean": 99.5, "median": 101.0, "std": 75.0, "min": -1024.0, "max": 3071.0,
                   "percentile_99_5": 300.0, "percentile_00_5": -150.0}
    return {"spacings": spacings, "shapes_after_crop": shapes,
            "foreground_intensity_properties_per_channel": {"0": intensities},
            "median_relative_size_after_cropping": 1.0}


def write_fingerprinted_dataset(raw: Path, preprocessed: Path, fingerprint: dict) -> None:
    """dataset.json, empty image and label files (only their names are read) and the fingerprint."""
    folder = raw / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in range(len(fingerprint["spacings"])):
        (folder / "imagesTr" / f"ct_{case:03d}_0000.nii.gz").touch()
        (folder / "labelsTr" / f"ct_{case:03d}.nii.gz").touch()
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
        "numTraining": len(fingerprint["spacings"]), "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO"}))
    (preprocessed / DATASET_NAME).mkdir(parents=True, exist_ok=True)
    (preprocessed / DATASET_NAME / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))


def _cells(plans: dict) -> dict[str, str]:
    cells = {}
    for configuration in ("2d", "3d_fullres", "3d_lowres"):
        plan = plans["configurations"].get(configuration)
        if plan is None:
            cells[configuration] = "-"
            continue
        cells[configuration] = f"{' x '.join(str(p) for p in plan['patch_size'])}, b {plan['batch_size']}"
        if "nnunet_mamba" in plan:
            cells[configuration] += f" ({plan['nnunet_mamba']['estimated_training_step_gib']:.1f} GiB)"
    return cells


def quietly(planner) -> dict:
    """The planner's plans, without what nnU-Net prints while planning."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return planner.plan_experiment()


def compare(networks, budgets) -> str:
    """The markdown table (run inside :func:`typical_ct_workspace`)."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunet_mamba.planning.api import planners_package

    planner_class = planners_package().MambaExperimentPlanner
    rows = ["| planner | budget | 2d patch, batch | 3d_fullres patch, batch | 3d_lowres patch, batch |",
            "|---|---|---|---|---|"]
    default = _cells(quietly(ExperimentPlanner(DATASET_ID)))
    rows.append(f"| nnU-Net default (its UNet) | 8 GB | {default['2d']} | {default['3d_fullres']} | "
                f"{default['3d_lowres']} |")
    for network in networks:
        for budget in budgets:
            cells = _cells(quietly(planner_class(DATASET_ID, budget, network_name=network)))
            rows.append(f"| {network} | {budget:g} GB | {cells['2d']} | {cells['3d_fullres']} | {cells['3d_lowres']} |")
    return "\n".join(rows)


def build_for_memory_check(name: str, patch, small: bool):
    """Network ``name`` as the memory-model check builds it: deep supervision where it has it, the registry's
    small instance or the published widths."""
    from nnunet_mamba.architectures import build_network, get_network, synthetic_configuration

    entry = get_network(name)
    return build_network(entry.small_instance if small else name, synthetic_configuration(patch),
                         MEMORY_MODEL_INPUT_CHANNELS, MEMORY_MODEL_CLASSES,
                         entry.network_class.supports_deep_supervision)


def memory_model_table(networks) -> str:
    """Estimate against the measured saved activations, per network, width, and patch (markdown)."""
    from nnunet_mamba.architectures import get_network
    from nnunet_mamba.benchmarks.memory import saved_activation_elements

    rows = ["| network | widths | patch | measured (M elements) | estimate (M) | estimate / measured |",
            "|---|---|---|---|---|---|"]
    for name in networks:
        cases = [(patch, True) for dims in get_network(name).dims for patch in MEMORY_MODEL_PATCHES[dims]]
        for patch, small in cases + [(MEMORY_MODEL_PATCHES[2][0], False)]:
            network = build_for_memory_check(name, patch, small)
            measured = saved_activation_elements(network, patch, MEMORY_MODEL_INPUT_CHANNELS)
            estimated = network.compute_conv_feature_map_size(list(patch))
            rows.append(f"| {name} | {'small' if small else 'published'} | {' x '.join(map(str, patch))} | "
                        f"{measured / 1e6:.2f} | {estimated / 1e6:.2f} | {estimated / measured:.3f} |")
    return "\n".join(rows)


@contextlib.contextmanager
def typical_ct_workspace():
    """nnU-Net's folders in a scratch directory holding the typical CT dataset, for this process.

    nnU-Net reads its folders once, when ``nnunetv2.paths`` is first imported: enter this before any import of it.
    """
    if "nnunetv2.paths" in sys.modules:
        raise RuntimeError("typical_ct_workspace must be entered before nnunetv2.paths is imported: nnU-Net would "
                           "keep the folders it read then")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (root / name).mkdir()
            os.environ[name] = str(root / name)
        write_fingerprinted_dataset(root / "nnUNet_raw", root / "nnUNet_preprocessed", typical_ct_fingerprint())
        yield root
