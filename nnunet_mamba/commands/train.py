"""``nnunet-mamba train DATASET CONFIGURATION FOLD -tr TRAINER``: nnUNetv2_train, also across machines via torchrun.

Started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment, a world of two or more)
it joins torchrun's process group and trains with nnU-Net's DDP on every rank (:mod:`nnunet_mamba.distributed`).
Otherwise it is nnUNetv2_train: the same options, handed to nnU-Net's ``run_training`` with the device set up as
nnUNetv2_train sets it up, ``-num_gpus`` included.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="nnUNetv2_train, and DDP across nodes when started by torchrun",
        description=(
            "Train like nnUNetv2_train (same arguments). Started by torchrun, every process joins torchrun's "
            "process group (nccl on CUDA, gloo on CPU) and nnU-Net's trainer runs with DDP across all nodes: "
            "the plan's batch size is split over all processes, rank 0 writes checkpoints, logs and the "
            "validation metrics. nnUNet_preprocessed and nnUNet_results must be on a filesystem that every node "
            "mounts. Example, on each of 2 nodes: torchrun --nnodes 2 --nproc-per-node 4 --node-rank N "
            "--master-addr HOST --master-port 29500 -m nnunet_mamba.cli train 8 3d_fullres 0 -tr "
            "nnUNetTrainerVMUNet"),
    )
    # nnUNetv2_train's options, names and defaults unchanged (nnunetv2.run.run_training.run_training_entry)
    parser.add_argument("dataset_name_or_id", help="dataset name or ID to train with")
    parser.add_argument("configuration", help="configuration that should be trained")
    parser.add_argument("fold", help="fold of the 5-fold cross-validation (0-4), or 'all'")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class name (default: nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-pretrained_weights", default=None,
                        help="nnU-Net checkpoint to initialise a new training from")
    parser.add_argument("-num_gpus", type=int, default=1,
                        help="GPUs of this machine to train on (nnU-Net's one-node DDP); under torchrun the "
                             "processes are torchrun's: use --nproc-per-node there")
    parser.add_argument("--npz", action="store_true", help="also save the validation softmax as npz")
    parser.add_argument("--c", action="store_true", help="continue from the latest checkpoint (any world size)")
    parser.add_argument("--val", action="store_true", help="only run the validation of a finished training")
    parser.add_argument("--val_best", action="store_true", help="validate with checkpoint_best instead of final")
    parser.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                        help="cuda (default), cpu or mps; pick GPUs with CUDA_VISIBLE_DEVICES")
    parser.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mamba.distributed import DistributedTrainingError, TorchrunWorld, train_on_world

    try:
        world = TorchrunWorld.from_environment()
        if world is None or world.world_size == 1:
            # a world of one is one process: exactly nnUNetv2_train
            _run_like_nnunetv2_train(args)
            return 0
        if args.num_gpus != 1:
            raise DistributedTrainingError(
                f"-num_gpus {args.num_gpus} starts processes on this machine, but torchrun started this one as "
                f"rank {world.rank} of {world.world_size}: drop -num_gpus and give torchrun --nproc-per-node")
        train_on_world(world, args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p,
                       args.pretrained_weights, args.npz, args.c, args.val, args.disable_checkpointing,
                       args.val_best, device_name=args.device)
    except DistributedTrainingError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


def _run_like_nnunetv2_train(args) -> None:
    """nnunetv2.run.run_training.run_training_entry after its argument parsing."""
    import multiprocessing

    import torch
    from nnunetv2.run.run_training import run_training

    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
        device = torch.device("cpu")
    elif args.device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        device = torch.device("cuda")
    else:
        device = torch.device("mps")
    run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p, args.pretrained_weights,
                 args.num_gpus, args.npz, args.c, args.val, args.disable_checkpointing, args.val_best,
                 device=device)
