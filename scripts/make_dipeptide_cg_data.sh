#!/usr/bin/env bash
# make_dipeptide_cg_data.sh -- a 6-bead CG alanine dipeptide: force field by (iterative) Boltzmann
# inversion of the mapped 100 ns AA run, and a CG Langevin trajectory with it (OpenMM), for the
# generalization tests of temporally coherent trajectory backmapping (Stieffenhofer, PhD thesis, JGU Mainz 2022, ch. 8)
#
#   tests/data/dipeptide_cg/   committed (< 1 MB): cg.gro, cg.xtc = the first COMMIT_NS ns of the CG run
#                              (a frame every 1 ps), cg_system.xml (the CG force field, OpenMM XML),
#                              check.json (CG vs mapped AA), README.md
#   data/dipeptide-cg/         NOT committed (cache): the whole CG_NS ns run (cg.xtc, cg.gro), the mapped
#                              AA trajectory (mapped_aa.xtc), ff.npz (tables), fit.json, md.json,
#                              check.json, distributions.png, cg_system_cmap.xml, README.md
#
# Input: the 100 ns AA cache data/dipeptide/ (scripts/make_dipeptide_data.sh) and the mapping
# recipes/dipeptide/dipeptide.xml (6 beads CY N CA CB C NM, each exactly on its atom).
# Steps: backmap map (AA -> CG) -> Boltzmann inversion of every bonded distribution (bonds with r^2,
# angles with sin(theta) Jacobian; (phi, psi) as one 2-D table; an improper for the chirality of CA; a
# soft CY-NM wall), smoothed and extrapolated -> IBI iterations of IBI_NS ns CG runs -> the CG
# production run (Langevin, OpenMM Reference platform, seeded) -> checks (JSD of every distribution
# and of the (phi, psi) map, transition counts, two-state and grid-MSM timescales).
# Details: scripts/dipeptide_cg.py (helper) and the README it writes.
#
# Usage:  scripts/make_dipeptide_cg_data.sh            (from any working directory)
# Env:    CG_NS=100 (CG production, ns)  COMMIT_NS=2  DT=0.002 (ps)  FRICTION=1 (1/ps)  SEED=2025
#         IBI=4 (iterations after plain BI)  IBI_NS=10  ALPHA=0.8 (IBI damping)
#         AA_DIR=<repo>/data/dipeptide  DATA_DIR=<repo>/tests/data  CACHE_DIR=<repo>/data/dipeptide-cg
#         PYTHON=<repo>/.venv/bin/python  KEEP_WORK=1
#
# Requires: Python with openmm (8.x), MDAnalysis, numpy, scipy, matplotlib and the backmap package.
# Deterministic: OpenMM Reference platform (single thread, double precision), fixed seeds: a rerun on
# the same machine and versions gives identical files. Takes ~20 min on one free core (100 ns CG ~12 min).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
BACKMAP=$(dirname "$PYTHON")/backmap
[[ -x "$BACKMAP" ]] || BACKMAP=backmap
AA_DIR=${AA_DIR:-$REPO/data/dipeptide}
DATA_DIR=${DATA_DIR:-$REPO/tests/data}
CACHE_DIR=${CACHE_DIR:-$REPO/data/dipeptide-cg}
OUT=$DATA_DIR/dipeptide_cg
MAPPING=$REPO/recipes/dipeptide/dipeptide.xml
HELPER=$SCRIPT_DIR/dipeptide_cg.py

CG_NS=${CG_NS:-100}
COMMIT_NS=${COMMIT_NS:-2}
DT=${DT:-0.002}
FRICTION=${FRICTION:-1}
SEED=${SEED:-2025}
IBI=${IBI:-4}
IBI_NS=${IBI_NS:-10}
ALPHA=${ALPHA:-0.8}
TEMP=300
EVERY_PS=1
EQUIL_PS=100
COMMIT_FRAMES=$(awk -v n="$COMMIT_NS" -v e="$EVERY_PS" 'BEGIN { printf "%d", n * 1000 / e }')

export OMP_NUM_THREADS=1 OPENMM_CPU_THREADS=1
for f in traj.xtc topol.top README.md; do
    [[ -r "$AA_DIR/$f" ]] || { echo "error: $AA_DIR/$f missing: run scripts/make_dipeptide_data.sh first" >&2; exit 1; }
