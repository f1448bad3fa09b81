#!/usr/bin/env bash
# make_methanol_data.sh -- liquid methanol, 300 K (1 000 molecules, 6 000 atoms): the second polar liquid
# of our own (tests/data/methanol, committed; docs/polar.md).
#
#   OUT_DIR/methanol/  topol.top + methanol_opls.itp (OPLS-AA, flexible bonds), methanol.xml (VOTCA's
#                      tutorial mapping: one bead per molecule at the mass centre), conf.gro (the start of
#                      production), aa.xtc (NFRAMES frames, EVERY_PS apart), md.mdp (the production
#                      settings), energies.txt, README.md
#
# Force field, start configuration and non-bonded settings are those of VOTCA's csg-tutorials
# methanol example (votca-tutorials, Apache-2.0): OPLS-AA, PME and LJ cut at 1.22 nm with dispersion
# correction, 1 fs steps. The tutorial's Nose-Hoover thermostat is replaced by stochastic dynamics
# (tau_t 1 ps) so that a re-run gives the same frames:
#   1. EQUIL_PS ps NVT at 300 K from the tutorial's conf.gro (velocities drawn; not saved);
#   2. PROD_PS = NFRAMES x EVERY_PS ps NVT, a frame (xtc, 0.001 nm) every EVERY_PS ps.
#
# Usage:  scripts/make_methanol_data.sh
# Env:    GMX=gmx  NT=2 (mdrun threads; -reprod results depend on it)  NFRAMES=50  EVERY_PS=2
#         EQUIL_PS=20  SEED=300  OUT_DIR=<repo>/tests/data
# Time:   see the README.md it writes.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TUT=${VOTCA_METHANOL_DIR:-/usr/share/votca/csg-tutorials/methanol/atomistic}
GMX=${GMX:-gmx}
NT=${NT:-2}
NFRAMES=${NFRAMES:-50}
EVERY_PS=${EVERY_PS:-2}
EQUIL_PS=${EQUIL_PS:-20}
SEED=${SEED:-300}
OUT=$(realpath -m "${OUT_DIR:-$REPO/tests/data}")/methanol
export GMX_MAXBACKUP=-1

[[ -r "$TUT/methanol.xml" ]] || { echo "error: $TUT/methanol.xml not found (Debian package votca-tutorials?)" >&2; exit 1; }
command -v "$GMX" >/dev/null || { echo "error: $GMX not found" >&2; exit 1; }
source "$SCRIPT_DIR/lib/work.sh"
start_work make_methanol_data
cd "$WORK"
cp "$TUT/methanol_opls.itp" "$TUT/conf.gro" "$TUT/methanol.xml" .
cat > topol.top <<TOP
; liquid methanol, OPLS-AA (VOTCA csg-tutorials methanol), made by scripts/make_methanol_data.sh
#include "oplsaa.ff/forcefield.itp"
#include "methanol_opls.itp"

[ system ]
Methanol, 300 K

[ molecules ]
methanol 1000
TOP

mdp() {  # mdp NAME NSTEPS XTC_EVERY
    cat > "$1.mdp" <<MDP
integrator = sd
nsteps = $2
dt = 0.001
nstxout = 0
nstvout = 0
nstfout = 0
nstlog = 10000
nstenergy = 500
nstxout-compressed = $3
compressed-x-precision = 1000
cutoff-scheme = Verlet
nstlist = 10
pbc = xyz
coulombtype = PME
rcoulomb = 1.22
fourierspacing = 0.12
pme_order = 4
ewald_rtol = 1e-05
vdw-type = Cut-off
rvdw = 1.22
DispCorr = EnerPres
constraints = none
tc-grps = System
tau_t = 1.0
ref_t = 300
ld-seed = $SEED
gen-vel = $([[ $1 == equil ]] && echo yes || echo no)
gen-temp = 300
gen-seed = $SEED
continuation = $([[ $1 == prod ]] && echo yes || echo no)
pcoupl = no
MDP
}

equil_steps=$(awk -v p="$EQUIL_PS" 'BEGIN {printf "%d", p / 0.001 + 0.5}')
log "NVT equilibration: $EQUIL_PS ps"
mdp equil "$equil_steps" 0
run grompp_equil.log "$GMX" grompp -f equil.mdp -c conf.gro -p topol.top -o equil.tpr -maxwarn 0
run mdrun_equil.log "$GMX" mdrun -deffnm equil -nt "$NT" -reprod
every=$(awk -v p="$EVERY_PS" 'BEGIN {printf "%d", p / 0.001 + 0.5}')
prod_steps=$(( every * (NFRAMES - 1) ))
log "NVT production: $NFRAMES frames every $EVERY_PS ps ($prod_steps steps)"
mdp prod "$prod_steps" "$every"
run grompp_prod.log "$GMX" grompp -f prod.mdp -c equil.gro -t equil.cpt -p topol.top -o prod.tpr -maxwarn 0
run mdrun_prod.log "$GMX" mdrun -deffnm prod -nt "$NT" -reprod
gmx_energies prod.edr

mkdir -p "$OUT.tmp"
cp topol.top methanol_opls.itp methanol.xml "$OUT.tmp/"
cp prod.xtc "$OUT.tmp/aa.xtc"
cp equil.gro "$OUT.tmp/conf.gro"
sed -e 's/^nstxout-compressed.*/nstxout-compressed = 0/' -e 's/^continuation.*/continuation = no/' prod.mdp > "$OUT.tmp/md.mdp"
cp energies.txt "$OUT.tmp/"
cat > "$OUT.tmp/README.md" <<README
# Liquid methanol, 300 K (1 000 molecules, 6 000 atoms)

Made by \`scripts/make_methanol_data.sh\` ($(date -u +%F), $((SECONDS - START)) s on $NT threads,
$("$GMX" --version 2>/dev/null | awk '/GROMACS version/ {print $3}')): $NFRAMES frames every $EVERY_PS ps after
$EQUIL_PS ps NVT equilibration from VOTCA's csg-tutorials methanol conf.gro; OPLS-AA (flexible), PME and
LJ at 1.22 nm, dispersion correction, sd thermostat at 300 K, 1 fs steps. Mapping: VOTCA's tutorial (one
bead per molecule, mass centre).

$(cat energies.txt)
README
publish "$OUT"
