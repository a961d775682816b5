#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what the GPU machine's image lacks for scripts/gpu_check.sh: wheels for
# Python 3.12 / manylinux x86_64 and mamba-ssm's source release. Run it where pip reaches a package index;
# the GPU machine has no network. The set is what the check imports there and nothing more: the image has
# torch, triton, numpy, scipy, scikit-image, pandas, einops, transformers... (the device tool's KINDS.md). A
# run with every other package of our CPU environment made unimportable showed no step importing monai,
# acvl-utils or batchgeneratorsv2; SimpleITK (52 MB, most of the folder) is imported by nnU-Net's planner.
# Pins: requirements-cpu.txt and the CPU environment's tested versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=.whl
WHEELS=(
    nnunetv2==2.8.1
    dynamic-network-architectures==0.4.4
    batchgenerators==0.25.5
    SimpleITK==2.5.7
    nibabel==5.4.2
    mambapy==1.2.0
)
# mamba-ssm's selective-scan kernel is built on the GPU machine, for its architecture (gpu_suite's build step)
MAMBA_SSM=mamba-ssm==2.3.2.post1

mkdir -p "$DEST"
# keep one version of each: two wheels of one package stop the whole install there
rm -f "$DEST"/*.whl "$DEST"/mamba_ssm-*.tar.gz
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"
# the sdist as published; its setup.py is not run here (--no-build-isolation keeps pip from building anything
# but the metadata, which needs no CUDA)
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$DEST" "$MAMBA_SSM"
ls -l "$DEST"
echo "total: $(du -cb "$DEST"/* | tail -1 | cut -f1) bytes in $DEST (what travels to the device machine counts at most 64 MiB)"
