"""Write one small nnU-Net training checkpoint per network that a trainer builds, from a given source tree.

    python scripts/make_layout_checkpoints.py SOURCE_TREE OUT_DIR

``SOURCE_TREE`` is a checkout of nnunet-mamba (e.g. ``git worktree add /tmp/head_tree COMMIT``); its package and
its ``trainers/`` folder are imported, not the installed ones. Each checkpoint is written by that tree's own
trainer (``save_checkpoint``, with its extra state and training-only modules), after ``initialize`` on a small
hand-written 2d plan, so it has exactly the layout that tree's trainings write: ``network_weights``,
``init_args``, ``trainer_name``, an optimiser state without steps, and the trainer's extra keys. The networks
are narrowed to keep each file small (a tree whose trainers build registered variants gets a variant registered
with the narrowing arguments; an older tree, as 523f1ae, takes them as the trainer's ``network_overrides``);
``manifest.json`` records, per file, the trainer and, under ``network_overrides``, the constructor arguments a
reader needs to build the same network again (tests/test_checkpoint_layout.py).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DATASET_NAME = "Dataset999_CheckpointLayout"
PATCH_SIZE = (64, 64)
SEED = 0

#: file stem -> (trainer module in trainers/, trainer class, network, narrowing overrides): every network and
#: variant a trainer builds, as narrow as its constructor allows (LightM-UNet's GroupNorm needs 8 filters); the
#: width and d_state change tensor shapes only, never the keys
_VM_UNET = {"embed_dim": 4, "encoder_depths": (1, 1, 1, 1), "decoder_depths": (1, 1, 1, 1), "d_state": 2,
            "drop_path_rate": 0.0}
_LIGHT_M_UNET = {"init_filters": 8, "blocks_down": (1, 1, 1, 1), "d_state": 2}
LAYOUTS = {
    "vm_unet": ("nnUNetTrainerVMUNet", "nnUNetTrainerVMUNet", "vm_unet", _VM_UNET),
    "dsvm_unet": ("nnUNetTrainerDSVMUNet", "nnUNetTrainerDSVMUNet", "vm_unet", _VM_UNET),
    "light_m_unet": ("nnUNetTrainerLightMUNet", "nnUNetTrainerLightMUNet", "light_m_unet", _LIGHT_M_UNET),
    "light_m_unet_v0": ("nnUNetTrainerLightMUNet", "nnUNetTrainerLightMUNetV0", "light_m_unet", _LIGHT_M_UNET),
    "swin_umamba": ("nnUNetTrainerSwinUMamba", "nnUNetTrainerSwinUMamba", "swin_umamba",
                    {"embed_dim": 4, "encoder_depths": (1, 1, 1, 1), "d_state": 2, "drop_path_rate": 0.0}),
    "swin_umamba_d": ("nnUNetTrainerSwinUMamba", "nnUNetTrainerSwinUMambaD", "swin_umamba_d",
                      {"embed_dim": 4, "encoder_depths": (1, 1, 1, 1), "decoder_depth": 1, "d_state": 2,
                       "drop_path_rate": 0.0}),
    "ultralbm_unet": ("nnUNetTrainerUltraLBMUNet", "nnUNetTrainerUltraLBMUNet", "ultralbm_unet",
                      {"channel_multiplier": 0.5, "d_state": 2}),
    "ultralbm_unet_t": ("nnUNetTrainerUltraLBMUNet", "nnUNetTrainerUltraLBMUNetTNoKD", "ultralbm_unet_t",
                        {"channel_multiplier": 0.25, "d_state": 2}),
}


def layout_plans(synthetic_configuration) -> tuple[dict, dict]:
    """A 2d nnU-Net plan (one channel, two labels) and its dataset.json; poolings from nnU-Net's own topology."""
    configuration = synthetic_configuration(PATCH_SIZE)
    stages = len(configuration.pool_op_kernel_sizes)
    arch_kwargs = {
        "n_stages": stages,
        "features_per_stage": [min(32 * 2 ** i, 512) for i in range(stages)],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [list(k) for k in configuration.conv_kernel_sizes],
        "strides": [list(s) for s in configuration.pool_op_kernel_sizes],
        "n_conv_per_stage": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    plans = {
        "dataset_name": DATASET_NAME,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, *PATCH_SIZE],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"2d": {
            "data_identifier": "nnUNetPlans_2d",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": list(configuration.patch_size),
            "median_image_size_in_voxels": list(PATCH_SIZE),
            "spacing": [1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch_kwargs,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": True,
        }},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0, "percentile_00_5": -2.5, "percentile_99_5": 2.5,
            "std": 1.0}},
    }
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "foreground": 1},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset_json


