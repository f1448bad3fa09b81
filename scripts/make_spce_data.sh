#!/usr/bin/env bash
# make_spce_data.sh -- a ~39 000-atom SPC/E water box: the system on which training memory is measured
# (benchmarks/train_memory.py, docs/scale-out.md) and a polar liquid of our own.
#
#   data/spce/   NOT committed (cache; ~40 MB): topol.top (SPC/E of GROMACS' oplsaa.ff, rigid
#                by SETTLE), water.xml (VOTCA's spce tutorial mapping: one bead per molecule at the
#                mass centre), conf.gro (the start of production), aa.xtc (NFRAMES frames, EVERY_PS
#                apart), md.mdp (the production settings), energies.txt, README.md
#
# Force field and settings are those of VOTCA's csg-tutorials spce example (votca-tutorials,
# Apache-2.0): SPC/E, reaction field (eps_rf 80) and LJ cut at 1.2 nm with dispersion correction,
# stochastic dynamics at 300 K (tau_t 0.5 ps), 2 fs steps. The tutorial's box (2 180 molecules) is
# too small for the memory measurement, so the box is filled here with GROMACS' spc216 water:
#   1. gmx solvate into a 7.4 nm cube (13 064 molecules, 39 192 atoms, ~0.99 g/cm3);
#   2. steepest descent (EM_STEPS steps);
#   3. EQUIL_PS ps NPT at 1 bar (C-rescale, tau_p 2 ps; not saved): the solvated box is ~1 % too sparse;
#   4. PROD_PS = NFRAMES x EVERY_PS ps NVT, a frame (xtc, 0.001 nm) every EVERY_PS ps.
# The frames are close in time (0.5 ps): enough for memory and speed measurements and for local
# structure, correlated for statistics.
#
# The small box the tests use (tests/data/water, committed: 3 nm cube, 50 frames 2 ps apart, ~1 min):
#   BOX=3.0 NFRAMES=50 EVERY_PS=2 OUT_DIR=tests/data NAME=water scripts/make_spce_data.sh
#
# Usage:  scripts/make_spce_data.sh
# Env:    GMX=gmx  NT=2 (mdrun threads; -reprod results depend on it)  NFRAMES=110  EVERY_PS=0.5
#         EQUIL_PS=20  EM_STEPS=500  SEED=300  BOX=7.4 (nm, cube edge)  OUT_DIR=<repo>/data  NAME=spce
# Time:   30 min on 2 cores of an AMD EPYC (GROMACS 2022.5; 7.7 ns/day), 18 MB of output.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TUT=${VOTCA_SPCE_DIR:-/usr/share/votca/csg-tutorials/spce/atomistic}
GMX=${GMX:-gmx}
NT=${NT:-2}
NFRAMES=${NFRAMES:-110}
EVERY_PS=${EVERY_PS:-0.5}
EQUIL_PS=${EQUIL_PS:-20}
EM_STEPS=${EM_STEPS:-500}
SEED=${SEED:-300}
BOX=${BOX:-7.4}
OUT=$(realpath -m "${OUT_DIR:-$REPO/data}")/${NAME:-spce}
export GMX_MAXBACKUP=-1

[[ -r "$TUT/water.xml" ]] || { echo "error: $TUT/water.xml not found (Debian package votca-tutorials?)" >&2; exit 1; }
command -v "$GMX" >/dev/null || { echo "error: $GMX not found" >&2; exit 1; }
source "$SCRIPT_DIR/lib/work.sh"
start_work make_spce_data
cd "$WORK"

cat > topol.top <<TOP
; SPC/E water (GROMACS oplsaa.ff/spce.itp, rigid by SETTLE), made by scripts/make_spce_data.sh
#include "oplsaa.ff/forcefield.itp"
#include "oplsaa.ff/spce.itp"

[ system ]
SPC/E water, 300 K

[ molecules ]
TOP

