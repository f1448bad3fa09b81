#!/usr/bin/env bash
# The test suite on a fresh machine: set up (GROMACS, VOTCA, .venv), then pytest.
#   bash scripts/test.sh          the fast tier: every test not marked slow (tests/conftest.py SLOW)
#   bash scripts/test.sh --all    every test (what .ci/run runs); further arguments go to pytest
# The test files run on min(cores, 4) processes (pytest-xdist, one file per process at a time, so a
# file's module fixtures are built once); BACKMAP_TEST_WORKERS=N overrides, 0 runs in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
cores=$(nproc 2>/dev/null || echo 1)
workers=${BACKMAP_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
[ "$workers" -le 1 ] && workers=0
tier=(-m "not slow")
if [ "${1:-}" = "--all" ]; then
  shift
  tier=()
fi
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider -n "$workers" --dist loadfile ${tier[@]+"${tier[@]}"} "$@"
