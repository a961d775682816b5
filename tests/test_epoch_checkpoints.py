"""Periodic ``checkpoint_{epoch}.pth`` and runs shorter than their learning-rate schedule (trainer base options), and
the Swin-UMamba trainers that use them to stop where the paper evaluated the official 1000-epoch runs."""
import math
import re
from pathlib import Path

import pytest
import torch

from nnunet_mamba.architectures import get_network
from nnunet_mamba.discovery import load_trainer, trainer_names
from nnunet_mamba.training import MambaTrainerBase, QuickCPURun
from nnunet_mamba.training import checkpoint as training_checkpoint
from nnunet_mamba.training import trainer_base


class _ShortRunOfALongerSchedule(QuickCPURun, MambaTrainerBase):
    """4 epochs of a 10-epoch cosine, checkpoint_{epoch} every 2 epochs; the smallest network, 2 iterations."""

    network_name = "ultralbm_unet_t"
    epoch_checkpoint_every = 2
    lr_schedule_epochs = 10

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 4
        self.enable_deep_supervision = False  # the network has a single output
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


def _cosine(initial, minimum, epoch, length):
    return minimum + 0.5 * (initial - minimum) * (1 + math.cos(math.pi * epoch / length))


def test_run_stops_at_num_epochs_on_the_longer_schedule_with_atomic_epoch_checkpoints(make_trainer, monkeypatch):
    written = []

    def recording_write(filename, write):
        written.append(Path(filename).name)
        return write_atomically(filename, write)

    write_atomically = training_checkpoint.write_atomically
    monkeypatch.setattr(training_checkpoint, "write_atomically", recording_write)
    trainer = make_trainer(_ShortRunOfALongerSchedule)
    trainer.run_training()

    folder = Path(trainer.output_folder)
    epoch_files = sorted(p.name for p in folder.glob("checkpoint_[0-9]*.pth"))
    assert epoch_files == ["checkpoint_1.pth", "checkpoint_3.pth"]
    assert {"checkpoint_1.pth", "checkpoint_3.pth", "checkpoint_final.pth"} <= set(written)  # all atomic
    assert not list(folder.glob(".checkpoint_*partial*"))
    log = sorted(folder.glob("training_log_*.txt"))[-1].read_text()
    assert [int(e) for e in re.findall(r": Epoch (\d+)\s*$", log, flags=re.M)] == [0, 1, 2, 3]

    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    last = torch.load(folder / "checkpoint_3.pth", map_location="cpu", weights_only=False)
    first = torch.load(folder / "checkpoint_1.pth", map_location="cpu", weights_only=False)
    assert (first["current_epoch"], last["current_epoch"], final["current_epoch"]) == (2, 4, 4)
    assert all(torch.equal(v, final["network_weights"][k]) for k, v in last["network_weights"].items())
    # epoch 3's learning rate of the 10-epoch cosine (2e-3 -> 1e-5), not the end of a 4-epoch one
    for checkpoint, epoch in ((first, 1), (last, 3)):
        lr = checkpoint["optimizer_state"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(_cosine(2e-3, 1e-5, epoch, 10)), epoch
    assert len(first["logging"]["epoch_end_timestamps"]) == 2  # saved after the epoch's bookkeeping

    # a periodic checkpoint is one --c continues from: the next epoch is 2
    resumed = make_trainer(_ShortRunOfALongerSchedule)
    resumed.load_checkpoint(str(folder / "checkpoint_1.pth"))
    assert resumed.current_epoch == 2


def test_a_schedule_shorter_than_the_run_is_refused(make_trainer):
    class TooShort(_ShortRunOfALongerSchedule):
        lr_schedule_epochs = 3

    with pytest.raises(ValueError,
                       match=r"TooShort: lr_schedule_epochs \(3\) is shorter than the run \(num_epochs 4\)"):
        make_trainer(TooShort).initialize()


PAPER_RUNS = {"_100of1000": 100, "_250of1000": 250, "_350of1000": 350, "": 1000}


@pytest.mark.parametrize("network", ["SwinUMamba", "SwinUMambaD"])
def test_swin_umamba_paper_runs_stop_where_the_paper_evaluated(network, make_trainer):
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    for suffix, epochs in PAPER_RUNS.items():
        name = f"nnUNetTrainer{network}{suffix}"
        assert name in trainer_names()
        trainer = make_trainer(name)  # not initialised: the network is not built
        scheduler = trainer.build_lr_scheduler(dummy)
        assert (trainer.num_epochs, scheduler.max_steps) == (epochs, 1000), name
        assert trainer.epoch_checkpoint_every == (50 if suffix else None), name
        # the last epoch trained runs on the official schedule's learning rate of that epoch
        assert scheduler.lr_at(epochs - 1) == pytest.approx(_cosine(1e-4, 1e-6, epochs - 1, 1000)), name


def test_dagger_scratch_and_embedding_trainers():
    scratch = load_trainer("nnUNetTrainerSwinUMambaDScratch")
    assert scratch.epoch_checkpoint_every == 50 and scratch.network_name == "swin_umamba_d"
    assert "adapt_rgb_embedding" not in get_network(load_trainer("nnUNetTrainerSwinUMambaD").network_name).default_args
    assert get_network(load_trainer("nnUNetTrainerSwinUMambaDAdaptedEmbedding").network_name).default_args == {
        "adapt_rgb_embedding": True}


def test_dagger_scratch_trains_without_deep_supervision_and_ignores_imagenet_weights(make_trainer, monkeypatch,
                                                                                     tmp_path):
    monkeypatch.setenv(trainer_base.PRETRAINED_ENV_VAR, str(tmp_path / "not_read.pth"))
    trainer = make_trainer("nnUNetTrainerSwinUMambaDScratch")
    assert not trainer.enable_deep_supervision
    messages = []
    monkeypatch.setattr(trainer, "print_to_log_file", lambda *args, **kwargs: messages.append(" ".join(args)))
    assert trainer.maybe_initialise_from_pretrained() is None
    assert messages == ["NNUNET_MAMBA_PRETRAINED ignored: nnUNetTrainerSwinUMambaDScratch trains from scratch, as "
                        "the official nnUNetTrainerSwinUMambaDScratch does"]
