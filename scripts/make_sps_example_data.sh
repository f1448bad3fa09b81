#!/usr/bin/env bash
# make_sps_example_data.sh -- a small sPS CG example set made by this project's own simulation:
#
#   tests/data/sps/   committed (< 100 kB): cg.xtc (4 CG frames, 36 chains x 20 beads),
#                     cg.gro (the first of them, with bead and residue names), README.md
#
# Only CG data is committed: no AA coordinates and no topology (DeepBackmap's sPS files have no
# license).  The steps:
#   1. scripts/make_sps_topology.py writes our own Mueller-Plathe sPS topology (36 x PS1, 10-mers)
#      into a scratch folder and checks it term by term against ../shared/data/sps/top/topol.top;
#   2. scripts/make_sps_temperature_data.sh 568 runs GROMACS with it (TOP=that folder): from DBM's
#      568 K evaluation structure, ANNEAL_PS ps NPT "annealing" 568 -> 568 K, EQUIL_PS ps NPT, then
#      PROD_PS ps NPT production with a frame every EVERY_PS ps (all bonds constrained, reaction field,
#      2 fs; see that script), mapped with `backmap map` and recipes/sps/sps.xml;
#   3. its cg.xtc (PROD_PS / EVERY_PS frames) is copied here, the first frame is mapped again from the
#      AA .gro to cg.gro (bead names B1 S1 B2 S2 ... S10 per chain, the order of recipes/sps/*.xml).
# To backmap it, write the topology first (it is not committed):
#   python scripts/make_sps_topology.py --out /tmp/sps-top
#   backmap apply --model models/sps-equivariant --cg tests/data/sps/cg.gro --traj tests/data/sps/cg.xtc \
#       --topology /tmp/sps-top/topol.top --mapping recipes/sps/sps-rings-first.xml --out /tmp/sps.xtc
#
# Usage:  scripts/make_sps_example_data.sh         (from any working directory)
# Env:    GMX=gmx  NT=1 (mdrun threads; -reprod results depend on it)  ANNEAL_PS=10  EQUIL_PS=20
#         PROD_PS=40  EVERY_PS=10  T=568  PYTHON=<repo>/.venv/bin/python  SPS=<repo>/../shared/data/sps
#         DATA_DIR=<repo>/tests/data  KEEP_WORK=1
# Requires: gmx (GROMACS 2022), the venv (backmap, parmed, MDAnalysis), ../shared/data/sps (the start
# structure eval_t568/aa.gro and, for the check, top/topol.top).
# Deterministic: the topology is; the MD is with the same GROMACS build, hardware and NT.
# Cost: ~70 ps of MD, a few minutes on one core.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
GMX=${GMX:-gmx}
NT=${NT:-1}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
SPS=${SPS:-$REPO/../shared/data/sps}
DATA_DIR=${DATA_DIR:-$REPO/tests/data}
ANNEAL_PS=${ANNEAL_PS:-10}
EQUIL_PS=${EQUIL_PS:-20}
PROD_PS=${PROD_PS:-40}
EVERY_PS=${EVERY_PS:-10}
T=${T:-568}
OUT=$DATA_DIR/sps
BACKMAP=$REPO/.venv/bin/backmap

command -v "$GMX" >/dev/null || { echo "error: $GMX not found (bash scripts/system-deps.sh)" >&2; exit 1; }
[[ -x "$BACKMAP" ]] || { echo "error: $BACKMAP missing (bash scripts/setup.sh)" >&2; exit 1; }
[[ -r "$SPS/eval_t568/aa.gro" ]] || { echo "error: $SPS/eval_t568/aa.gro missing (the shared sPS data)" >&2; exit 1; }

source "$SCRIPT_DIR/lib/work.sh"
start_work make_sps_example
cd "$WORK"

log "sPS example: topology (scripts/make_sps_topology.py)"
check_args=()
[[ -r "$SPS/top/topol.top" ]] && check_args=(--check "$SPS/top/topol.top")
run topology.log "$PYTHON" "$SCRIPT_DIR/make_sps_topology.py" --out "$WORK/top" ${check_args[@]+"${check_args[@]}"}
check_json=$(grep '^{' topology.log || true)

log "sPS example: MD at ${T} K (scripts/make_sps_temperature_data.sh; ${ANNEAL_PS} + ${EQUIL_PS} + ${PROD_PS} ps)"
md_start=$SECONDS
run md.log env TOP="$WORK/top" ANNEAL_PS="$ANNEAL_PS" EQUIL_PS="$EQUIL_PS" PROD_PS="$PROD_PS" \
    EVERY_PS="$EVERY_PS" OUT_DIR="$WORK" GMX="$GMX" NT="$NT" PYTHON="$PYTHON" SPS="$SPS" \
    bash "$SCRIPT_DIR/make_sps_temperature_data.sh" "$T"
md_s=$((SECONDS - md_start))
MD=$WORK/sps-T$T

log "sPS example: CG frames"
mkdir -p "$OUT.tmp"
cp "$MD/cg.xtc" "$OUT.tmp/cg.xtc"
run map_gro.log "$BACKMAP" map --topology "$WORK/top/topol.top" --traj "$MD/aa.gro" \
    --mapping "$REPO/recipes/sps/sps.xml" --out "$OUT.tmp/cg.gro"