done
[[ -r "$MAPPING" ]] || { echo "error: $MAPPING missing" >&2; exit 1; }
"$PYTHON" -c "import openmm, MDAnalysis, scipy, matplotlib, backmap" 2>/dev/null ||
    { echo "error: $PYTHON lacks openmm / MDAnalysis / scipy / matplotlib / backmap" >&2; exit 1; }

source "$SCRIPT_DIR/lib/work.sh"
start_work make_dipeptide_cg_data
cd "$WORK"

log "mapping the AA run ($AA_DIR/traj.xtc) to 6 beads with backmap map"
T0=$SECONDS
run map.log "$BACKMAP" map --topology "$AA_DIR/topol.top" --traj "$AA_DIR/traj.xtc" --mapping "$MAPPING" --out mapped_aa.xtc
T_MAP=$((SECONDS - T0))

log "force field: Boltzmann inversion + $IBI IBI iterations of $IBI_NS ns"
T0=$SECONDS
"$PYTHON" "$HELPER" fit --mapped mapped_aa.xtc --topology "$AA_DIR/topol.top" --mapping "$MAPPING" --outdir ff \
    --ibi "$IBI" --ibi-ns "$IBI_NS" --alpha "$ALPHA" --dt "$DT" --friction "$FRICTION" --temperature "$TEMP" \
    --seed "$SEED" --every-ps "$EVERY_PS" 2>&1 | tee fit.log | grep -E "^(CMAP|iteration|wrote)" ||
    { echo "error: fit failed" >&2; tail -n 30 fit.log >&2; exit 1; }
[[ -s ff/ff.npz ]] || { echo "error: fit failed" >&2; tail -n 30 fit.log >&2; exit 1; }
T_FIT=$((SECONDS - T0))

log "CG production: ${CG_NS} ns, dt $DT ps, friction $FRICTION/ps, a frame every $EVERY_PS ps (seed $SEED)"
T0=$SECONDS
run md.log "$PYTHON" "$HELPER" md --ff ff/ff.npz --fit-json ff/fit.json --start mapped_aa.xtc --ns "$CG_NS" \
    --equil-ps "$EQUIL_PS" --dt "$DT" --friction "$FRICTION" --temperature "$TEMP" --seed "$SEED" \
    --every-ps "$EVERY_PS" --out-xtc cg.xtc --out-gro cg.gro --out-json md.json --progress 10000
T_MD=$((SECONDS - T0))

log "checks: CG vs mapped AA"
run check.log "$PYTHON" "$HELPER" check --ref mapped_aa.xtc --cg cg.xtc --out check.json --plot distributions.png

stage=$WORK/stage
mkdir -p "$stage"
run cut.log "$PYTHON" "$HELPER" cut --xtc cg.xtc --frames "$COMMIT_FRAMES" --out-xtc "$stage/cg.xtc"
cp cg.gro check.json ff/cg_system.xml "$stage/"
WALL=$((SECONDS - START))
run report.log "$PYTHON" "$HELPER" report --fit ff/fit.json --md md.json --check check.json --aa-readme "$AA_DIR/README.md" \
    --commit-ns "$COMMIT_NS" --commit-frames "$COMMIT_FRAMES" --cg-ns "$CG_NS" --xtc "$stage/cg.xtc" \
    --xml "$stage/cg_system.xml" --wall "$WALL" --t-map "$T_MAP" --t-fit "$T_FIT" --t-md "$T_MD" --out "$stage/README.md"

mkdir -p "$DATA_DIR" "$(dirname "$CACHE_DIR")"
cstage=$WORK/cache_stage
mkdir -p "$cstage"
cp cg.xtc cg.gro mapped_aa.xtc md.json check.json distributions.png ff/ff.npz ff/fit.json ff/cg_system.xml \
    ff/cg_system_cmap.xml commands.log fit.log md.log "$stage/README.md" "$cstage/"
for pair in "$stage:$OUT" "$cstage:$CACHE_DIR"; do
    src=${pair%%:*}; dst=${pair#*:}
    rm -rf "$dst.new"; mv "$src" "$dst.new"; rm -rf "$dst"; mv "$dst.new" "$dst"
done
log "done; wall time $((SECONDS - START)) s (map $T_MAP s, fit $T_FIT s, CG run $T_MD s)"
du -sh "$OUT" "$CACHE_DIR"
ls -l "$OUT"
