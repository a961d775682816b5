"""nnU-Net training across processes and machines that ``torchrun`` started: a client of torch.distributed.

nnU-Net's ``-num_gpus`` spawns its processes on one machine (``mp.spawn``, ``MASTER_ADDR=localhost``). Beyond one
machine the launcher is PyTorch's own: ``torchrun`` starts the processes on every node, rendezvouses them and
puts RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. This module only joins the
process group that environment describes and then does what nnU-Net's ``run_ddp`` does, with nnU-Net's own
``get_trainer_from_args`` and ``maybe_load_checkpoint``. nnU-Net's trainer does the rest under DDP by itself: it
splits the plan's batch size over the world and sets oversampling per rank (from the global rank and world
size), and writes checkpoints, logs, plots and the validation metrics on rank 0 only (its ``local_rank`` is the
*global* rank, the one writer that a shared filesystem needs).

Two assumptions of nnU-Net's DDP path hold on one machine with GPUs only; they are corrected here, for the
torchrun path only:

* the trainer puts itself on ``cuda:<global rank>``, a GPU that a second node does not have, and on a GPU even
  on CPU runs: :func:`place_trainer` moves it to ``cuda:<LOCAL_RANK>`` (or the CPU) before it builds anything;
* the network is wrapped with ``DDP(network, device_ids=[global rank])``, the same wrong index, and an argument
  that CPU modules (gloo) reject: :func:`ddp_follows_module_device` makes the DDP wrappers that the trainer's
  code builds take their device from the module they wrap.

Data on a shared filesystem is a requirement: every rank reads ``nnUNet_preprocessed`` and writes its part of
the final validation into ``nnUNet_results``. Problems found before training (a rank that cannot see the data, a
batch size that cannot be split) stop every rank together, with the same message, instead of leaving the others
waiting in a collective.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
from dataclasses import dataclass
from os.path import isdir, isfile, join

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

#: set by torchrun in every process it starts; all three say that this process is one rank of a world
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: where the process group's store is; torchrun sets them too
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")

SHARED_DATA_HINT = (
    "Training on several nodes reads the preprocessed data from a filesystem that every node mounts (and writes "
    "nnUNet_results there too): mount it on this node, or set nnUNet_preprocessed on this node to where it is "
    "mounted; run nnUNetv2_plan_and_preprocess once, before training.")


class DistributedTrainingError(RuntimeError):
    """A torchrun launch that cannot train; the message names what is at fault and the fix."""


class BatchSizeSplitError(DistributedTrainingError):
    """The plan's batch size is smaller than the world: some rank would get no sample of the global batch."""


class SharedDataError(DistributedTrainingError):
    """A rank cannot see the preprocessed data under the path its nnUNet_preprocessed names."""


@dataclass(frozen=True)
class TorchrunWorld:
    """This process's place in the world that torchrun set up."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    host: str

    @classmethod
    def from_environment(cls, environ=None) -> TorchrunWorld | None:
        """The world torchrun described, or None when this process was not started by torchrun.

        MASTER_PORT alone does not count: nnU-Net's own ``-num_gpus`` reads it too.
        """
        environ = os.environ if environ is None else environ
        present = [name for name in RANK_VARIABLES if name in environ]
        if not present:
            return None
        missing = [name for name in RANK_VARIABLES + RENDEZVOUS_VARIABLES if not environ.get(name)]
        if missing:
            raise DistributedTrainingError(
                f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} set but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not: start the training with torchrun (which sets all of "
                f"{', '.join(RANK_VARIABLES + RENDEZVOUS_VARIABLES)}), or unset "
                f"{', '.join(present)} to train in this process alone")
        try:
            world = cls(rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                        local_rank=int(environ["LOCAL_RANK"]),
                        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", "1")),
                        node_rank=int(environ.get("GROUP_RANK", environ.get("NODE_RANK", "0"))),
                        host=socket.gethostname())
        except ValueError as error:
            raise DistributedTrainingError(f"torchrun's rank variables must be integers: {error}") from None
        if not 0 <= world.rank < world.world_size:
            raise DistributedTrainingError(f"RANK={world.rank} is outside WORLD_SIZE={world.world_size}")
        return world

    @property
    def where(self) -> str:
        """Names this rank and its machine in messages read on a cluster's log."""
        return f"rank {self.rank} on node {self.host} (node rank {self.node_rank}, local rank {self.local_rank})"


# --- checks that stop every rank together -------------------------------------------------------------------

def check_batch_size_splits(batch_size: int, world_size: int, configuration: str, plans_file: str) -> None:
    """nnU-Net splits the plan's batch size over the ranks (the plan's batch is the global batch); every rank
    needs at least one sample. nnU-Net itself asserts this inside the trainer, after it has built it."""
    if batch_size < world_size:
        raise BatchSizeSplitError(
            f"the batch size of configuration {configuration!r} in {plans_file} is {batch_size}, which cannot be "
            f"split over a world of {world_size} processes: nnU-Net's DDP splits the plan's batch size over the "
            f"processes, at least one sample each. Start at most {batch_size} processes in all (torchrun --nnodes "
            f"times --nproc-per-node), or train with plans whose {configuration!r} batch size is at least "
            f"{world_size}: copy {os.path.basename(plans_file)} to a new file in the same folder, change "
            f"'plans_name' and that configuration's 'batch_size' there, and pass the new name with -p.")


