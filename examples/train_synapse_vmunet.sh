#!/usr/bin/env bash
# Synapse 8-organ protocol with VM-UNet inside nnU-Net: convert, plan, train, predict, evaluate.
# Needs the official RawData download at $SYNAPSE_SRC and the nnU-Net folders set.
set -euo pipefail
: "${SYNAPSE_SRC:?set SYNAPSE_SRC to the folder holding RawData/}"
: "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"
eval "$(nnunet-mamba env)"
nnunet-mamba doctor

ID=8
nnunet-mamba convert synapse8 --src "$SYNAPSE_SRC" --dataset-id $ID   # TransUNet split as fold 0
nnUNetv2_plan_and_preprocess -d $ID -c 2d 3d_fullres --verify_dataset_integrity

# fold 0 holds the 18/12 TransUNet split: its validation cases are the paper's test cases
for configuration in 2d 3d_fullres; do
  nnUNetv2_train $ID $configuration 0 -tr nnUNetTrainerVMUNet
done

# the validation predictions of fold 0 are the test-set predictions of the protocol
dataset=$(basename "$(ls -d "$nnUNet_raw"/Dataset$(printf %03d $ID)_*)")
for configuration in 2d 3d_fullres; do
  nnunet-mamba evaluate --protocol synapse \
    --pred "$nnUNet_results/$dataset/nnUNetTrainerVMUNet__nnUNetPlans__$configuration/fold_0/validation" \
    --ref "$nnUNet_raw/$dataset/labelsTr" --out "synapse_vmunet_$configuration"
done
