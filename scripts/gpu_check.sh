#!/usr/bin/env bash
# The prepared GPU check (docs/benchmarks.md, "GPU check"): installs the wheels of .whl/ (filled by
# scripts/fetch_gpu_wheels.sh) without the network, then runs every step of nnunet_mamba.benchmarks.gpu_suite
# and writes gpu_check.json / gpu_check.md / gpu_check.log under $OUT (or --out DIR).
#   bash scripts/gpu_check.sh                       # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run --out DIR   # CPU, tiny shapes, nothing installed or built
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
INSTALL_BUDGET_S=${INSTALL_BUDGET_S:-45}
SITE=${GPU_CHECK_SITE:-/tmp/site}

dry_run=0
for arg in "$@"; do
    [ "$arg" = "--dry-run" ] && dry_run=1
done

install="skipped (dry run)"
if [ "$dry_run" = 0 ]; then
    if compgen -G ".whl/*.whl" > /dev/null; then
        started=$(date +%s)
        # --no-deps: the image has torch, numpy, scipy...; .whl/ holds exactly what it lacks
        if timeout "$INSTALL_BUDGET_S" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --upgrade --target "$SITE" .whl/*.whl; then
            install="$(ls .whl/*.whl | wc -l) wheels installed in $(( $(date +%s) - started )) s"
        else
            install="FAILED after $(( $(date +%s) - started )) s (pip install of .whl/*.whl, budget ${INSTALL_BUDGET_S} s)"
        fi
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        install="no wheels in .whl/ (run scripts/fetch_gpu_wheels.sh where pip works, then carry .whl)"
    fi
    echo "[gpu_check] wheels: $install"
fi

exec "$PYTHON" -m nnunet_mamba.benchmarks.gpu_suite --install-status "$install" "$@"
