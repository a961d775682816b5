#!/usr/bin/env bash
# The smoke run of `nnunet-mamba compare` shown in the README and docs/benchmarking.md, on CPU: the demo's synthetic
# dataset (2d), VM-UNet and its No-Mamba twin against nnU-Net's default UNet and its ResEnc M preset, all on the
# quick 6 x 25-iteration schedule, two folds. It shows the tool working; on synthetic data it is no evidence.
#
#   bash examples/compare_demo.sh /tmp/compare-demo        # about an hour on 2 CPU cores (ResEnc M: 40 minutes)
set -euo pipefail
workdir=${1:?usage: bash examples/compare_demo.sh WORKDIR}
mkdir -p "$workdir"
eval "$(nnunet-mamba env)"
export nnUNet_raw=$workdir/nnUNet_raw nnUNet_preprocessed=$workdir/nnUNet_preprocessed
export nnUNet_results=$workdir/nnUNet_results nnUNet_def_n_proc=1 nnUNet_compile=false
export nnUNet_n_proc_DA=1  # the planner passes it to torch.set_num_threads, which refuses 0

# the demo's dataset 990, planned by nnU-Net (the demo also trains fold 0 of VM-UNet, which compare then reuses)
[ -d "$nnUNet_preprocessed/Dataset990_MambaDemo" ] || nnunet-mamba demo --workdir "$workdir" -c 2d

export nnUNet_n_proc_DA=0  # no data-augmentation worker processes on a 2-core machine
# --plan-missing runs nnU-Net's ResEnc M planner. On this tiny dataset the preset plans 2d with batch 240 (the default
# UNet: 12), because it drops the default planner's cap of a batch at 5% of the dataset: most of the run's time.
nnunet-mamba compare -d 990 -c 2d --device cpu --folds 0 1 --train --plan-missing --match-memory \
  --trainers nnUNetTrainerVMUNetQuick nnUNetTrainerVMUNetNoMambaQuick nnUNetTrainerQuickCPU \
  nnUNetTrainerQuickCPU:nnUNetResEncUNetMPlans
