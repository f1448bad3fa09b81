#!/usr/bin/env bash
# make_sps_temperature_data.sh -- the sPS melt at a temperature the shipped models were not trained on:
# reference AA frames and their CG mapping, to measure how each generator generalizes
# (EVALUATION.md: "on data the generator was not trained on (other temperatures and phases)";
# docs/temperatures.md).
#
#   data/sps-T<T>/   NOT committed (cache; ~7 MB): topol.top + the .itp files beside it that it
#                    #includes (from TOP, default ../shared/data/sps/top: PS1.itp),
#                    aa.xtc (production frames), aa.gro (first of them), cg.xtc (backmap map with
#                    recipes/sps/sps.xml), anneal/equil/prod .mdp, md.mdp (the production settings with
#                    frame output off: for evaluate and the refiners), energies.txt, README.md
#
# The start is DBM's 568 K evaluation structure (../shared/data/sps/eval_t568/aa.gro, positions and
# velocities; no model was trained on it). The force field is the shipped Mueller-Plathe topology
# (../shared/data/sps/top; or TOP, e.g. the one scripts/make_sps_topology.py writes, which is
# equivalent term by term), with every bond constrained as in the reference MD (shared/data/README:
# sPS's bonds are rigid), reaction field eps_rf 2.5 and 1.0 nm cut-offs as DBM's md.mdp, 2 fs steps:
#   1. ANNEAL_PS ps NPT, the thermostat's reference going linearly from 568 K to T (v-rescale 0.2 ps,
#      Berendsen anisotropic 2 ps: the box relaxes to T's density without Parrinello-Rahman's swings);
#   2. EQUIL_PS ps NPT at T, same couplings (not saved);
#   3. PROD_PS ps NPT at T, v-rescale + Parrinello-Rahman anisotropic (tau_p 10 ps, DBM's), a frame
#      every EVERY_PS ps.
# The box angles are kept (off-diagonal compressibilities 0). Local structure (bonds, angles, dihedrals,
# packing) relaxes in ps; the chains' large-scale shape does not in this time, and the frames share the
# 568 K frame's chain paths: what the frames test is the local structure at T, which is what the
# generators produce.
#
# Usage:  scripts/make_sps_temperature_data.sh T [T ...]      e.g. 450 650
# Env:    GMX=gmx  NT=1 (mdrun threads; -reprod results depend on it)  ANNEAL_PS=50  EQUIL_PS=150
#         PROD_PS=200  EVERY_PS=5  SEED=568  PYTHON=<repo>/.venv/bin/python  OUT_DIR=<repo>/data
#         KEEP_WORK=1  TOP=<SPS>/top (a folder with topol.top; the *.itp files beside it that
#         topol.top #includes are copied with it)
# Deterministic: ld-seed fixed, mdrun -ntmpi 1 -ntomp NT -reprod (same build and hardware: same files).
# Cost: ~24 ns/day on one core of this machine, so the default 400 ps take ~25 min per temperature.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
source "$SCRIPT_DIR/lib/sps_md.sh"  # sps_environment, steps, interactions, stage, berendsen, sps_includes
sps_environment
ANNEAL_PS=${ANNEAL_PS:-50}
EQUIL_PS=${EQUIL_PS:-150}
PROD_PS=${PROD_PS:-200}
EVERY_PS=${EVERY_PS:-5}
SEED=${SEED:-568}
DT=0.002
T0=568