# the frames' summary, and cg.gro == the first frame of cg.xtc (to the files' precision)
"$PYTHON" - "$OUT.tmp/cg.gro" "$OUT.tmp/cg.xtc" >summary.txt <<'EOF'
import sys, warnings
import numpy as np
warnings.simplefilter("ignore")
import MDAnalysis as mda
gro, xtc = sys.argv[1:]
u = mda.Universe(gro, xtc)
first = mda.Universe(gro).atoms.positions
times, dev = [], 0.0
for ts in u.trajectory:
    times.append(ts.time)
    if ts.frame == 0:
        dev = float(np.abs(ts.positions - first).max()) / 10
if dev > 0.002:
    sys.exit(f"cg.gro differs from cg.xtc frame 0 by {dev:.4f} nm")
u.trajectory[0]
names = list(u.atoms.names[:20])
print(f"n_frames={len(times)}")
print(f"times={' '.join(f'{t:g}' for t in times)}")
print(f"n_beads={u.atoms.n_atoms}")
print(f"n_chains={u.atoms.n_residues}")
print(f"bead_names={' '.join(names)}")
print(f"box={' '.join(f'{x / 10:.4f}' for x in u.dimensions[:3])}")
print(f"angles={' '.join(f'{x:.2f}' for x in u.dimensions[3:])}")
print(f"max_dev_gro_xtc_nm={dev:.4f}")
EOF
rm -f "$OUT.tmp"/.*_offsets.*  # MDAnalysis's cache of the xtc's frame offsets
get() { awk -F= -v k="$1" '$1 == k { sub(/^[^=]*=/, ""); print }' summary.txt; }
gmx_version=$("$GMX" --version 2>/dev/null | awk '/GROMACS version/ {print $3}')
speed=$(awk '/^- Production speed/ {print $4}' "$MD/README.md")

cat >"$OUT.tmp/README.md" <<EOF
# sps — a small CG example set of syndiotactic polystyrene (sPS) at ${T} K

Generated by \`scripts/make_sps_example_data.sh\` (GROMACS ${gmx_version}, \`gmx mdrun -ntmpi 1 -ntomp ${NT} -reprod\`).
Do not edit by hand; rerun the script instead.  Only CG data of this project's own simulation is
here: no AA coordinates and no topology.

## How it was made

1. Topology: \`python scripts/make_sps_topology.py --out <work>/top\` writes 36 chains PS1
   (10 styrene units, 162 atoms each) with the Mueller-Plathe force field (Macromolecules 29, 4782
   (1996)); checked term by term against DeepBackmap's sPS topology:
   \`${check_json:-(reference not available: not checked)}\`
2. MD: \`TOP=<work>/top ANNEAL_PS=${ANNEAL_PS} EQUIL_PS=${EQUIL_PS} PROD_PS=${PROD_PS} EVERY_PS=${EVERY_PS} OUT_DIR=<work> NT=${NT} bash scripts/make_sps_temperature_data.sh ${T}\`:
   start DBM's 568 K evaluation structure (shared/data/sps/eval_t568/aa.gro, with velocities);
   all bonds constrained (LINCS), reaction field eps_rf 2.5, 1.0 nm cut-offs, dispersion
   correction, 2 fs steps; ${ANNEAL_PS} ps NPT annealing 568 -> ${T} K and ${EQUIL_PS} ps NPT at ${T} K
   (v-rescale 0.2 ps, Berendsen anisotropic 2 ps), then ${PROD_PS} ps NPT (v-rescale, Parrinello-Rahman
   anisotropic 10 ps), a frame every ${EVERY_PS} ps; ld-seed 568.  Production speed ${speed} ns/day;
   the MD took ${md_s} s, the whole script $((SECONDS - START)) s.
3. CG: the production frames (without t = 0) mapped by \`backmap map\` with recipes/sps/sps.xml
   (2 beads per monomer, B = backbone, S = phenyl; DeepBackmap's CG mapping).

Averages over the production (\`gmx energy\`):

\`\`\`
$(grep -v '^#' "$MD/energies.txt" | awk '$1 == "prod"')
\`\`\`

## Files

| file | content |
|---|---|
| \`cg.xtc\` | $(get n_frames) CG frames, t = $(get times) ps; $(get n_beads) beads ($(get n_chains) chains x 20), xtc precision 0.001 nm |
| \`cg.gro\` | the first frame (\`backmap map\` of that frame's AA .gro; $(get max_dev_gro_xtc_nm) nm from cg.xtc frame 0), bead names per chain: $(get bead_names); residue name PS (the mapping's molecule name) |

Box $(get box) nm, angles $(get angles) deg (triclinic, from DBM's start structure).  Bead order
is the one of recipes/sps/sps.xml, sps-rings-first.xml and sps-interleaved.xml (they differ only in
the placement order), and of DeepBackmap's eval_t568/cg.gro.

To backmap (the AA topology is written, not stored):

\`\`\`
python scripts/make_sps_topology.py --out /tmp/sps-top
backmap apply --model models/sps-equivariant --cg tests/data/sps/cg.gro --traj tests/data/sps/cg.xtc \\
    --topology /tmp/sps-top/topol.top --mapping recipes/sps/sps-rings-first.xml --out /tmp/sps.xtc
\`\`\`
EOF
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "sPS example: written to $OUT ($(du -sh "$OUT" | cut -f1))"
cd "$REPO"