def preprocessed_data_problem(dataset_name_or_id: str, configuration: str, plans_identifier: str,
                              world: TorchrunWorld) -> SharedDataError | None:
    """What this rank cannot see of the preprocessed data it is about to train on, or None."""
    from nnunetv2.paths import nnUNet_preprocessed

    root = nnUNet_preprocessed.get()
    if root is None:
        return SharedDataError(f"nnUNet_preprocessed is not set for {world.where}. {SHARED_DATA_HINT}")
    if not isdir(root):
        return SharedDataError(f"{world.where} cannot see nnUNet_preprocessed={root}: there is no such folder "
                               f"there. {SHARED_DATA_HINT}")
    try:
        dataset_name = _dataset_name(dataset_name_or_id)
    except ValueError:
        return None  # not a dataset ID or name: said next, on every rank alike
    except RuntimeError:
        return SharedDataError(f"{world.where} cannot see dataset {dataset_name_or_id} in "
                               f"nnUNet_preprocessed={root}. {SHARED_DATA_HINT}")
    folder = join(root, dataset_name)
    plans_file = join(folder, f"{plans_identifier}.json")
    for path in (plans_file, join(folder, "dataset.json")):
        if not isfile(path):
            return SharedDataError(f"{world.where} cannot see {path} (nnUNet_preprocessed={root}). "
                                   f"{SHARED_DATA_HINT}")
    try:
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        data = join(folder, PlansManager(load_json(plans_file)).get_configuration(configuration).data_identifier)
    except (KeyError, ValueError, RuntimeError):
        return None  # an unknown configuration: nnU-Net names it, on every rank alike
    if not isdir(data):
        return SharedDataError(f"{world.where} cannot see {data}, the preprocessed data of configuration "
                               f"{configuration!r} (nnUNet_preprocessed={root}). {SHARED_DATA_HINT}")
    return None


def stop_together(error: Exception | None) -> None:
    """Raise on every rank when any rank found a problem (collective: every rank must call it).

    A rank that raised alone would leave the others waiting for it in their next collective until the process
    group times out; here all raise, with the messages of every rank that found something.
    """
    errors: list = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [e for e in errors if e is not None]
    if failed:
        first = failed[0]
        messages = dict.fromkeys(str(e) for e in failed if type(e) is type(first))
        raise type(first)("\n".join(messages))


# --- devices ----------------------------------------------------------------------------------------------

