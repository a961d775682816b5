#!/usr/bin/env bash
# The whole nnU-Net pipeline with a VM-UNet trainer on a small synthetic dataset, on CPU.
# Extra arguments go to `nnunet-mamba demo` (e.g. --workdir DIR, -c 2d).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/scripts/setup_env.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
eval "$(nnunet-mamba env)"
exec nnunet-mamba demo "$@"
