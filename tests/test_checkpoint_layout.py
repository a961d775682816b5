"""Checkpoints written by the trainers at 523f1ae keep loading: state-dict keys, ``init_args`` and extra state.

``tests/data/layout_523f1ae`` holds one small training checkpoint per network a trainer builds, written by that
commit's own trainers (``scripts/make_layout_checkpoints.py``; see the README there). Each is loaded the three ways
a user loads one: strictly into the network ``nnUNetv2_predict`` builds, by ``--c`` (the trainer's
``load_checkpoint``) and by ``-pretrained_weights`` (nnU-Net's ``load_pretrained_weights``). A change of keys,
of the checkpoint's entries or of how a trainer reads them fails here; a network whose keys must change adds
the old names to its ``legacy_key_prefixes``.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mamba.architectures import register_variant
from nnunet_mamba.discovery import load_trainer
from nnunet_mamba.training import checkpoint as training_checkpoint

LAYOUT = Path(__file__).resolve().parent / "data" / "layout_523f1ae"
MANIFEST = json.loads((LAYOUT / "manifest.json").read_text(encoding="utf-8"))
CHECKPOINTS = MANIFEST["checkpoints"]


def _read(stem: str) -> dict:
    return torch.load(LAYOUT / CHECKPOINTS[stem]["file"], map_location="cpu", weights_only=False)


def _narrowed_trainer(stem: str):
    """Today's trainer of the checkpoint (found by its recorded name, as nnU-Net finds it), narrowed as it was: it
    builds a variant of its network registered with the recorded constructor arguments (523f1ae's trainers took
    them as ``network_overrides``)."""
    entry = CHECKPOINTS[stem]
    trainer_class = load_trainer(entry["trainer"])
    overrides = {key: tuple(value) if isinstance(value, list) else value
                 for key, value in entry["network_overrides"].items()}
    narrowed = register_variant(f"{trainer_class.network_name}_layout_{stem}", of=trainer_class.network_name,
                                args=overrides, description=f"{trainer_class.network_name} as narrowed in {stem}.pth")
    return type(trainer_class.__name__, (trainer_class,), {"network_name": narrowed.name})


def _trainer_from_init_args(stem: str, checkpoint: dict, continue_training: bool):
    """The trainer rebuilt from the checkpoint's ``init_args`` (as nnU-Net rebuilds trainers), on CPU."""
    init = checkpoint["init_args"]
    plans = {**init["plans"], "continue_training": continue_training}
    return _narrowed_trainer(stem)(plans, init["configuration"], init["fold"], init["dataset_json"],
                                   torch.device("cpu"))


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """nnU-Net's folders for the checkpoints' dataset; the preprocessed folder holds one empty case file, from
    which nnU-Net's ``initialize`` infers the dataset format (nothing is read)."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    init = _read("vm_unet")["init_args"]
    data = (tmp_path / "nnUNet_preprocessed" / init["plans"]["dataset_name"] /
            init["plans"]["configurations"][init["configuration"]]["data_identifier"])
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()
    return tmp_path


def _assert_same_tensors(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_the_files_are_the_ones_recorded():
    assert len(MANIFEST["commit"]) == 40
    assert {entry["network"] for entry in CHECKPOINTS.values()} == {
        "vm_unet", "light_m_unet", "swin_umamba", "swin_umamba_d", "ultralbm_unet", "ultralbm_unet_t"}
    for stem, entry in CHECKPOINTS.items():
        assert hashlib.sha256((LAYOUT / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], stem


@pytest.mark.parametrize("stem", sorted(CHECKPOINTS))
def test_predict_builds_a_network_that_loads_the_weights_strictly(stem):
    # nnUNetv2_predict: the recorded trainer's build_network_architecture, without deep supervision, then
    # load_state_dict (strict) on the checkpoint's network_weights
    checkpoint = _read(stem)
    assert checkpoint["trainer_name"] == CHECKPOINTS[stem]["trainer"]
    init = checkpoint["init_args"]
    plans_manager = PlansManager(init["plans"])
    configuration_manager = plans_manager.get_configuration(init["configuration"])
    heads = plans_manager.get_label_manager(init["dataset_json"]).num_segmentation_heads
    network = _narrowed_trainer(stem).build_network_architecture(plans_manager, configuration_manager, 1, heads,
                                                                 enable_deep_supervision=False)
    assert network.network_name == CHECKPOINTS[stem]["network"]
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    _assert_same_tensors(network.state_dict(), checkpoint["network_weights"])


@pytest.mark.parametrize("stem", sorted(CHECKPOINTS))
def test_continue_and_pretrained_weights_load_the_checkpoint(stem, nnunet_folders, monkeypatch):
    path = str(LAYOUT / CHECKPOINTS[stem]["file"])
    checkpoint = _read(stem)

    resumed = _trainer_from_init_args(stem, checkpoint, continue_training=True)
    reads, read = [], training_checkpoint.load_training_checkpoint
    monkeypatch.setattr(training_checkpoint, "load_training_checkpoint",
                        lambda *args, **kwargs: reads.append(args[0]) or read(*args, **kwargs))
    resumed.load_checkpoint(path)  # --c
    assert reads == [path]  # read once, also by the trainers that adapt to an older layout (DSVM-UNet)
    _assert_same_tensors(resumed.bare_network.state_dict(), checkpoint["network_weights"])
    assert resumed.current_epoch == checkpoint["current_epoch"] == 1
    saved_modules = checkpoint["training_modules"]
    assert set(saved_modules) == set(resumed._saved_training_modules())
    for name, state in saved_modules.items():
        _assert_same_tensors(resumed.training_modules[name].state_dict(), state)
    assert resumed.loss_term_weights == checkpoint["loss_term_weights"]
    if stem == "dsvm_unet":  # 523f1ae's heads were the student-side ones: today's trainer continues with them
        assert resumed.encoder_progressive == "student_side"
    if "encoder_freeze" in checkpoint:
        assert resumed.encoder_pretrained is checkpoint["encoder_freeze"]["encoder_pretrained"]

    fresh = _trainer_from_init_args(stem, checkpoint, continue_training=False)
    fresh.initialize()
    load_pretrained_weights(fresh.network, path)  # -pretrained_weights: every key but the heads', same shapes
    transferred = {key: value for key, value in checkpoint["network_weights"].items() if ".seg_layers." not in key}
    own = fresh.bare_network.state_dict()
    _assert_same_tensors({key: own[key] for key in transferred}, transferred)
