#!/usr/bin/env bash
# The quickstart on a fresh machine: set up, then `backmap run recipes/quickstart.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
.venv/bin/backmap run recipes/quickstart.yaml "$@"
