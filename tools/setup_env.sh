#!/usr/bin/env bash
# Create (or refresh) ./.venv with the pinned dependencies and this package installed editable,
# building the C++ sample-index extension. Idempotent: a stamp of requirements.txt + setup.py +
# csrc/ skips the work when nothing changed. Used by examples/demo.sh, tests/run.sh and .ci/run.
#   bash tools/setup_env.sh            # PYTHON=python3.11 to choose the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.megatron_patch_stamp"
want="$(cat requirements.txt setup.py pyproject.toml csrc/* 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and alone: a bare or ranged torch could pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
echo "$want" > "$stamp"
echo "environment ready: $VENV"
