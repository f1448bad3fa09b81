#!/usr/bin/env bash
# The documentation site (Sphinx + MyST) into docs/_build/html, warnings as errors; .ci/run builds it.
#   bash scripts/docs.sh            then open docs/_build/html/index.html
# The Reference pages of recipe keys and plugin parameters are generated from the code (docs/conf.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@"
