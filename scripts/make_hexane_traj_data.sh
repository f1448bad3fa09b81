#!/usr/bin/env bash
# make_hexane_traj_data.sh -- liquid n-hexane trajectory with closely spaced frames (0.5 ps), for
# temporally coherent trajectory backmapping (Stieffenhofer, PhD thesis, JGU Mainz 2022, ch. 8)
#
#   tests/data/hexane_traj/   committed (< 5 MB): topol.top, hexane.xml, conf.gro, topol.tpr, grompp.mdp,
#                             traj.xtc = the first COMMIT_PS ps (a frame every 0.5 ps), README.md
#   data/hexane-traj/         NOT committed (cache): the whole PROD_PS ps trajectory + energies + mdp/logs
#
# The system is the one of tests/data/hexane (scripts/make_hexane_data.sh): 200 OPLS-AA n-hexane
# molecules (4000 atoms) in a cubic 3.543 nm box, 300 K.  Its last saved frame (t = 100 ps of
# tests/data/hexane/traj.trr, full precision) is the starting point: velocities are drawn afresh at
# 300 K (the committed trr has none; fixed gen-seed), EQUIL_PS ps of NVT re-thermalisation (not saved),
# then PROD_PS ps of NVT production with exactly the production settings of tests/data/hexane
# (1 fs, v-rescale tau-t 1 ps, PME + LJ 1.2 nm, dispersion correction, no constraints) but positions
# written every EVERY_STEPS steps.
#
# Usage:  scripts/make_hexane_traj_data.sh            (from any working directory)
# Env:    GMX=gmx  NT=1 (mdrun threads; -reprod results depend on it)  PROD_PS=200  COMMIT_PS=100
#         EQUIL_PS=20  EVERY_STEPS=500 (0.5 ps)  SEED=2016  PYTHON=<repo>/.venv/bin/python
#         DATA_DIR=<repo>/tests/data  CACHE_DIR=<repo>/data/hexane-traj ('' = no cache)  KEEP_WORK=1
#
# Requires: gmx (GROMACS 2022; tested with 2022.5-Debian), tests/data/hexane (make_hexane_data.sh),
# Python with MDAnalysis + numpy (for the displacement statistics in the README).
# Deterministic: gen-seed/ld-seed fixed, gmx mdrun -ntmpi 1 -ntomp NT -reprod: a rerun on the same
# build/hardware gives identical files.  ~13.5 ns/day on one core: 220 ps take ~25 min.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
GMX=${GMX:-gmx}
NT=${NT:-1}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
SRC=$REPO/tests/data/hexane
DATA_DIR=${DATA_DIR:-$REPO/tests/data}
CACHE_DIR=${CACHE_DIR-$REPO/data/hexane-traj}
OUT=$DATA_DIR/hexane_traj

SEED=${SEED:-2016}        # gen-seed (velocities) and ld-seed (v-rescale)
TEMP=300
EQUIL_PS=${EQUIL_PS:-20}
PROD_PS=${PROD_PS:-200}
COMMIT_PS=${COMMIT_PS:-100}
EVERY_STEPS=${EVERY_STEPS:-500}   # 1 fs steps
DT=0.001
EVERY_PS=$(awk -v n="$EVERY_STEPS" -v dt="$DT" 'BEGIN { printf "%g", n * dt }')
MAX_MB=5

export GMX_MAXBACKUP=-1 OMP_NUM_THREADS=$NT
command -v "$GMX" >/dev/null || { echo "error: $GMX not found" >&2; exit 1; }
for f in topol.top topol.tpr traj.trr hexane.xml grompp.mdp; do
    [[ -r "$SRC/$f" ]] || { echo "error: $SRC/$f missing (run scripts/make_hexane_data.sh)" >&2; exit 1; }
done
"$PYTHON" -c "import MDAnalysis, numpy" 2>/dev/null || { echo "error: $PYTHON lacks MDAnalysis/numpy" >&2; exit 1; }
[[ "$COMMIT_PS" -le "$PROD_PS" ]] || { echo "error: COMMIT_PS > PROD_PS" >&2; exit 1; }

source "$SCRIPT_DIR/lib/work.sh"
start_work make_hexane_traj_data
cd "$WORK"
cp "$SRC/topol.top" "$SRC/hexane.xml" "$SRC/topol.tpr" .
cp "$SRC/traj.trr" start.trr

