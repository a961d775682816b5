#!/usr/bin/env bash
# The test suite, on CPU: sets up the pinned environment, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$repo/scripts/setup_env.sh" | tail -n 1)
cd "$repo"
exec "$venv/bin/python" -m pytest tests "$@"
