#!/usr/bin/env bash
# Create (or reuse) a virtual environment with the pinned requirements and nnunet-mamba installed
# in editable mode; print its path on the last line. The environment is keyed on the pins, so it is
# rebuilt only when requirements-cpu.txt or the Python version changes.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
key=$( { cat "$repo/requirements-cpu.txt"; "$python" --version; } | sha256sum | cut -c1-12)
venv=${NNUNET_MAMBA_VENV:-$HOME/.cache/nnunet-mamba/venv-$key}
if [ ! -f "$venv/.complete" ]; then
  echo "creating $venv (pinned requirements; a few minutes the first time)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$repo/requirements-cpu.txt" >&2
  touch "$venv/.complete"
fi
# setuptools prints a long notice on every editable install: show pip's output only when it fails
if ! output=$("$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo" 2>&1); then
  echo "$output" >&2
  exit 1
fi
echo "$venv"
