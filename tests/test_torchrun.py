"""``nnunet-mamba train`` started by torchrun: DDP across (simulated) nodes on CPU, with gloo.

Two torchrun invocations with ``--nnodes 2 --nproc-per-node 1 --node-rank 0|1`` rendezvous on 127.0.0.1 and train
one short epoch of a DSVM-UNet trainer (network and distillation heads, each in its DDP wrapper) on the session's
synthetic dataset; the run is then continued with ``--c`` in one process, without torchrun (world size 1). A plan
whose batch size is smaller than the world stops every rank with the named error. The fast tests at the end check
the launch logic's messages without starting processes.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2e_support import DATASET_ID
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunet_mamba.distributed import (
    BatchSizeSplitError,
    DistributedTrainingError,
    ModuleDeviceDDP,
    SharedDataError,
    TorchrunWorld,
    check_batch_size_splits,
    ddp_follows_module_device,
    preprocessed_data_problem,
)
from nnunet_mamba.training.training_modules import TRAINING_MODULES_KEY

TRAINER = "nnUNetTrainerDSVMUNetTorchrunTest"  # tests/ext_trainers/nnUNetTrainerTorchrunTest.py
REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(workspace, **overrides) -> dict:
    # one thread per process: the simulated nodes share the machine's cores. The scan backend is not what this
    # file tests: the pure-PyTorch scan needs no compiled kernel cache, so timings do not depend on one
    return workspace.env(OMP_NUM_THREADS="1", NNUNET_MAMBA_SCAN="torch", **overrides)


def _torchrun(nodes: int, nproc_per_node: int, train_args: list, env: dict, log_dir: Path,
              node_env: dict | None = None) -> list:
    """Start one torchrun per simulated node, rendezvous on 127.0.0.1; return (exit code, output) per node.

    ``node_env`` maps a node rank to environment changes of that node alone.

    Bounded: every torchrun (with its workers, in its own process group) is killed at the deadline or when the
    test fails, so nothing outlives the test.
    """
    port = _free_port()
    processes, logs = [], []
    try:
        for node_rank in range(nodes):
            log = open(log_dir / f"node{node_rank}.log", "w")
            logs.append(log)
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
                       "--nproc-per-node", str(nproc_per_node), "--node-rank", str(node_rank),
                       "--master-addr", "127.0.0.1", "--master-port", str(port),
                       "-m", "nnunet_mamba.cli", "train", *train_args]
            processes.append(subprocess.Popen(command, env={**env, **(node_env or {}).get(node_rank, {})},
                                              cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"torchrun did not finish within {RUN_TIMEOUT_S} s; output in {log_dir}")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in logs:
            log.close()
    return [(process.returncode, (log_dir / f"node{rank}.log").read_text()) for rank, process in enumerate(processes)]


def _adam_steps(checkpoint) -> set:
    return {int(state["step"]) for state in checkpoint["optimizer_state"]["state"].values()}


def _epochs_in_log(text: str) -> list:
    return [int(m) for m in re.findall(r"^\S+ \S+: Epoch (\d+)\s*$", text, flags=re.M)]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def two_node_run(nnunet_workspace, tmp_path_factory):
    """One epoch of TRAINER in 2d, fold 0, across two simulated nodes of one process each."""
    folder = tmp_path_factory.mktemp("torchrun_two_nodes")
    parameters = folder / "parameters"
    parameters.mkdir()
    env = _env(nnunet_workspace, NNUNET_MAMBA_TORCHRUN_TEST_EPOCHS="1",
               NNUNET_MAMBA_TORCHRUN_TEST_PARAMETERS=str(parameters))
    results = _torchrun(2, 1, [str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"], env, folder)
    for node_rank, (code, output) in enumerate(results):
        assert code == 0, f"node {node_rank} failed with exit code {code}:\n" + "\n".join(output.splitlines()[-40:])
    return {"outputs": [output for _, output in results], "parameters": parameters,
            "output_folder": nnunet_workspace.trainer_output(DATASET_ID, "2d", 0, TRAINER)}


@pytest.mark.slow
def test_two_nodes_train_identical_replicas_and_rank_zero_alone_writes(two_node_run):
    ranks = [_load(two_node_run["parameters"] / f"rank{rank}.pt") for rank in (0, 1)]
    # the plan's batch of 12 split over the world, as nnU-Net splits it over GPUs; on the CPU, not cuda:<rank>
    assert [r["batch_size"] for r in ranks] == [6, 6] and {r["device"] for r in ranks} == {"cpu"}
    assert "worker 0 batch_size 6" in two_node_run["outputs"][0]
    assert "worker 1 batch_size 6" in two_node_run["outputs"][1]
    # gradients were averaged across the nodes: network and distillation heads are the same on both ranks
    assert ranks[0]["parameters"].numel() > 0
    assert torch.equal(ranks[0]["parameters"], ranks[1]["parameters"]), \
        f"max difference {(ranks[0]['parameters'] - ranks[1]['parameters']).abs().max()}"

    output = two_node_run["output_folder"]
    final = _load(output / "checkpoint_final.pth")
    assert final["current_epoch"] == 1 and final["trainer_name"] == TRAINER
    assert _adam_steps(final) == {3}
    assert all(torch.equal(value, ranks[0]["network_weights"][key]) for key, value in final["network_weights"].items())
    assert TRAINING_MODULES_KEY in final
    # one writer: one log, each line of it once, checkpoints complete (no partial files), no latest left over
    logs = sorted(output.glob("training_log_*.txt"))
    assert len(logs) == 1, logs
    log = logs[0].read_text()
    assert _epochs_in_log(log) == [0] and log.count("Training done.") == 1
    assert sorted(p.name for p in output.glob("*.pth")) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    assert not list(output.glob(".*partial*"))
    # the final validation: each rank predicted its share of the cases, rank 0 scored all of them
    validation = output / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    predicted = sorted(p.name for p in validation.glob("*.nii.gz"))
    assert len(predicted) == len(summary["metric_per_case"]) == 2, predicted
    assert "rank 1" not in log  # rank 1's prediction of its case went to its own console, not into rank 0's log
    assert ", rank 1" in two_node_run["outputs"][1]


@pytest.mark.slow
def test_two_node_run_continues_with_world_size_one(two_node_run, nnunet_workspace, tmp_path):
    parameters = tmp_path / "parameters"
    parameters.mkdir()
    output = two_node_run["output_folder"]
    before = set(output.glob("training_log_*.txt"))
    stdout = nnunet_workspace.run(
        "nnunet-mamba", "train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c",
        env=_env(nnunet_workspace, NNUNET_MAMBA_TORCHRUN_TEST_EPOCHS="2",
                 NNUNET_MAMBA_TORCHRUN_TEST_PARAMETERS=str(parameters)),
        timeout=RUN_TIMEOUT_S)
    assert "worker 0 batch_size" not in stdout  # no torchrun: no DDP, nnUNetv2_train's own path
    alone = _load(parameters / "rank0.pt")
    assert alone["batch_size"] == 12 and alone["epoch"] == 2
    (log,) = set(output.glob("training_log_*.txt")) - before
    text = log.read_text()
    assert _epochs_in_log(text) == [1]  # continued after the epoch that the two nodes trained
    final = _load(output / "checkpoint_final.pth")
    # the optimiser state of the two-node run came back: Adam counted the steps of both runs (3 + 3). Alone,
    # nnU-Net weighs the lowest deep-supervision output 0, so its head took no step here (under DDP: 1e-6)
    assert final["current_epoch"] == 2 and _adam_steps(final) == {3, 6}
    assert set(final[TRAINING_MODULES_KEY]) == {"distillation"}


@pytest.mark.slow
def test_batch_size_smaller_than_the_world_stops_every_rank_with_the_named_error(nnunet_workspace, tmp_path):
    preprocessed = nnunet_workspace.preprocessed / nnunet_workspace.dataset_folder(DATASET_ID).name
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansTorchrunBatch1"
    plans["configurations"]["2d"]["batch_size"] = 1
    plans_file = preprocessed / "nnUNetPlansTorchrunBatch1.json"
    plans_file.write_text(json.dumps(plans))
    try:
        ((code, output),) = _torchrun(1, 2, [str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-p",
                                             "nnUNetPlansTorchrunBatch1", "-device", "cpu"],
                                      _env(nnunet_workspace), tmp_path)
    finally:
        plans_file.unlink()
    assert code != 0
    message = f"error: BatchSizeSplitError: the batch size of configuration '2d' in {plans_file} is 1"
    assert output.count(message) == 2, output[-3000:]  # both ranks, not one rank while the other waits
    assert "over a world of 2 processes" in output and "-p" in output
    # stopped before the trainer was built: no output folder, no log
    assert not nnunet_workspace.trainer_output(DATASET_ID, "2d", 0, TRAINER, plans="nnUNetPlansTorchrunBatch1").exists()


@pytest.mark.slow
def test_a_node_that_cannot_see_the_preprocessed_data_stops_every_rank_naming_path_and_node(nnunet_workspace,
                                                                                          tmp_path):
    not_mounted = tmp_path / "not_mounted" / "nnUNet_preprocessed"
    results = _torchrun(2, 1, [str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"], _env(nnunet_workspace),
                        tmp_path, node_env={1: {"nnUNet_preprocessed": str(not_mounted)}})
    message = (f"error: SharedDataError: rank 1 on node {socket.gethostname()} (node rank 1, local rank 0) cannot "
               f"see nnUNet_preprocessed={not_mounted}")
    for node_rank, (code, output) in enumerate(results):
        # node 0 sees the data, and stops too, with node 1's message, instead of waiting for it
        assert code != 0 and message in output, (node_rank, output[-3000:])


# --- the launch logic without processes ------------------------------------------------------------------

def _world(**changes) -> TorchrunWorld:
    values = dict(rank=1, world_size=2, local_rank=0, local_world_size=1, node_rank=1, host="node-b")
    values.update(changes)
    return TorchrunWorld(**values)


def test_torchrun_world_comes_from_torchrun_variables_only():
    assert TorchrunWorld.from_environment({}) is None
    # nnU-Net's -num_gpus reads MASTER_PORT too: that alone is no torchrun launch
    assert TorchrunWorld.from_environment({"MASTER_PORT": "29500"}) is None
    world = TorchrunWorld.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                            "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert (world.rank, world.world_size, world.local_rank, world.local_world_size, world.node_rank) == (3, 4, 1, 2, 1)
    with pytest.raises(DistributedTrainingError, match="MASTER_ADDR, MASTER_PORT are not.*torchrun"):
        TorchrunWorld.from_environment({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_batch_size_error_names_the_plan_the_world_and_the_fix():
    check_batch_size_splits(2, 2, "3d_fullres", "/data/pre/Dataset008_X/nnUNetPlans.json")  # one sample each: fine
    with pytest.raises(BatchSizeSplitError) as error:
        check_batch_size_splits(2, 8, "3d_fullres", "/data/pre/Dataset008_X/nnUNetPlans.json")
    message = str(error.value)
    for part in ("'3d_fullres'", "/data/pre/Dataset008_X/nnUNetPlans.json", "is 2", "world of 8 processes",
                 "at most 2 processes", "'batch_size'", "-p"):
        assert part in message, (part, message)


def test_a_rank_that_cannot_see_the_preprocessed_data_names_the_path_and_the_node(tmp_path, monkeypatch):
    missing = tmp_path / "not_mounted"
    monkeypatch.setenv("nnUNet_preprocessed", str(missing))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    problem = preprocessed_data_problem(str(DATASET_ID), "2d", "nnUNetPlans", _world())
    assert isinstance(problem, SharedDataError)
    assert str(missing) in str(problem) and "node node-b" in str(problem) and "rank 1" in str(problem)
    assert "mount" in str(problem)

    missing.mkdir()  # mounted, but without the dataset
    problem = preprocessed_data_problem(str(DATASET_ID), "2d", "nnUNetPlans", _world())
    assert isinstance(problem, SharedDataError) and str(missing) in str(problem) and "node-b" in str(problem)


def test_ddp_wrappers_of_the_trainer_code_take_the_device_of_the_module(tmp_path):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    import nnunet_mamba.training.trainer_base as trainer_base
    import nnunet_mamba.training.training_modules as training_modules
    from nnunet_mamba.training import DualSelfDistillationTrainer

    with ddp_follows_module_device(DualSelfDistillationTrainer):
        # nnU-Net's module (the network), our base's (the network rewrapped) and its training-only modules' mixin,
        # found through the trainer's MRO
        assert nnunet_trainer_module.DDP is ModuleDeviceDDP and trainer_base.DistributedDataParallel is ModuleDeviceDDP
        assert training_modules.DistributedDataParallel is ModuleDeviceDDP
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        try:
            # what nnU-Net passes on rank 3: a GPU index, for a module on the CPU
            wrapped = nnunet_trainer_module.DDP(torch.nn.Linear(2, 2), device_ids=[3])
            assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids is None
        finally:
            dist.destroy_process_group()
    assert nnunet_trainer_module.DDP is DistributedDataParallel
    assert trainer_base.DistributedDataParallel is DistributedDataParallel
    assert training_modules.DistributedDataParallel is DistributedDataParallel
