#!/usr/bin/env bash
# make_sps_crystal_data.sh -- an ordered (crystal-like) sPS state at 300 K: reference AA frames and their
# CG mapping, a phase no shipped model was trained on (EVALUATION.md: "on data the generator was not
# trained on (other temperatures and phases)"; the melt at other temperatures is
# scripts/make_sps_temperature_data.sh, whose conventions this script follows).
#
#   data/sps-crystal-T<T>/ NOT committed (cache; ~7 MB): topol.top + the .itp files beside it that it
#                       #includes (from TOP, default ../shared/data/sps/top: PS1.itp),
#                       aa.xtc (production frames), aa.gro (first of them), cg.xtc (backmap map with
#                       recipes/sps/sps.xml), em/nvt/equil/prod .mdp, md.mdp (the production settings
#                       with frame output off: for evaluate and the refiners), energies.txt, README.md
#
# The start is built, not simulated (scripts/build_sps_crystal.py build; its docstring has the
# details): 36 PS1 chains (10 monomers, end groups H), each an all-trans (TTTT) planar zigzag with the
# phenyls alternating sides (syndiotactic, the stereocentres' signs as in the shipped melt), as in
# the alpha and beta crystal forms (chain repeat 0.51 nm per two monomers); the chains parallel to z
# and in register, on a centred rectangular 6 x 6 lattice (the densest of a few simple packings
# without overlaps, found by a grid search), stacked end to end along z. No random numbers: the same
# start every run. The force field and interactions are those of the temperature script: the shipped
# Mueller-Plathe topology (../shared/data/sps/top, or TOP), every bond constrained, reaction field
# eps_rf 2.5, 1.0 nm cut-offs, dispersion correction:
#   1. energy minimisation (steepest descent) of the built start;
#   2. NVT_PS ps NVT at T (300 K) with 1 fs steps, velocities drawn at T (gen-seed SEED), v-rescale 0.2 ps;
#   3. EQUIL_PS ps NPT at T, 2 fs, Berendsen anisotropic 2 ps (the box relaxes without swings; not saved);
#   4. PROD_PS ps NPT at T, v-rescale + C-rescale semi-isotropic (tau_p 5 ps: x and y scaled together,
#      z apart), a frame every EVERY_PS ps. Not Parrinello-Rahman anisotropic as in the temperature
#      script: on this crystal its undamped box oscillation grows (tried with tau_p 10 ps: the box's y
#      length swung between 4.75 and 6.37 nm within 200 ps, density 946-1123 kg/m^3, the lattice
#      stretched with it), and GROMACS 2022's C-rescale (correct NPT fluctuations, no oscillation)
#      does not do anisotropic coupling; semi-isotropic keeps the x/y aspect the Berendsen
#      equilibration found and lets the chain axis relax on its own.
# T = 300 K is below sPS's glass transition (~373 K) and far below its melting point (~543 K), so the
# order survives: the README records the fraction of trans backbone dihedrals, the chains' alignment
# with z, the lateral (lattice) order and the density of the production, next to the same numbers for
# DBM's 568 K melt (scripts/build_sps_crystal.py order). Note that the melt is itself oriented: its
# chains are extended along z, end to end across the box's z length (2.75 nm), about 77 % of their
# backbone dihedrals trans; what sets the crystal apart is all-trans chains on a lattice.
#
# Usage:  scripts/make_sps_crystal_data.sh
# Env:    GMX=gmx  NT=1 (mdrun threads; -reprod results depend on it)  T=300  NVT_PS=20  EQUIL_PS=100
#         PROD_PS=200  EVERY_PS=5  SEED=300  PYTHON=<repo>/.venv/bin/python  OUT_DIR=<repo>/data
#         KEEP_WORK=1  TOP=<SPS>/top (a folder with topol.top and PS1.itp; the *.itp files beside it
#         that topol.top #includes are copied with it)
# Deterministic: the start is pure geometry, gen-seed and ld-seed fixed, mdrun -ntmpi 1 -ntomp NT
# -reprod (same build and hardware: same files).
# Cost: ~1 min to build the start, then ~34 ns/day (2 fs) on one core of this machine: the default
# 20 + 100 + 200 ps take ~16 min.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
source "$SCRIPT_DIR/lib/sps_md.sh"  # sps_environment, steps, interactions, stage, berendsen, sps_includes
sps_environment
T=${T:-300}
NVT_PS=${NVT_PS:-20}
EQUIL_PS=${EQUIL_PS:-100}
PROD_PS=${PROD_PS:-200}
EVERY_PS=${EVERY_PS:-5}
SEED=${SEED:-300}
DT=0.002
DT_NVT=0.001

