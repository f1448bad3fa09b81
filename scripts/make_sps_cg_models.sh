#!/usr/bin/env bash
# make_sps_cg_models.sh -- build three coarse-grained (CG) models of the sPS melt at 568 K and their CG MD
# trajectories (thesis ch. 6, Stieffenhofer 2022, table 6.2: models A < B < C), inputs for `backmap assess`.
#
#   data/sps-cg-models/   (a cache, git-ignored)
#     A.xtc B.xtc C.xtc   80 frames each, 10 ps apart, 720 beads in cg.gro order, triclinic box, nm
#     A.lammpstrj         model A's LAMMPS dump as written (Angstrom)
#     potentials/         LAMMPS tables/inputs, VOTCA mappings and IBI settings
#     ibi_convergence/    IBI targets, final RDFs/potentials, per-iteration RMS deviation
#     summary.json, cg_distributions.png, README.md
#
# Models (same IBI pair potentials B-B, B-S, S-S):
#   A  stiff harmonic bonds at the reference mean (sigma 0.0015 nm; LAMMPS cannot SHAKE a chain)
#      + Boltzmann-inverted (BI) angles + BI dihedrals BBBB and BSBS
#   B  BI bonds + angles + both dihedrals (IBI was run with this model)
#   C  BI bonds + angles, no dihedrals
# Built from ../shared/data/sps/eval_t568/cg.{gro,xtc} (beside the repository) (the atomistic reference mapped to CG) with
# VOTCA 2022.1 (csg_stat: reference distributions and RDF targets; csg_inverse: IBI with LAMMPS),
# numpy (Boltzmann inversion of the bonded histograms) and LAMMPS (29 Sep 2021, Langevin NVT).
# Everything runs in a scratch work directory; outputs are written atomically (temp name, then rename).
#
# Usage:  scripts/make_sps_cg_models.sh [extra options of scripts/make_cg_models.py sps]
# Env:    PYTHON=<repo>/.venv/bin/python   SPS_DIR=<repo>/../shared/data/sps/eval_t568
#         OUT=<repo>/data/sps-cg-models    ITERATIONS=20 (IBI)   JOBS=2 (production runs in parallel)
#         WORKDIR=<dir>  keep the work directory there; re-running with the same WORKDIR resumes
#                        (csg_inverse restarts from its last finished step, finished runs are reused)
#
# Requires: lmp (LAMMPS with MOLECULE), csg_stat + csg_inverse (VOTCA 2022.1), gmx (grompp only, to
#           write a CG .tpr for VOTCA), the project venv (MDAnalysis, numpy, scipy, matplotlib).
#           Debian/Ubuntu: apt-get install lammps votca gromacs
# Deterministic: fixed seeds (velocity create / fix langevin: 4242 for IBI, 4252/4262/4272 for A/B/C,
# Langevin = seed + 1), one thread per LAMMPS run, so a rerun on the same build gives the same files.
# Takes ~45 min on 2 cores (IBI ~15 min, productions ~25 min).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SPS_DIR=${SPS_DIR:-$REPO/../shared/data/sps/eval_t568}
OUT=${OUT:-$REPO/data/sps-cg-models}
ITERATIONS=${ITERATIONS:-20}
JOBS=${JOBS:-2}
WORKDIR=${WORKDIR:-}

for t in lmp csg_stat csg_inverse gmx; do
    command -v "$t" >/dev/null || { echo "error: '$t' not found; install with: apt-get install lammps votca gromacs" >&2; exit 1; }
done
[[ -x "$PYTHON" ]] || { echo "error: python '$PYTHON' not found (set PYTHON or create the venv)" >&2; exit 1; }
for f in cg.gro cg.xtc; do
    [[ -r "$SPS_DIR/$f" ]] || { echo "error: $SPS_DIR/$f not found (set SPS_DIR)" >&2; exit 1; }
done

export OMP_NUM_THREADS=1
START=$SECONDS
"$PYTHON" "$SCRIPT_DIR/make_cg_models.py" sps --sps-dir "$SPS_DIR" --out "$OUT" \
    --iterations "$ITERATIONS" --jobs "$JOBS" ${WORKDIR:+--workdir "$WORKDIR"} "$@"
echo "make_sps_cg_models.sh: done in $((SECONDS - START)) s -> $OUT"