# interaction settings: exactly those of tests/data/hexane/grompp.mdp (from "; interactions" on)
awk '/^; interactions/ {p = 1} p' "$SRC/grompp.mdp" >interactions.mdp
grep -q "^rcoulomb *= *1.2" interactions.mdp || { echo "error: unexpected $SRC/grompp.mdp" >&2; exit 1; }

cat >equil.mdp <<EOF
; NVT re-thermalisation, ${EQUIL_PS} ps, 1 fs, ${TEMP} K: new velocities (the start frame has none)
integrator               = md
dt                       = ${DT}
tinit                    = 0
nsteps                   = $((EQUIL_PS * 1000))
continuation             = no
gen-vel                  = yes
gen-temp                 = ${TEMP}
gen-seed                 = ${SEED}
comm-mode                = Linear
nstcomm                  = 100
nstxout                  = 0
nstvout                  = 0
nstfout                  = 0
nstxout-compressed       = 0
nstlog                   = 10000
nstenergy                = 500
nstcalcenergy            = 100
tcoupl                   = v-rescale
tc-grps                  = System
tau-t                    = 0.1
ref-t                    = ${TEMP}
pcoupl                   = no
ld-seed                  = ${SEED}
EOF
cat interactions.mdp >>equil.mdp

cat >grompp.mdp <<EOF
; NVT production, ${PROD_PS} ps, 1 fs, ${TEMP} K (v-rescale, tau-t 1 ps as tests/data/hexane),
; continued from the re-thermalisation (positions and velocities from its checkpoint);
; positions every ${EVERY_STEPS} steps = ${EVERY_PS} ps
integrator               = md
dt                       = ${DT}
tinit                    = 0
nsteps                   = $((PROD_PS * 1000))
continuation             = yes
gen-vel                  = no
comm-mode                = Linear
nstcomm                  = 100
nstxout                  = 0
nstvout                  = 0
nstfout                  = 0
nstxout-compressed       = ${EVERY_STEPS}
compressed-x-precision   = 1000
nstlog                   = 10000
nstenergy                = 500
nstcalcenergy            = 100
tcoupl                   = v-rescale
tc-grps                  = System
tau-t                    = 1.0
ref-t                    = ${TEMP}
pcoupl                   = no
ld-seed                  = ${SEED}
EOF
cat interactions.mdp >>grompp.mdp

mdrun() { local d=$1; shift; run "$d.mdrun.log" "$GMX" mdrun -ntmpi 1 -ntomp "$NT" -pin off -reprod -deffnm "$d" "$@"; }

log "re-thermalisation: ${EQUIL_PS} ps NVT from t = 100 ps of tests/data/hexane/traj.trr (gen-seed $SEED)"
run grompp_equil.log "$GMX" grompp -f equil.mdp -c topol.tpr -t start.trr -p topol.top -o equil.tpr \
    -po equil.mdout.mdp -maxwarn 0
grep -q "Using frame at t = 100 ps" grompp_equil.log || { echo "error: start frame is not t = 100 ps" >&2; exit 1; }
mdrun equil
T_MD=$SECONDS
log "production: ${PROD_PS} ps NVT, a frame every ${EVERY_PS} ps ($NT thread(s), -reprod)"
run grompp_prod.log "$GMX" grompp -f grompp.mdp -c equil.gro -t equil.cpt -p topol.top -o prod.tpr \
    -po prod.mdout.mdp -maxwarn 0
cp equil.gro conf.gro
mdrun prod
T_MD=$((SECONDS - T_MD))
mv prod.xtc traj_full.xtc
cp prod.tpr topol.tpr   # the production run input replaces the copied one (same topology, new mdp)

log "cutting the first ${COMMIT_PS} ps and checking"
printf '0\n' | "$GMX" trjconv -f traj_full.xtc -s prod.tpr -e "$COMMIT_PS" -o traj.xtc >trjconv.log 2>&1 ||
    { tail -n 20 trjconv.log >&2; exit 1; }
run check_full.log "$GMX" check -f traj_full.xtc
run check_commit.log "$GMX" check -f traj.xtc
NF_FULL=$(awk '/^Coords/ {print $2}' check_full.log)
NF_COMMIT=$(awk '/^Coords/ {print $2}' check_commit.log)
[[ "$NF_FULL" == $((PROD_PS * 1000 / EVERY_STEPS + 1)) ]] || { echo "error: $NF_FULL frames in the full xtc" >&2; exit 1; }
[[ "$NF_COMMIT" == $((COMMIT_PS * 1000 / EVERY_STEPS + 1)) ]] || { echo "error: $NF_COMMIT committed frames" >&2; exit 1; }
XTC_KB=$(( ($(stat -c %s traj.xtc) + 512) / 1024 ))
[[ "$XTC_KB" -le $((MAX_MB * 1024 - 600)) ]] || { echo "error: committed traj.xtc is $XTC_KB kB; lower COMMIT_PS" >&2; exit 1; }

