#!/usr/bin/env bash
# The five folds of each configuration in parallel as a SLURM job array, then nnUNetv2_find_best_configuration
# once every fold has finished. Run it on the login node; it submits itself twice:
#
#   DATASET=8 CONFIGURATIONS="2d 3d_fullres" bash examples/slurm_fold_array.sh
#
# Each array task trains one (configuration, fold) on one GPU: `nnunet-mamba train` without torchrun is
# nnUNetv2_train. --npz keeps the validation probabilities, which find_best_configuration needs to ensemble.
# A task that failed can be resubmitted alone with --c, the same variables set (task 7 is CONFIGURATIONS[1],
# fold 2):  sbatch --array=7 examples/slurm_fold_array.sh train --c
#SBATCH --job-name=nnunet-mamba-folds
#SBATCH --gpus=1
#SBATCH --cpus-per-task=16
#SBATCH --time=48:00:00
set -euo pipefail
: "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"
eval "$(nnunet-mamba env)"

DATASET=${DATASET:-8}
CONFIGURATIONS=${CONFIGURATIONS:-"2d 3d_fullres"}
TRAINER=${TRAINER:-nnUNetTrainerVMUNet}
PLANS=${PLANS:-nnUNetPlans}
read -r -a configurations <<< "$CONFIGURATIONS"
export DATASET CONFIGURATIONS TRAINER PLANS

case "${1:-submit}" in
  submit)
    last=$(( ${#configurations[@]} * 5 - 1 ))
    array=$(sbatch --parsable --array=0-"$last" "$0" train)
    # needs no GPU; add your cluster's CPU partition options here
    sbatch --dependency=afterok:"$array" --job-name=nnunet-mamba-best --time=4:00:00 "$0" best
    echo "submitted folds as job array $array, nnUNetv2_find_best_configuration after it"
    ;;
  train)
    shift
    task=${SLURM_ARRAY_TASK_ID:?run through sbatch --array}
    configuration=${configurations[$(( task / 5 ))]}
    fold=$(( task % 5 ))
    nnunet-mamba train "$DATASET" "$configuration" "$fold" -tr "$TRAINER" -p "$PLANS" -device cuda --npz "$@"
    ;;
  best)
    nnUNetv2_find_best_configuration "$DATASET" -c "${configurations[@]}" -tr "$TRAINER" -p "$PLANS" -f 0 1 2 3 4
    ;;
  *)
    echo "usage: bash $0 [submit] | sbatch --array=... $0 train [--c] | sbatch $0 best" >&2
    exit 2
    ;;
esac
