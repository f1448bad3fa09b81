#!/usr/bin/env bash
# Creates .venv with backmap installed (editable), its test and documentation dependencies.
# Idempotent: re-installs only when pyproject.toml changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.backmap-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d" " -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
  # the CPU build of torch first (an unpinned torch would pull the multi-GB CUDA build)
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e '.[test,docs]'
  echo "$want" > "$stamp"
fi
