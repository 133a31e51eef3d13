#!/usr/bin/env bash
# The test command: sets up ./.venv (tools/setup_env.sh), then runs the whole suite on CPU.
#   bash tests/run.sh              # everything (unit + torchrun gloo scenarios), ~25 min on 2 cores
#   bash tests/run.sh -k parallel  # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PATH="$PWD/.venv/bin:$PATH"   # tools the tests call (torchrun, shellcheck) come from the venv
exec .venv/bin/python -m pytest -q --durations=15 tests "$@"