GMX_VERSION=$("$GMX" --version 2>/dev/null | awk -F': *' '/^GROMACS version/ {print $2}')
EQ_T=$(printf 'Temperature\n' | "$GMX" energy -f equil.edr -b "$((EQUIL_PS / 2))" 2>/dev/null | awk '/^Temperature/ {printf "%.1f", $2}')
PROD_T=$(printf 'Temperature\n' | "$GMX" energy -f prod.edr 2>/dev/null | awk '/^Temperature/ {printf "%.1f ± %.1f", $2, $3}')
PROD_P=$(printf 'Pressure\n' | "$GMX" energy -f prod.edr 2>/dev/null | awk '/^Pressure/ {printf "%.0f (GROMACS error estimate %.0f)", $2, $4}')
PROD_E=$(printf 'Potential\n' | "$GMX" energy -f prod.edr 2>/dev/null | awk '/^Potential/ {printf "%.0f ± %.0f", $2, $3}')
NS_DAY=$(awk '/^Performance:/ {printf "%.1f", $2}' prod.log)
BOX=$(tail -n 1 conf.gro | awk '{print $1}')

# consecutive-frame displacements (atoms and mass-weighted CG beads of hexane.xml: A1 = C1-C2, B = C3-C4,
# A2 = C5-C6 with their hydrogens), minimum image, over the committed part
"$PYTHON" - conf.gro traj.xtc >disp.txt <<'PY'
import sys
import numpy as np
import MDAnalysis as mda

u = mda.Universe(sys.argv[1], sys.argv[2])
n = u.atoms.n_atoms
mol = np.arange(n) // 20
# residues in a molecule (tests/data/hexane/conf.gro): CHL C H1-3 | CH2 C H1-2 (x4) | CHR C H1-3;
# hexane.xml: A1 = residues 1-2, B = 3-4, A2 = 5-6, weights C 12, H 1
res_of = np.repeat(np.arange(6), [4, 3, 3, 3, 3, 4])
bead = res_of[np.arange(n) % 20] // 2 + 3 * mol
mass = np.where(np.char.startswith(u.atoms.names.astype(str), "C"), 12.0, 1.0)
X = np.stack([ts.positions.copy() / 10 for ts in u.trajectory])  # nm
L = u.trajectory[0].dimensions[0] / 10
dx = np.diff(X, axis=0)
dx -= L * np.round(dx / L)
path = np.concatenate([X[:1], X[:1] + np.cumsum(dx, axis=0)])  # unwrapped atoms
nb = bead.max() + 1
W = np.zeros((nb, n))
W[bead, np.arange(n)] = mass
W /= W.sum(1, keepdims=True)
B = np.einsum("ba,tai->tbi", W, path)
da = np.linalg.norm(np.diff(path, axis=0), axis=-1)
db = np.linalg.norm(np.diff(B, axis=0), axis=-1)
dt = u.trajectory[1].time - u.trajectory[0].time
print(f"{dt:g} {np.sqrt((da ** 2).mean()):.3f} {np.percentile(da, 99):.3f} {da.max():.3f} "
      f"{np.sqrt((db ** 2).mean()):.3f} {np.percentile(db, 99):.3f} {db.max():.3f}")
PY
read -r DISP_DT A_RMS A_P99 A_MAX B_RMS B_P99 B_MAX <disp.txt
[[ "$DISP_DT" == "$EVERY_PS" ]] || { echo "error: frame spacing $DISP_DT ps, expected $EVERY_PS" >&2; exit 1; }
WALL=$((SECONDS - START))

stage=$WORK/stage
mkdir -p "$stage"
cp topol.top hexane.xml conf.gro topol.tpr grompp.mdp traj.xtc "$stage/"
cat >"$stage/README.md" <<EOF
# hexane_traj — liquid n-hexane, OPLS-AA, ${TEMP} K, a frame every ${EVERY_PS} ps