[[ $# -ge 1 ]] || { echo "usage: $0 T [T ...]   (kelvin, e.g. 450 650)" >&2; exit 2; }
for T in "$@"; do
    [[ "$T" =~ ^[0-9]+$ && "$T" -ge 200 && "$T" -le 1000 ]] \
        || { echo "error: temperature '$T' is not an integer between 200 and 1000 K" >&2; exit 2; }
done
export GMX_MAXBACKUP=-1 OMP_NUM_THREADS=$NT
command -v "$GMX" >/dev/null || { echo "error: $GMX not found (bash scripts/system-deps.sh)" >&2; exit 1; }
[[ -r "$SPS/eval_t568/aa.gro" ]] || { echo "error: $SPS/eval_t568/aa.gro missing (the shared sPS data)" >&2; exit 1; }
[[ -r "$TOP/topol.top" ]] || { echo "error: $TOP/topol.top missing (TOP: the topology folder)" >&2; exit 1; }
sps_includes
[[ -x "$REPO/.venv/bin/backmap" ]] || { echo "error: $REPO/.venv/bin/backmap missing (bash scripts/setup.sh)" >&2; exit 1; }

source "$SCRIPT_DIR/lib/work.sh"
for T in "$@"; do
    OUT=$OUT_DIR/sps-T$T
    if [[ -s "$OUT/cg.xtc" && -s "$OUT/README.md" ]]; then
        echo "sps-T$T: cached in $OUT (remove it to make it again)"
        continue
    fi
    start_work "make_sps_T$T"
    cd "$WORK"
    cp "$TOP/topol.top" .
    for itp in ${ITPS[@]+"${ITPS[@]}"}; do cp "$TOP/$itp" .; done
    cp "$SPS/eval_t568/aa.gro" start.gro

    { stage "1. anneal ${T0} K -> ${T} K over ${ANNEAL_PS} ps, NPT (Berendsen), from DBM's evaluation structure" \
          "$ANNEAL_PS" no 0
      cat <<EOF
gen-vel                  = no
annealing                = single
annealing-npoints        = 2
annealing-time           = 0 ${ANNEAL_PS}
annealing-temp           = ${T0} ${T}
ref-t                    = ${T0}
EOF
      berendsen; interactions; } >anneal.mdp
    { stage "2. equilibrate at ${T} K for ${EQUIL_PS} ps, NPT (Berendsen)" "$EQUIL_PS" yes 0
      echo "ref-t                    = ${T}"
      berendsen; interactions; } >equil.mdp
    { stage "3. production at ${T} K, ${PROD_PS} ps, NPT (Parrinello-Rahman, DBM's tau-p), a frame every ${EVERY_PS} ps" \
          "$PROD_PS" yes "$(steps "$EVERY_PS")"
      cat <<EOF
compressed-x-precision   = 1000
ref-t                    = ${T}
pcoupl                   = Parrinello-Rahman
pcoupltype               = anisotropic
tau-p                    = 10.0
EOF
      interactions; } >prod.mdp

    log "sps-T$T: anneal ${T0} -> ${T} K (${ANNEAL_PS} ps)"
    run grompp_anneal.log "$GMX" grompp -f anneal.mdp -c start.gro -p topol.top -o anneal.tpr -maxwarn 1
    run mdrun_anneal.log "$GMX" mdrun -s anneal.tpr -deffnm anneal -ntmpi 1 -ntomp "$NT" -nb cpu -reprod
    log "sps-T$T: equilibrate (${EQUIL_PS} ps)"
    run grompp_equil.log "$GMX" grompp -f equil.mdp -c anneal.gro -t anneal.cpt -p topol.top -o equil.tpr -maxwarn 1
    run mdrun_equil.log "$GMX" mdrun -s equil.tpr -deffnm equil -ntmpi 1 -ntomp "$NT" -nb cpu -reprod
    log "sps-T$T: production (${PROD_PS} ps, a frame every ${EVERY_PS} ps)"
    run grompp_prod.log "$GMX" grompp -f prod.mdp -c equil.gro -t equil.cpt -p topol.top -o prod.tpr
    run mdrun_prod.log "$GMX" mdrun -s prod.tpr -deffnm prod -ntmpi 1 -ntomp "$NT" -nb cpu -reprod
    speed=$(awk '/^Performance:/ {print $2}' prod.log)

    sps_outputs  # aa.xtc, aa.gro, energies.txt, cg.xtc, md.mdp
    n_frames=$(awk -v p="$PROD_PS" -v e="$EVERY_PS" 'BEGIN { printf "%d", p / e }')

    cat >README.md <<EOF
# sPS melt at ${T} K (made by scripts/make_sps_temperature_data.sh)

- Start: DBM's 568 K evaluation structure (shared/data/sps/eval_t568/aa.gro, with its velocities).
- Force field: Mueller-Plathe sPS (${TOP_DESC}), all bonds constrained
  (LINCS), reaction field eps_rf 2.5, 1.0 nm cut-offs, dispersion correction, 2 fs steps.
- ${ANNEAL_PS} ps NPT annealing ${T0} -> ${T} K, ${EQUIL_PS} ps NPT at ${T} K (v-rescale 0.2 ps,
  Berendsen anisotropic 2 ps), then ${PROD_PS} ps NPT (Parrinello-Rahman anisotropic 10 ps):
  anneal.mdp, equil.mdp, prod.mdp; ld-seed ${SEED}; GROMACS $("$GMX" --version 2>/dev/null | awk '/GROMACS version/ {print $3}'),
  mdrun -ntomp ${NT} -reprod.
- aa.xtc: ${n_frames} frames, one every ${EVERY_PS} ps of the production; aa.gro its first; cg.xtc the same
  frames mapped by \`backmap map\` with recipes/sps/sps.xml; md.mdp the production's settings (for
  evaluate and the refiners).
- Production speed ${speed} ns/day; the whole script took $((SECONDS - START)) s for this temperature.

Averages (\`gmx energy\`):

\`\`\`
$(cat energies.txt)
\`\`\`
EOF
    mkdir -p "$OUT.tmp"
    cp topol.top ${ITPS[@]+"${ITPS[@]}"} aa.xtc aa.gro cg.xtc anneal.mdp equil.mdp prod.mdp md.mdp energies.txt README.md "$OUT.tmp/"
    rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
    log "sps-T$T: written to $OUT"
    cd "$REPO"
    _finish_work
    trap - EXIT
done