mdp() {  # mdp NAME INTEGRATOR NSTEPS XTC_EVERY
    cat > "$1.mdp" <<MDP
integrator = $2
nsteps = $3
dt = 0.002
emtol = 500
nstxout = 0
nstvout = 0
nstfout = 0
nstlog = 5000
nstenergy = 500
nstxout-compressed = $4
compressed-x-precision = 1000
cutoff-scheme = Verlet
nstlist = 10
pbc = xyz
coulombtype = Reaction-Field
rcoulomb = 1.2
epsilon_rf = 80
vdw-type = Cut-off
rvdw = 1.2
DispCorr = EnerPres
tc-grps = System
tau_t = 0.5
ref_t = 300
ld-seed = $SEED
gen-vel = $([[ $1 == equil ]] && echo yes || echo no)
gen-temp = 300
gen-seed = $SEED
continuation = $([[ $1 == prod ]] && echo yes || echo no)
pcoupl = $([[ $1 == equil ]] && echo C-rescale || echo no)
tau_p = 2.0
ref_p = 1.0
compressibility = 4.5e-5
MDP
}

log "solvating a $BOX nm cube with spc216 water"
run solvate.log "$GMX" solvate -cs spc216.gro -box "$BOX" "$BOX" "$BOX" -o box.gro
N=$(awk 'NR == 2 {print $1 / 3}' box.gro)
printf 'SOL %d\n' "$N" >> topol.top
log "$N molecules; energy minimization ($EM_STEPS steps)"
mdp em steep "$EM_STEPS" 0
run grompp_em.log "$GMX" grompp -f em.mdp -c box.gro -p topol.top -o em.tpr -maxwarn 0
run mdrun_em.log "$GMX" mdrun -deffnm em -nt "$NT" -reprod
equil_steps=$(awk -v p="$EQUIL_PS" 'BEGIN {printf "%d", p / 0.002 + 0.5}')
log "NPT equilibration: $EQUIL_PS ps"
mdp equil sd "$equil_steps" 0
run grompp_equil.log "$GMX" grompp -f equil.mdp -c em.gro -p topol.top -o equil.tpr -maxwarn 0
run mdrun_equil.log "$GMX" mdrun -deffnm equil -nt "$NT" -reprod
every=$(awk -v p="$EVERY_PS" 'BEGIN {printf "%d", p / 0.002 + 0.5}')
prod_steps=$(( every * (NFRAMES - 1) ))
log "NVT production: $NFRAMES frames every $EVERY_PS ps ($prod_steps steps)"
mdp prod sd "$prod_steps" "$every"
run grompp_prod.log "$GMX" grompp -f prod.mdp -c equil.gro -t equil.cpt -p topol.top -o prod.tpr -maxwarn 0
run mdrun_prod.log "$GMX" mdrun -deffnm prod -nt "$NT" -reprod
gmx_energies prod.edr

mkdir -p "$OUT.tmp"
cp topol.top "$OUT.tmp/"
cp "$TUT/water.xml" "$OUT.tmp/"
cp prod.xtc "$OUT.tmp/aa.xtc"
cp equil.gro "$OUT.tmp/conf.gro"
sed -e 's/^nstxout-compressed.*/nstxout-compressed = 0/' -e 's/^continuation.*/continuation = no/' prod.mdp > "$OUT.tmp/md.mdp"
cp energies.txt "$OUT.tmp/"
cat > "$OUT.tmp/README.md" <<README
# SPC/E water, 300 K ($N molecules, $((N * 3)) atoms)

Made by \`scripts/make_spce_data.sh\` ($(date -u +%F), $((SECONDS - START)) s on $NT threads,
$("$GMX" --version 2>/dev/null | awk '/GROMACS version/ {print $3}')): $NFRAMES frames every $EVERY_PS ps after
$EQUIL_PS ps NPT equilibration (1 bar); SPC/E (oplsaa.ff/spce.itp), reaction field eps_rf 80, 1.2 nm cut-offs,
sd thermostat at 300 K. Mapping: VOTCA's spce tutorial (one bead per molecule, mass centre).

$(cat energies.txt)
README
publish "$OUT"