[[ $# -eq 0 ]] || { echo "usage: $0   (settings by environment variables, see the header)" >&2; exit 2; }
[[ "$T" =~ ^[0-9]+$ && "$T" -ge 100 && "$T" -le 450 ]] \
    || { echo "error: T '$T' is not an integer between 100 and 450 K (an ordered state melts above)" >&2; exit 2; }
export GMX_MAXBACKUP=-1 OMP_NUM_THREADS=$NT
command -v "$GMX" >/dev/null || { echo "error: $GMX not found (bash scripts/system-deps.sh)" >&2; exit 1; }
[[ -r "$TOP/topol.top" && -r "$TOP/PS1.itp" ]] \
    || { echo "error: $TOP/topol.top or $TOP/PS1.itp missing (TOP: the topology folder)" >&2; exit 1; }
sps_includes
[[ -x "$REPO/.venv/bin/backmap" ]] || { echo "error: $REPO/.venv/bin/backmap missing (bash scripts/setup.sh)" >&2; exit 1; }
MELT=$SPS/eval_t568  # for the comparison in the README only (skipped if absent)


mdrun() { run "mdrun_$1.log" "$GMX" mdrun -s "$1.tpr" -deffnm "$1" -ntmpi 1 -ntomp "$NT" -nb cpu -pin off -reprod; }

source "$SCRIPT_DIR/lib/work.sh"
OUT=$OUT_DIR/sps-crystal-T$T
if [[ -s "$OUT/cg.xtc" && -s "$OUT/README.md" ]]; then
    echo "sps-crystal: cached in $OUT (remove it to make it again)"
    exit 0
fi
start_work "make_sps_crystal"
cd "$WORK"
cp "$TOP/topol.top" .
for itp in ${ITPS[@]+"${ITPS[@]}"}; do cp "$TOP/$itp" .; done

log "sps-crystal: build the ordered start (all-trans syndiotactic chains on a lattice)"
run build.log "$PYTHON" "$SCRIPT_DIR/build_sps_crystal.py" build "$TOP/topol.top" start.gro
build_info=$(tail -n 1 build.log)
n_mol=$(awk 'NR == 2 { printf "%d", $1 / 162 }' start.gro)
[[ "$n_mol" -eq 36 ]] || { echo "error: the start has $n_mol chains, topol.top 36" >&2; exit 1; }

{ cat <<EOF
; 1. energy minimisation (steepest descent) of the built start
integrator               = steep
emtol                    = 100
emstep                   = 0.001
nsteps                   = 5000
EOF
  interactions | grep -Ev '^(tcoupl|tc-grps|tau-t|ld-seed|compressibility|ref-p) '; } >em.mdp
{ stage "2. NVT at ${T} K for ${NVT_PS} ps with ${DT_NVT} ps steps, velocities drawn at ${T} K" \
      "$NVT_PS" no 0 "$DT_NVT"
  cat <<EOF
gen-vel                  = yes
gen-temp                 = ${T}
gen-seed                 = ${SEED}
ref-t                    = ${T}
pcoupl                   = no
EOF
  interactions; } >nvt.mdp
{ stage "3. equilibrate at ${T} K for ${EQUIL_PS} ps, NPT (Berendsen anisotropic)" "$EQUIL_PS" yes 0
  echo "ref-t                    = ${T}"
  berendsen; interactions; } >equil.mdp
{ stage "4. production at ${T} K, ${PROD_PS} ps, NPT (C-rescale semi-isotropic), a frame every ${EVERY_PS} ps" \
      "$PROD_PS" yes "$(steps "$EVERY_PS")"
  cat <<EOF
compressed-x-precision   = 1000
ref-t                    = ${T}
pcoupl                   = C-rescale
pcoupltype               = semiisotropic
tau-p                    = 5.0
compressibility          = 4.5e-5 4.5e-5
ref-p                    = 1.01325 1.01325
EOF
  interactions | grep -Ev '^(compressibility|ref-p) '; } >prod.mdp

log "sps-crystal: energy minimisation"
run grompp_em.log "$GMX" grompp -f em.mdp -c start.gro -p topol.top -o em.tpr
mdrun em
em_info=$(awk '/^Steepest Descents (converged|did not)/ { sub(/^Steepest Descents /, ""); s = $0 }
                /^Potential Energy/ { p = $4 } END { printf "%s, potential %.0f kJ/mol", s, p }' mdrun_em.log)
log "sps-crystal: NVT at ${T} K (${NVT_PS} ps, ${DT_NVT} ps steps)"
run grompp_nvt.log "$GMX" grompp -f nvt.mdp -c em.gro -p topol.top -o nvt.tpr
mdrun nvt
log "sps-crystal: NPT equilibration at ${T} K (${EQUIL_PS} ps)"
# -maxwarn 1: grompp's warning that Berendsen does not sample the NPT ensemble exactly (intended here)
run grompp_equil.log "$GMX" grompp -f equil.mdp -c nvt.gro -t nvt.cpt -p topol.top -o equil.tpr -maxwarn 1
mdrun equil
log "sps-crystal: production (${PROD_PS} ps, a frame every ${EVERY_PS} ps)"
run grompp_prod.log "$GMX" grompp -f prod.mdp -c equil.gro -t equil.cpt -p topol.top -o prod.tpr
mdrun prod
speed=$(awk '/^Performance:/ {print $2}' prod.log)

sps_outputs  # aa.xtc, aa.gro, energies.txt, cg.xtc, md.mdp
n_frames=$(awk -v p="$PROD_PS" -v e="$EVERY_PS" 'BEGIN { printf "%d", p / e }')

# the order: built start, end of the equilibration, production frames; DBM's melt for comparison
log "sps-crystal: order parameters"
order() { run "order_$1.log" "$PYTHON" "$SCRIPT_DIR/build_sps_crystal.py" order "${@:2}" --label "$1"; tail -n 1 "order_$1.log"; }
{ order start start.gro
  order equil_end equil.gro
  order production aa.gro aa.xtc
  if [[ -r "$MELT/aa.gro" && -r "$MELT/aa.xtc" ]]; then order melt_568K "$MELT/aa.gro" "$MELT/aa.xtc"; fi
} >order.txt
trans=$(sed -n 's/.*"label": "production".*"trans_fraction": \([0-9.]*\),.*/\1/p' order.txt)
ok=$(awk -v t="$trans" 'BEGIN { print (t > 0.8) ? "yes" : "NO" }')
[[ "$ok" == yes ]] || echo "warning: only a fraction $trans of the production's backbone dihedrals are trans" >&2

cat >README.md <<EOF
# Ordered (crystal-like) sPS at ${T} K (made by scripts/make_sps_crystal_data.sh)

- Start: built by \`scripts/build_sps_crystal.py build\` (no random numbers): 36 PS1 chains
  (10 monomers, end groups H, atom names and order of PS1.itp), each an all-trans planar zigzag
  (C-C 0.153 nm, C-C-C 114 deg, 0.513 nm per two monomers, as the alpha/beta crystal forms' 0.51)
  with the phenyls alternating sides (syndiotactic; the CH stereocentres' signs alternate along
  every chain and start as in DBM's melt), phenyl planes perpendicular to the chain axis (rings on
  one side stacked 0.513 nm apart). The chains are parallel to z and in register on a 6 x 6 centred
  rectangular lattice, the densest of 16 simple two-chain cells without overlaps on a 0.02 nm grid,
  stacked end to end along z; rectangular box. The builder's report:
  \`${build_info}\`
- Force field: Mueller-Plathe sPS (${TOP_DESC}), all bonds constrained
  (LINCS), reaction field eps_rf 2.5, 1.0 nm cut-offs, dispersion correction.
- Energy minimisation (steepest descent; ${em_info}), ${NVT_PS} ps NVT at ${T} K with 1 fs steps
  (velocities drawn at ${T} K, gen-seed ${SEED}), ${EQUIL_PS} ps NPT at ${T} K (v-rescale 0.2 ps,
  Berendsen anisotropic 2 ps, 2 fs), then ${PROD_PS} ps NPT (C-rescale semi-isotropic 5 ps, 2 fs;
  not Parrinello-Rahman anisotropic: its box oscillation grows on this crystal, see the script):
  em.mdp, nvt.mdp, equil.mdp, prod.mdp; ld-seed ${SEED}; GROMACS $("$GMX" --version 2>/dev/null | awk '/GROMACS version/ {print $3}'),
  mdrun -ntomp ${NT} -reprod.
- aa.xtc: ${n_frames} frames, one every ${EVERY_PS} ps of the production; aa.gro its first; cg.xtc the same
  frames mapped by \`backmap map\` with recipes/sps/sps.xml; md.mdp the production's settings (for
  evaluate and the refiners).
- Production speed ${speed} ns/day; the whole script took $((SECONDS - START)) s.

Order (\`scripts/build_sps_crystal.py order\`): trans_fraction = fraction of backbone C-C-C-C
dihedrals with |phi| > 120 deg (17 per chain), mean_abs_cos_ee_z = mean |cos| of the angle between a
chain's end-to-end vector (first to last backbone carbon) and z (the chain axis of the start; 0.5 for
random orientations), lateral_order = the highest Bragg peak |mean exp(i q.r)|^2 of the chains'
centres r over the box's reciprocal-lattice vectors q = (h, k, 0) with spacings 0.5-1.5 nm (1 on a
perfect lattice, ~0.1-0.2 for a liquid-like arrangement of 36 chains), syndiotactic = the signs of the
9 CH stereocentres alternate along every chain.
The start, the end of the NPT equilibration, the production frames, and DBM's 568 K melt
(shared/data/sps/eval_t568, 78 frames) for comparison:

\`\`\`
$(cat order.txt)
\`\`\`

Averages (\`gmx energy\`):

\`\`\`
$(cat energies.txt)
\`\`\`
EOF
mkdir -p "$OUT.tmp"
cp topol.top ${ITPS[@]+"${ITPS[@]}"} aa.xtc aa.gro cg.xtc em.mdp nvt.mdp equil.mdp prod.mdp md.mdp energies.txt README.md "$OUT.tmp/"
publish "$OUT"
