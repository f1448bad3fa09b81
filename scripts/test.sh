#!/usr/bin/env bash
# The test suite on a fresh machine: set up (GROMACS, VOTCA, .venv), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