def prepare_nnunet_folders(root: Path) -> None:
    """nnU-Net's folders in ``root``; the preprocessed folder holds one empty case file, from which nnU-Net's
    ``initialize`` infers the dataset format (nothing is read from it)."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = str(root / variable)
        (root / variable).mkdir(parents=True, exist_ok=True)
    data = root / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans_2d"
    data.mkdir(parents=True, exist_ok=True)
    (data / "case.b2nd").touch()


def load_trainer_class(source_tree: Path, module_name: str, class_name: str):
    """A trainer class from ``source_tree/trainers``, imported under its bare module name as nnU-Net does."""
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, source_tree / "trainers" / f"{module_name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[module_name], class_name)


def narrowed(trainer_class, stem: str, overrides: dict):
    """The real trainer, narrowed by ``overrides``; named as it, so the checkpoint's trainer_name is the real one."""
    if hasattr(trainer_class, "network_overrides"):  # trees before network variants were registry entries
        return type(trainer_class.__name__, (trainer_class,),
                    {"network_overrides": {**trainer_class.network_overrides, **overrides}})
    from nnunet_mamba.architectures import register_variant

    variant = register_variant(f"{trainer_class.network_name}_layout_{stem}", of=trainer_class.network_name,
                               args=overrides, description=f"{trainer_class.network_name} as narrowed in {stem}.pth")
    return type(trainer_class.__name__, (trainer_class,), {"network_name": variant.name})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source_tree", type=Path, help="checkout of nnunet-mamba whose layout is written")
    parser.add_argument("out_dir", type=Path, help="folder for the checkpoints and manifest.json")
    args = parser.parse_args(argv)
    source_tree = args.source_tree.resolve()
    if not (source_tree / "nnunet_mamba" / "__init__.py").is_file():
        parser.error(f"SOURCE_TREE {source_tree} holds no nnunet_mamba package")
    sys.path.insert(0, str(source_tree))
    work = Path(tempfile.mkdtemp(prefix="layout_checkpoints_"))
    prepare_nnunet_folders(work)

    import torch

    import nnunet_mamba
    from nnunet_mamba.architectures import synthetic_configuration

    if Path(nnunet_mamba.__file__).resolve().parent != source_tree / "nnunet_mamba":
        raise SystemExit(f"imported nnunet_mamba from {nnunet_mamba.__file__}, not from {source_tree}")
    commit = subprocess.run(["git", "-C", str(source_tree), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    plans, dataset_json = layout_plans(synthetic_configuration)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"commit": commit, "configuration": "2d", "seed": SEED, "checkpoints": {}}
    for stem, (module_name, class_name, network, overrides) in LAYOUTS.items():
        trainer_class = narrowed(load_trainer_class(source_tree, module_name, class_name), stem, overrides)
        torch.manual_seed(SEED)
        # nnUNetv2_train adds continue_training to the plans, and nnU-Net's trainer pops it
        trainer = trainer_class({**copy.deepcopy(plans), "continue_training": False}, "2d", 0,
                                copy.deepcopy(dataset_json), torch.device("cpu"))
        trainer.initialize()
        path = args.out_dir / f"{stem}.pth"
        trainer.save_checkpoint(str(path))
        manifest["checkpoints"][stem] = {
            "file": path.name,
            "trainer": class_name,
            "network": network,
            "network_overrides": {key: list(v) if isinstance(v, tuple) else v for key, v in overrides.items()},
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
        }
        print(f"{path}: {class_name} ({network}), {path.stat().st_size / 1024:.0f} KiB")
    (args.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