def world_device(device_name: str, world: TorchrunWorld) -> tuple[torch.device, str]:
    """This rank's device and the process group's backend: ``cuda:LOCAL_RANK`` with nccl, or the CPU with gloo.

    LOCAL_RANK, not the global rank: the global rank counts the GPUs of every node.
    """
    if device_name == "cuda":
        if not torch.cuda.is_available():
            raise DistributedTrainingError(f"-device cuda, but {world.where} has no usable CUDA device; use "
                                           f"-device cpu for a CPU run (gloo)")
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise DistributedTrainingError(
                f"{world.where} needs GPU {world.local_rank} but sees {count} (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most {count} processes per node "
                f"(torchrun --nproc-per-node {count})")
        torch.cuda.set_device(world.local_rank)
        # as nnUNetv2_train on CUDA: threads do not help the GPU
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device("cuda", world.local_rank), "nccl"
    if device_name == "cpu":
        if "OMP_NUM_THREADS" not in os.environ:
            # nnUNetv2_train takes every core; the processes of one node share them
            torch.set_num_threads(max(1, multiprocessing.cpu_count() // world.local_world_size))
        return torch.device("cpu"), "gloo"
    raise DistributedTrainingError(f"-device {device_name} cannot train across processes (torch.distributed has no "
                                   f"backend for it); use -device cuda (nccl) or -device cpu (gloo)")


def module_device_ids(module: torch.nn.Module) -> list[int] | None:
    """DDP's ``device_ids`` for a module: its one CUDA device, or None (CPU, or no parameters)."""
    devices = {p.device for p in module.parameters()}
    if len(devices) == 1:
        (device,) = devices
        if device.type == "cuda":
            return [device.index if device.index is not None else torch.cuda.current_device()]
    return None


class ModuleDeviceDDP(DistributedDataParallel):
    """DistributedDataParallel on the device of the module it wraps, whatever ``device_ids`` the caller passed.

    The trainer moves every module to its device before wrapping it, so that device is right by construction;
    the index nnU-Net passes (the global rank) is not on a second node, and CPU modules take none at all.
    """

    def __init__(self, module: torch.nn.Module, device_ids=None, output_device=None, **kwargs):
        super().__init__(module, device_ids=module_device_ids(module), **kwargs)


@contextlib.contextmanager
def ddp_follows_module_device(trainer_class: type):
    """While inside, the DDP wrappers built by the code of ``trainer_class`` and its bases are :class:`ModuleDeviceDDP`.

    nnU-Net's trainer (and its variants, and ours) wrap with the DDP class bound to a name in their module:
    that binding is replaced in the namespaces where the trainer's methods look names up, and put back on
    leaving. The subclass keeps ``isinstance(..., DistributedDataParallel)`` true everywhere.
    """
    namespaces: dict[int, dict] = {}
    for cls in trainer_class.__mro__:
        for attribute in vars(cls).values():
            function = getattr(attribute, "__func__", attribute)
            namespace = getattr(function, "__globals__", None)
            if isinstance(namespace, dict):
                namespaces[id(namespace)] = namespace
    replaced = []
    for namespace in namespaces.values():
        for name, value in list(namespace.items()):
            if value is DistributedDataParallel:
                namespace[name] = ModuleDeviceDDP
                replaced.append((namespace, name))
    try:
        yield
    finally:
        for namespace, name in replaced:
            namespace[name] = DistributedDataParallel


def place_trainer(trainer, device: torch.device) -> None:
    """Put a freshly built trainer on this rank's device (nnU-Net picked ``cuda:<global rank>`` under DDP).

    Before ``initialize()``: the network, optimiser and training-only modules are built on ``trainer.device``.
    """
    trainer.device = device
    if device.type != "cuda":
        trainer.grad_scaler = None  # nnU-Net made a CUDA GradScaler for the device it assumed


# --- the run --------------------------------------------------------------------------------------------

def train_on_world(world: TorchrunWorld, dataset_name_or_id: str, configuration: str, fold: int | str,
                   trainer_class_name: str = "nnUNetTrainer", plans_identifier: str = "nnUNetPlans",
                   pretrained_weights: str | None = None, export_validation_probabilities: bool = False,
                   continue_training: bool = False, only_run_validation: bool = False,
                   disable_checkpointing: bool = False, val_with_best: bool = False,
                   device_name: str = "cuda") -> None:
    """One rank of a DDP training across the world torchrun set up: nnU-Net's ``run_ddp``, for any trainer."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if isinstance(fold, str) and fold != "all":
        fold = int(fold)  # as nnUNetv2_train: a fold is 'all' or an integer
    if val_with_best and disable_checkpointing:
        raise DistributedTrainingError("--val_best needs checkpoint_best.pth: drop --disable_checkpointing")
    if continue_training and only_run_validation:
        raise DistributedTrainingError("--c continues a training and --val only validates a finished one: "
                                       "give one of them")
    device, backend = world_device(device_name, world)
    dist.init_process_group(backend)  # env://, as torchrun describes it
    try:
        stop_together(preprocessed_data_problem(dataset_name_or_id, configuration, plans_identifier, world))
        # before the trainer exists: it would create the output folder and its log first
        error = None
        try:
            plans_file = join(nnUNet_preprocessed.get(), _dataset_name(dataset_name_or_id), f"{plans_identifier}.json")
            batch_size = PlansManager(load_json(plans_file)).get_configuration(configuration).batch_size
            check_batch_size_splits(batch_size, world.world_size, configuration, plans_file)
        except Exception as found:  # raised on some ranks only, it would leave the others waiting
            error = found
        stop_together(error)

        trainer = get_trainer_from_args(dataset_name_or_id, configuration, fold, trainer_class_name,
                                        plans_identifier, continue_training, device=device)
        place_trainer(trainer, device)
        with ddp_follows_module_device(type(trainer)):
            if disable_checkpointing:
                trainer.disable_checkpointing = disable_checkpointing
            maybe_load_checkpoint(trainer, continue_training, only_run_validation, pretrained_weights)
            if torch.cuda.is_available():
                torch.backends.cudnn.deterministic = False
                torch.backends.cudnn.benchmark = True
            if not only_run_validation:
                trainer.run_training()
            if val_with_best:
                trainer.load_checkpoint(join(trainer.output_folder, "checkpoint_best.pth"))
            trainer.perform_actual_validation(export_validation_probabilities)
    except DistributedTrainingError:
        dist.destroy_process_group()  # every rank stops here together: leave the group in order
        raise
    # not after other errors: destroying the group can block on collectives that the other ranks still wait in
    dist.destroy_process_group()


def _dataset_name(dataset_name_or_id: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not dataset_name_or_id.startswith("Dataset"):
        try:
            dataset_name_or_id = int(dataset_name_or_id)
        except ValueError:
            raise ValueError(f"DATASET must be a dataset ID or a name DatasetXXX_YYY, got {dataset_name_or_id!r}") \
                from None
    return maybe_convert_to_dataset_name(dataset_name_or_id)
