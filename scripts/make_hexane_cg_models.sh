#!/usr/bin/env bash
# make_hexane_cg_models.sh -- regenerate the small CG hexane test data (two CG models + trajectories)
#
#   tests/data/hexane_cg_models/   (committed, < 1 MB)
#     mapped.xtc      tests/data/hexane/traj.xtc mapped to CG with `backmap map` (21 frames, reference)
#     good.xtc        CG model "good": BI bond + BI angle + IBI pair potentials, 25 frames 10 ps apart
#     poor.xtc        CG model "poor": BI bond, no angle, pair potentials = -kT ln g(r) (first IBI guess)
#     good.lammpstrj  model good's LAMMPS dump as written (Angstrom, every 20 ps), if < 300 KB
#     README.md
#   data/hexane-cg-models-extra/   (not committed) tables, LAMMPS inputs, summary.json, plot
#
# 200 n-hexane molecules, 3 beads each (A1 B A2, tests/data/hexane/hexane.xml), 300 K, cubic 3.543 nm box.
# Tools: `backmap map` (AA -> CG), VOTCA 2022.1 csg_stat (distributions, RDF targets) and csg_inverse
# (IBI, program lammps), LAMMPS (Langevin NVT), numpy Boltzmann inversion for the bonded terms.
#
# Usage:  scripts/make_hexane_cg_models.sh [extra options of scripts/make_cg_models.py hexane]
# Env:    PYTHON=<repo>/.venv/bin/python   OUT=<repo>/tests/data/hexane_cg_models
#         EXTRA_OUT=<repo>/data/hexane-cg-models-extra ('' to skip)   ITERATIONS=10 (IBI)
#         WORKDIR=<dir>  keep/resume the work directory
#
# Requires: lmp, csg_stat, csg_inverse, gmx (grompp only); Debian/Ubuntu: apt-get install lammps votca gromacs
# Deterministic: seeds 1993 (IBI), 2003 (good), 2013 (poor) for velocity create, + 1 for fix langevin;
# one thread per LAMMPS run. Takes ~5 min.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
OUT=${OUT:-$REPO/tests/data/hexane_cg_models}
EXTRA_OUT=${EXTRA_OUT-$REPO/data/hexane-cg-models-extra}
ITERATIONS=${ITERATIONS:-10}
WORKDIR=${WORKDIR:-}

for t in lmp csg_stat csg_inverse gmx; do
    command -v "$t" >/dev/null || { echo "error: '$t' not found; install with: apt-get install lammps votca gromacs" >&2; exit 1; }
done
[[ -x "$PYTHON" ]] || { echo "error: python '$PYTHON' not found (set PYTHON or create the venv)" >&2; exit 1; }
for f in topol.tpr traj.xtc hexane.xml; do
    [[ -r "$REPO/tests/data/hexane/$f" ]] || { echo "error: tests/data/hexane/$f missing (scripts/make_hexane_data.sh)" >&2; exit 1; }
done

export OMP_NUM_THREADS=1
START=$SECONDS
"$PYTHON" "$SCRIPT_DIR/make_cg_models.py" hexane --out "$OUT" --extra-out "$EXTRA_OUT" \
    --iterations "$ITERATIONS" ${WORKDIR:+--workdir "$WORKDIR"} "$@"
echo "make_hexane_cg_models.sh: done in $((SECONDS - START)) s -> $OUT"
du -sh "$OUT"
