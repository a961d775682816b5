#!/usr/bin/env bash
# One fold trained with DDP across several nodes: `srun` starts one torchrun per node, torchrun one process per
# GPU, and every process runs `nnunet-mamba train` (nnUNetv2_train's options) in torchrun's process group.
#
#   sbatch examples/slurm_multinode_train.sh                # DATASET=8 3d_fullres fold 0, nnUNetTrainerVMUNet
#   DATASET=3 FOLD=2 sbatch examples/slurm_multinode_train.sh
#   sbatch examples/slurm_multinode_train.sh --c            # resume (any number of nodes / GPUs)
#
# Requirements: nnUNet_preprocessed and nnUNet_results on a filesystem that every node mounts at the same path
# (a rank that cannot see the data stops with SharedDataError, naming the path and the node), and a plan whose
# batch size is at least nodes x GPUs per node: it is the global batch, split over all processes
# (BatchSizeSplitError otherwise).
#SBATCH --job-name=nnunet-mamba-ddp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
set -euo pipefail
: "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"
eval "$(nnunet-mamba env)"   # nnUNet_extTrainer; srun passes the environment on to every node

DATASET=${DATASET:-8}
CONFIGURATION=${CONFIGURATION:-3d_fullres}
FOLD=${FOLD:-0}
TRAINER=${TRAINER:-nnUNetTrainerVMUNet}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}

# the first node of the allocation hosts the rendezvous; the job ID names it
RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}

# --kill-on-bad-exit: a node whose training fails ends the job, instead of the others waiting for it in a
# collective until the process-group timeout
srun --kill-on-bad-exit=1 torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT" --rdzv-id "$SLURM_JOB_ID" \
  --no-python nnunet-mamba train "$DATASET" "$CONFIGURATION" "$FOLD" -tr "$TRAINER" -device cuda "$@"