Generated by \`scripts/make_hexane_traj_data.sh\` (GROMACS ${GMX_VERSION}, \`gmx mdrun -ntmpi 1 -ntomp ${NT} -reprod\`).
Do not edit by hand; rerun the script instead. Made for temporally coherent trajectory backmapping
(Stieffenhofer, PhD thesis, JGU Mainz 2022, ch. 8), where successive frames must be close in time.

## System and provenance

The system of \`tests/data/hexane\` (see its README: VOTCA csg-tutorials hexane, Apache-2.0, carved to
200 molecules; OPLS-AA from the GROMACS share directory): 200 n-hexane molecules, 4000 atoms, cubic box
${BOX} nm (NVT, fixed). \`topol.top\` and \`hexane.xml\` are copies of that set's files.

## Steps

1. Start: the last frame of \`tests/data/hexane/traj.trr\` (t = 100 ps of that production run,
   full-precision positions, \`grompp -t\`). That file has no velocities, so they were drawn from the
   Maxwell distribution at ${TEMP} K (gen-seed ${SEED}).
2. Re-thermalisation: ${EQUIL_PS} ps NVT, 1 fs, v-rescale ${TEMP} K with tau-t 0.1 ps (ld-seed ${SEED}),
   not saved; mean temperature over its second half ${EQ_T} K.
3. Production: ${PROD_PS} ps NVT continued from its checkpoint (\`grompp.mdp\`), with the
   interaction and thermostat settings of \`tests/data/hexane/grompp.mdp\` (1 fs, v-rescale ${TEMP} K tau-t
   1 ps, PME + plain LJ cut-off 1.2 nm, dispersion correction, Verlet lists, no constraints,
   COM motion removal every 100 steps); positions written every ${EVERY_STEPS} steps (${EVERY_PS} ps),
   xtc precision 0.001 nm.

Mean temperature ${PROD_T} K, potential energy ${PROD_E} kJ/mol, pressure ${PROD_P} bar
(over the ${PROD_PS} ps). Speed ${NS_DAY} ns/day on ${NT} thread(s): production ${T_MD} s, whole script ${WALL} s.

## Files

| file | content |
|---|---|
| \`traj.xtc\` | the first ${COMMIT_PS} ps of the production: ${NF_COMMIT} frames, t = 0, ${EVERY_PS}, …, ${COMMIT_PS} ps (${XTC_KB} kB); atoms put in the box as GROMACS writes them (molecules split across faces) |
| \`conf.gro\` | production start (= frame 0, molecules whole), with velocities |
| \`topol.tpr\` | production run input (MDAnalysis and VOTCA read it as topology) |
| \`grompp.mdp\` | production run parameters |
| \`topol.top\`, \`hexane.xml\` | copies of \`tests/data/hexane/\` (topology with \`#include "oplsaa.ff/forcefield.itp"\`; VOTCA 3-bead mapping) |

The whole ${PROD_PS} ps (${NF_FULL} frames) is written to the uncommitted cache \`data/hexane-traj/traj.xtc\`
(CACHE_DIR; also \`prod.edr\`, \`equil.mdp\`, logs); the committed frames are its first ${NF_COMMIT}.

## How far things move between frames (committed part, minimum-image unwrapped)

- atoms: RMS displacement between successive frames ${A_RMS} nm (99th percentile ${A_P99}, max ${A_MAX} nm);
- CG beads (mass-weighted centres of the \`hexane.xml\` beads A1/B/A2): RMS ${B_RMS} nm
  (99th percentile ${B_P99}, max ${B_MAX} nm).
EOF

mkdir -p "$DATA_DIR"
rm -rf "$OUT.new"; mv "$stage" "$OUT.new"; rm -rf "$OUT"; mv "$OUT.new" "$OUT"
if [[ -n "$CACHE_DIR" ]]; then
    mkdir -p "$(dirname "$CACHE_DIR")"
    cstage=$WORK/cache_stage
    mkdir -p "$cstage"
    cp traj_full.xtc "$cstage/traj.xtc"
    cp topol.top hexane.xml conf.gro topol.tpr grompp.mdp equil.mdp prod.edr equil.edr prod.log equil.log \
        commands.log "$OUT/README.md" "$cstage/"
    rm -rf "$CACHE_DIR.new"; mv "$cstage" "$CACHE_DIR.new"; rm -rf "$CACHE_DIR"; mv "$CACHE_DIR.new" "$CACHE_DIR"
fi
log "done; wall time $((SECONDS - START)) s (production $T_MD s)"
du -sh "$OUT" ${CACHE_DIR:+"$CACHE_DIR"}
