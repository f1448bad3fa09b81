#!/usr/bin/env bash
# make_tcs_data.sh -- liquid tetracosane (TCS, n-C24H50) at 400 K, all-atom OPLS-AA and Martini 2,
# for the morphing experiments
#
#   data/tcs/aa/        NOT committed (cache, also the resumable work directory of the AA runs):
#                       tcs.gro/tcs.itp (one molecule), topol.top, packed.gro, em/compress/npt/prod
#                       runs (.mdp .tpr .log .edr .cpt), prod.xtc = full NVT production (a frame every
#                       EVERY_PS ps), conf.gro + topol.tpr (production start / input), README.md
#   data/tcs/martini/   NOT committed (cache + work directory of the Martini runs): the same for the
#                       6-bead Martini 2 model (martini_c1.itp, tcs_martini.itp, mapped.gro = start)
#   data/tcs/analysis/  NOT committed: mapped.xtc (AA production mapped with `backmap map`), stats
#   tests/data/tcs/     committed (< 5 MB): aa/ and martini/ topologies + tpr + a few frames,
#                       tcs.xml (VOTCA mapping AA -> 6 C1 beads), mapped.xtc (the same few frames),
#                       stats.json, README.md
#
# Stages (each one is skipped when its marker data/tcs/<dir>/.done.<stage> exists; mdrun runs are
# continued from their GROMACS checkpoint (-cpi, written every CPT_MIN minutes) if killed, so simply
# rerunning the script continues where a killed run stopped):
#   AA   build (scripts/tcs_data.py build-aa: all-trans C24H50 at the OPLS-AA b0/theta0) -> insert
#        (gmx insert-molecules, NMOL molecules, cubic BOX0 nm, ~0.19 g/cm3) -> em (steepest descent)
#        -> compress (Berendsen, COMPRESS_BAR bar, COMPRESS_PS ps) -> npt (C-rescale 1 bar, NPT_PS ps)
#        -> prod (NVT, PROD_PS ps, box = the NPT frame of the second half whose volume is closest to
#        the mean volume of the second half)
#   CG   build (martini itps) -> map (AA production start mapped to 6 beads) -> em -> npt (CG_NPT_PS)
#        -> prod (NVT, CG_PROD_PS, same frame choice as AA); runs in the background next to the AA prod
#   final  backmap map of the AA trajectory, statistics at the Martini resolution, READMEs,
#          tests/data/tcs (always redone; with PARTIAL=1 it uses the production frames written so far,
#          which gives a documented partial result while a production is unfinished)
#
# Usage:  scripts/make_tcs_data.sh            (from any working directory; rerun to resume)
# Env:    GMX=gmx  NT=1 (OpenMP threads per mdrun; -reprod results depend on it)  SEED=2424
#         NMOL=48  PROD_PS=4000  NPT_PS=400  COMPRESS_PS=60  COMPRESS_BAR=1000  EVERY_PS=50
#         CG_NPT_PS=20000  CG_PROD_PS=10000  CPT_MIN=5  COMMIT_AA_FRAMES=11  COMMIT_CG_FRAMES=41
#         PARTIAL=1 (finalise with the frames written so far)  ONLY=aa|cg|final (run one part)
#         PYTHON=<repo>/.venv/bin/python  CACHE_DIR=<repo>/data/tcs  DATA_DIR=<repo>/tests/data
#         PROD_PS may be raised on a rerun: the production tpr is extended (gmx convert-tpr -until).
#
# Requires: gmx (GROMACS 2022; tested with 2022.5-Debian) with oplsaa.ff in its share directory,
# Python with numpy + MDAnalysis and the backmap package (the repo's .venv), awk, coreutils.
# Deterministic: fixed seeds (insert-molecules -seed, gen-seed, ld-seed), mdrun -ntmpi 1 -ntomp NT
# -reprod; a rerun on the same build/hardware gives the same data (a run continued from a checkpoint
# after a kill follows the same trajectory up to floating-point reordering, which -reprod avoids on
# the same hardware).  Timing (2 cores shared with other jobs, 1 thread per mdrun): ~2.5 h in all
# (AA compress 1.6 min, NPT 12 min, production 4 ns in ~2 h at ~50 ns/day; Martini 3 min in parallel);
# details in data/tcs/README.md.
set -Eeuo pipefail
trap 'echo "error: ${BASH_SOURCE[0]}:$LINENO: command failed (exit $?)" >&2' ERR

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$(cd "$SCRIPT_DIR/.." && pwd)}
GMX=${GMX:-gmx}
NT=${NT:-1}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
BACKMAP=${BACKMAP:-$(dirname "$PYTHON")/backmap}
HELPER=$REPO/scripts/tcs_data.py
CACHE_DIR=${CACHE_DIR:-$REPO/data/tcs}
DATA_DIR=${DATA_DIR:-$REPO/tests/data}
OUT=$DATA_DIR/tcs
AA=$CACHE_DIR/aa
CG=$CACHE_DIR/martini
AN=$CACHE_DIR/analysis

SEED=${SEED:-2424}
TEMP=400
NMOL=${NMOL:-48}
BOX0=${BOX0:-5.2}              # nm, insertion box (48 molecules: 0.19 g/cm3)
COMPRESS_PS=${COMPRESS_PS:-60}
COMPRESS_BAR=${COMPRESS_BAR:-1000}
NPT_PS=${NPT_PS:-400}
PROD_PS=${PROD_PS:-4000}
EVERY_PS=${EVERY_PS:-50}
CG_NPT_PS=${CG_NPT_PS:-20000}
CG_PROD_PS=${CG_PROD_PS:-10000}
CPT_MIN=${CPT_MIN:-5}
COMMIT_AA_FRAMES=${COMMIT_AA_FRAMES:-11}
COMMIT_CG_FRAMES=${COMMIT_CG_FRAMES:-41}
PARTIAL=${PARTIAL:-}
ONLY=${ONLY:-}
DT_AA=0.002
DT_CG=0.02
M_TCS=338.664                 # g/mol, C24H50 with the topology masses (24*12.011 + 50*1.008)
MAX_MB=5

export GMX_MAXBACKUP=-1 OMP_NUM_THREADS=$NT
command -v "$GMX" >/dev/null || { echo "error: $GMX not found" >&2; exit 1; }
"$PYTHON" -c "import MDAnalysis, numpy" 2>/dev/null || { echo "error: $PYTHON lacks MDAnalysis/numpy" >&2; exit 1; }
mkdir -p "$AA" "$CG" "$AN"
START=$SECONDS
log() { printf '[%s %5ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
# run DIR LOGFILE cmd...  -- run quietly in DIR, record the command, show the log tail on failure
run() {
    local dir=$1 logf=$2; shift 2
    echo "\$ (cd $dir) $*" >>"$dir/commands.log"
    if ! (cd "$dir" && "$@" >"$logf" 2>&1); then
        echo "error: command failed in $dir: $*" >&2; tail -n 40 "$dir/$logf" >&2; exit 1
    fi
}
done_() { [[ -f "$1/.done.$2" ]]; }
mark() {  # mark DIR STAGE T0 -- stage finished; keep its wall time
    echo "$(( SECONDS - $3 ))" >>"$1/.wall.$2"
    touch "$1/.done.$2"
}
# mdrun DIR DEFFNM  -- continues from DEFFNM.cpt when present (a killed run)
mdrun() {
    local dir=$1 d=$2 cpi=()
    [[ -f "$dir/$d.cpt" ]] && { cpi=(-cpi "$d.cpt"); log "  $d: continuing from checkpoint"; }
    run "$dir" "$d.mdrun.log" "$GMX" mdrun -ntmpi 1 -ntomp "$NT" -pin off -reprod -cpt "$CPT_MIN" \
        -deffnm "$d" "${cpi[@]}"
}
steps() { awk -v ps="$1" -v dt="$2" 'BEGIN { printf "%d", ps / dt + 0.5 }'; }

# pick_frame DIR RUN T_EVERY -> prints the time (ps) of the trr frame in the second half of RUN
# whose box volume is closest to the mean volume over the second half
pick_frame() {
    local dir=$1 r=$2 every=$3 tend
    (cd "$dir" && printf 'Volume\n' | "$GMX" energy -f "$r.edr" -o "$r.volume.xvg" >"$r.volume.log" 2>&1)
    awk -v every="$every" '
        /^[@#]/ { next }
        { t[n] = $1; v[n] = $2; n++ }
        END {
            half = t[n - 1] / 2; s = 0; m = 0
            for (i = 0; i < n; i++) if (t[i] >= half) { s += v[i]; m++ }
            mean = s / m; best = -1
            for (i = 0; i < n; i++) {
                if (t[i] < half) continue
                k = t[i] / every; if (k != int(k)) continue
                d = v[i] - mean; if (d < 0) d = -d
                if (best < 0 || d < bd) { best = t[i]; bd = d }
            }
            printf "%g\n", best
        }' "$dir/$r.volume.xvg"
}

# ------------------------------------------------------------------------------------------- mdp
mdp_aa_inter() {
    cat <<EOF
; interactions: OPLS-AA, Verlet lists, reaction field (eps_rf = inf) + plain LJ cut-off 1.0 nm with
; dispersion correction; bonds to H constrained (LINCS) for the 2 fs time step
cutoff-scheme            = Verlet
nstlist                  = 10
pbc                      = xyz
coulombtype              = Reaction-field
rcoulomb                 = 1.0
epsilon-r                = 1
epsilon-rf               = 0
vdwtype                  = Cut-off
vdw-modifier             = None
rvdw                     = 1.0
DispCorr                 = EnerPres
constraints              = h-bonds
constraint-algorithm     = lincs
lincs-order              = 4
lincs-iter               = 1
EOF
}
mdp_aa_em() {
    cat <<EOF
; steepest descent of the inserted molecules
integrator               = steep
emtol                    = 500
emstep                   = 0.01
nsteps                   = 5000
nstenergy                = 0
nstlog                   = 500
EOF
    mdp_aa_inter | sed 's/^constraints .*/constraints              = none/'
}
mdp_aa_md() {  # md NSTEPS TCOUPL_TAU PCOUPL REF_P TAU_P GENVEL NSTXOUT NSTVOUT NSTXTC
    cat <<EOF
integrator               = md
dt                       = $DT_AA
nsteps                   = $1
comm-mode                = Linear
nstcomm                  = 100
nstxout                  = $7
nstvout                  = $8
nstfout                  = 0
nstxout-compressed       = $9
compressed-x-precision   = 1000
nstlog                   = 5000
nstenergy                = 500
nstcalcenergy            = 100
tcoupl                   = v-rescale
tc-grps                  = System
tau-t                    = $2
ref-t                    = $TEMP
pcoupl                   = $3
pcoupltype               = isotropic
ref-p                    = $4
tau-p                    = $5
compressibility          = 4.5e-5
refcoord-scaling         = no
ld-seed                  = $SEED
EOF
    if [[ "$6" == yes ]]; then
        printf 'gen-vel                  = yes\ngen-temp                 = %s\ngen-seed                 = %s\ncontinuation             = no\n' "$TEMP" "$SEED"
    else
        printf 'gen-vel                  = no\ncontinuation             = yes\n'
    fi
    mdp_aa_inter
}
mdp_cg_inter() {
    cat <<EOF
; interactions: Martini 2 with the "new" standard settings (de Jong et al., Comput. Phys. Commun. 199,
; 1 (2016)): Verlet lists, LJ cut-off 1.1 nm with potential shift, reaction field eps_r 15 (no charges here)
cutoff-scheme            = Verlet
nstlist                  = 20
verlet-buffer-tolerance  = 0.005
pbc                      = xyz
coulombtype              = reaction-field
rcoulomb                 = 1.1
epsilon-r                = 15
epsilon-rf               = 0
vdwtype                  = Cut-off
vdw-modifier             = Potential-shift-verlet
rvdw                     = 1.1
DispCorr                 = no
constraints              = none
EOF
}
mdp_cg_em() {
    printf 'integrator = steep\nemtol = 100\nemstep = 0.01\nnsteps = 5000\nnstenergy = 0\nnstlog = 500\n'
    mdp_cg_inter
}
mdp_cg_md() {  # NSTEPS PCOUPL GENVEL NSTXOUT NSTVOUT NSTXTC
    cat <<EOF
integrator               = md
dt                       = $DT_CG
nsteps                   = $1
comm-mode                = Linear
nstcomm                  = 100
nstxout                  = $4
nstvout                  = $5
nstfout                  = 0
nstxout-compressed       = $6
compressed-x-precision   = 1000
nstlog                   = 50000
nstenergy                = 50
nstcalcenergy            = 50
tcoupl                   = v-rescale
tc-grps                  = System
tau-t                    = 1.0
ref-t                    = $TEMP
pcoupl                   = $2
pcoupltype               = isotropic
ref-p                    = 1.0
tau-p                    = 4.0
compressibility          = 3e-4
ld-seed                  = $SEED
EOF
    if [[ "$3" == yes ]]; then
        printf 'gen-vel                  = yes\ngen-temp                 = %s\ngen-seed                 = %s\ncontinuation             = no\n' "$TEMP" "$SEED"
    else
        printf 'gen-vel                  = no\ncontinuation             = yes\n'
    fi
    mdp_cg_inter
}

# extend_tpr DIR TPR PS DT  -- make the run length of TPR equal to PS (PROD_PS raised on a rerun)
extend_tpr() {
    local dir=$1 tpr=$2 ps=$3 dt=$4 n
    n=$(cd "$dir" && "$GMX" dump -s "$tpr" 2>/dev/null | awk '$1 == "nsteps" && n == "" {n = $3} END {print n}')
    if [[ "$n" != "$(steps "$ps" "$dt")" ]]; then
        log "  $tpr: nsteps $n -> $(steps "$ps" "$dt") (convert-tpr -until $ps)"
        run "$dir" convert_tpr.log "$GMX" convert-tpr -s "$tpr" -until "$ps" -o "$tpr"
        sed -i -E "s/^(nsteps +=).*/\1 $(steps "$ps" "$dt")/" "$dir/grompp.mdp"   # keep the record in step
        rm -f "$dir/.done.prod"
    fi
}

# ============================================================================================ AA
aa_part() {
    local t0 every_steps half tpick
    every_steps=$(steps "$EVERY_PS" "$DT_AA")
    if ! done_ "$AA" build; then
        t0=$SECONDS; log "AA build: one all-trans C24H50 (tcs.gro, tcs.itp, tcs.xml)"
        run "$AA" build.log "$PYTHON" "$HELPER" build-aa .
        cat >"$AA/topol.top" <<EOF
; liquid tetracosane, OPLS-AA (GROMACS share-directory oplsaa.ff), written by scripts/make_tcs_data.sh
#include "oplsaa.ff/forcefield.itp"
#include "tcs.itp"

[ system ]
tetracosane (n-C24H50) liquid, ${TEMP} K

[ molecules ]
TCS   ${NMOL}
EOF
        mark "$AA" build "$t0"
    fi
    if ! done_ "$AA" insert; then
        t0=$SECONDS; log "AA insert: $NMOL molecules into a ${BOX0} nm cube (seed $SEED)"
        run "$AA" insert.log "$GMX" insert-molecules -ci tcs.gro -nmol "$NMOL" -box "$BOX0" "$BOX0" "$BOX0" \
            -seed "$SEED" -try 500 -rot xyz -o packed.gro
        local nat; nat=$(sed -n 2p "$AA/packed.gro" | tr -d ' ')
        [[ "$nat" == $((NMOL * 74)) ]] || { echo "error: inserted $nat atoms, expected $((NMOL * 74))" >&2; exit 1; }
        mark "$AA" insert "$t0"
    fi
    if ! done_ "$AA" em; then
        t0=$SECONDS; log "AA em"
        mdp_aa_em >"$AA/em.mdp"
        run "$AA" grompp_em.log "$GMX" grompp -f em.mdp -c packed.gro -p topol.top -o em.tpr -po em.mdout.mdp -maxwarn 0
        mdrun "$AA" em
        grep -q "converged to Fmax" "$AA/em.log" || { echo "error: AA EM did not converge" >&2; exit 1; }
        mark "$AA" em "$t0"
    fi
    if ! done_ "$AA" compress; then
        t0=$SECONDS; log "AA compress: ${COMPRESS_PS} ps NPT Berendsen ${COMPRESS_BAR} bar, ${TEMP} K"
        if [[ ! -f "$AA/compress.cpt" ]]; then
            mdp_aa_md "$(steps "$COMPRESS_PS" "$DT_AA")" 0.1 Berendsen "$COMPRESS_BAR" 1.0 yes 0 0 0 >"$AA/compress.mdp"
            run "$AA" grompp_compress.log "$GMX" grompp -f compress.mdp -c em.gro -p topol.top -o compress.tpr \
                -po compress.mdout.mdp -maxwarn 1   # Berendsen barostat warning
        fi
        mdrun "$AA" compress
        mark "$AA" compress "$t0"
    fi
    if ! done_ "$AA" npt; then
        t0=$SECONDS; log "AA npt: ${NPT_PS} ps C-rescale 1 bar, ${TEMP} K"
        if [[ ! -f "$AA/npt.cpt" ]]; then
            mdp_aa_md "$(steps "$NPT_PS" "$DT_AA")" 0.1 C-rescale 1.0 2.0 no 5000 5000 0 >"$AA/npt.mdp"
            run "$AA" grompp_npt.log "$GMX" grompp -f npt.mdp -c compress.gro -t compress.cpt -p topol.top \
                -o npt.tpr -po npt.mdout.mdp -maxwarn 0
        fi
        mdrun "$AA" npt
        mark "$AA" npt "$t0"
    fi
    if [[ ! -f "$AA/prod.tpr" ]]; then
        tpick=$(pick_frame "$AA" npt 10)
        log "AA prod setup: NPT frame t = $tpick ps (volume closest to the second-half mean)"
        echo "$tpick" >"$AA/prod_start_time"
        mdp_aa_md "$(steps "$PROD_PS" "$DT_AA")" 1.0 no 1.0 2.0 no 0 0 "$every_steps" >"$AA/grompp.mdp"
        run "$AA" grompp_prod.log "$GMX" grompp -f grompp.mdp -c npt.gro -t npt.trr -time "$tpick" -p topol.top \
            -o prod.tpr -po prod.mdout.mdp -maxwarn 0
        (cd "$AA" && printf '0\n' | "$GMX" trjconv -f npt.trr -s npt.tpr -dump "$tpick" -o conf.gro >trjconv_conf.log 2>&1)
        cp "$AA/prod.tpr" "$AA/topol.tpr"
    fi
}
aa_prod() {
    local t0
    extend_tpr "$AA" prod.tpr "$PROD_PS" "$DT_AA"
    if ! done_ "$AA" prod; then
        t0=$SECONDS; log "AA prod: ${PROD_PS} ps NVT, a frame every ${EVERY_PS} ps"
        mdrun "$AA" prod
        cp "$AA/prod.tpr" "$AA/topol.tpr"
        mark "$AA" prod "$t0"
    fi
}

# ======================================================================================= Martini
cg_part() {
    local t0 tpick every_steps
    every_steps=$(steps "$EVERY_PS" "$DT_CG")
    [[ -f "$AA/conf.gro" ]] || { echo "error: $AA/conf.gro (AA production start) missing" >&2; exit 1; }
    if ! done_ "$CG" build; then
        t0=$SECONDS; log "CG build: Martini 2 C1 tetracosane; start = AA production start mapped to 6 beads"
        run "$CG" build.log "$PYTHON" "$HELPER" build-cg .
        run "$CG" map.log "$PYTHON" "$HELPER" map-gro "$AA/conf.gro" "$NMOL" mapped.gro
        cat >"$CG/topol.top" <<EOF
; liquid tetracosane, Martini 2 (C1 beads), written by scripts/make_tcs_data.sh
#include "martini_c1.itp"
#include "tcs_martini.itp"

[ system ]
tetracosane (n-C24H50) liquid, Martini 2, ${TEMP} K

[ molecules ]
TCS   ${NMOL}
EOF
        mark "$CG" build "$t0"
    fi
    if ! done_ "$CG" em; then
        t0=$SECONDS; log "CG em"
        mdp_cg_em >"$CG/em.mdp"
        run "$CG" grompp_em.log "$GMX" grompp -f em.mdp -c mapped.gro -p topol.top -o em.tpr -po em.mdout.mdp -maxwarn 0
        mdrun "$CG" em
        mark "$CG" em "$t0"
    fi
    if ! done_ "$CG" npt; then
        t0=$SECONDS; log "CG npt: ${CG_NPT_PS} ps C-rescale 1 bar, ${TEMP} K, dt ${DT_CG} ps"
        if [[ ! -f "$CG/npt.cpt" ]]; then
            mdp_cg_md "$(steps "$CG_NPT_PS" "$DT_CG")" C-rescale yes 5000 5000 0 >"$CG/npt.mdp"
            run "$CG" grompp_npt.log "$GMX" grompp -f npt.mdp -c em.gro -p topol.top -o npt.tpr -po npt.mdout.mdp -maxwarn 0
        fi
        mdrun "$CG" npt
        mark "$CG" npt "$t0"
    fi
    if [[ ! -f "$CG/prod.tpr" ]]; then
        tpick=$(pick_frame "$CG" npt 100)
        log "CG prod setup: NPT frame t = $tpick ps (volume closest to the second-half mean)"
        echo "$tpick" >"$CG/prod_start_time"
        mdp_cg_md "$(steps "$CG_PROD_PS" "$DT_CG")" no no 0 0 "$every_steps" >"$CG/grompp.mdp"
        run "$CG" grompp_prod.log "$GMX" grompp -f grompp.mdp -c npt.gro -t npt.trr -time "$tpick" -p topol.top \
            -o prod.tpr -po prod.mdout.mdp -maxwarn 0
        (cd "$CG" && printf '0\n' | "$GMX" trjconv -f npt.trr -s npt.tpr -dump "$tpick" -o conf.gro >trjconv_conf.log 2>&1)
        cp "$CG/prod.tpr" "$CG/topol.tpr"
    fi
    extend_tpr "$CG" prod.tpr "$CG_PROD_PS" "$DT_CG"
    if ! done_ "$CG" prod; then
        t0=$SECONDS; log "CG prod: ${CG_PROD_PS} ps NVT, a frame every ${EVERY_PS} ps"
        mdrun "$CG" prod
        cp "$CG/prod.tpr" "$CG/topol.tpr"
        mark "$CG" prod "$t0"
    fi
}

# ========================================================================================= final
# wall_of DIR STAGE -> seconds (summed over resumed attempts), "-" if the stage has not finished
wall_of() { if [[ -f "$1/.wall.$2" ]]; then awk '{s += $1} END {printf "%d", s}' "$1/.wall.$2"; else echo "-"; fi; }
nsday() { [[ -f "$1" ]] || { echo "-"; return; }; awk '/^Performance:/ {v = $2} END {if (v != "") printf "%.0f", v; else printf "-"}' "$1"; }
# edr_avg DIR EDR TERM [BEGIN_PS] -> "mean err rmsd"
edr_avg() {
    (cd "$1" && printf '%s\n' "$3" | "$GMX" energy -f "$2" ${4:+-b "$4"} 2>/dev/null) |
        awk -v t="$3" '$1 == t {printf "%s %s %s", $2, $3, $4; exit}'
}
# dens_blocks DIR EDR -> mass density (g/cm3) in 4 consecutive blocks of the run
dens_blocks() {
    (cd "$1" && printf 'Density\n' | "$GMX" energy -f "$2" -o "$AN/density.xvg" >/dev/null 2>&1)
    awk '/^[@#]/ {next} {t[n] = $1; v[n] = $2; n++}
        END {for (b = 0; b < 4; b++) {s = 0; m = 0; for (i = int(b * n / 4); i < int((b + 1) * n / 4); i++) {s += v[i]; m++}
             printf "%s%.4f", (b ? ", " : ""), s / m / 1000}}' "$AN/density.xvg"
    rm -f "$AN/density.xvg"
}
# nframes XTC -> "frames last_time"
xtc_info() { "$GMX" check -f "$1" 2>&1 | tr '\r' '\n' | awk '/^Coords/ {n = $2} /^Last frame/ {t = $NF} END {printf "%d %g", n, t}'; }

final_part() {
    local t0=$SECONDS d
    for d in "$AA" "$CG"; do
        [[ -f "$d/prod.xtc" && -f "$d/topol.tpr" ]] || { echo "error: $d has no production yet" >&2; exit 1; }
        if ! done_ "$d" prod && [[ -z "$PARTIAL" ]]; then
            echo "error: the production in $d is unfinished: rerun the script to continue it, or PARTIAL=1 to" \
                "finalise with the frames written so far" >&2
            exit 1
        fi
    done
    log "final: copying the complete production frames, mapping, statistics"
    # complete frames only (a production that is still running or was killed may end in a partial frame)
    (cd "$AA" && printf '0\n' | "$GMX" trjconv -f prod.xtc -s topol.tpr -o "$AN/aa.xtc" >"$AN/trjconv_aa.log" 2>&1)
    (cd "$CG" && printf '0\n' | "$GMX" trjconv -f prod.xtc -s topol.tpr -o "$AN/cg.xtc" >"$AN/trjconv_cg.log" 2>&1)
    local aa_nf aa_tl cg_nf cg_tl
    read -r aa_nf aa_tl <<<"$(xtc_info "$AN/aa.xtc")"
    read -r cg_nf cg_tl <<<"$(xtc_info "$AN/cg.xtc")"
    local aa_status="complete" cg_status="complete"
    done_ "$AA" prod || aa_status="PARTIAL: ${aa_tl} of ${PROD_PS} ps written so far (rerun the script to continue)"
    done_ "$CG" prod || cg_status="PARTIAL: ${cg_tl} of ${CG_PROD_PS} ps written so far (rerun the script to continue)"
    log "  AA: $aa_nf frames (t_last $aa_tl ps, $aa_status); CG: $cg_nf frames (t_last $cg_tl ps, $cg_status)"
    [[ "$aa_nf" -ge 2 && "$cg_nf" -ge 2 ]] || { echo "error: fewer than 2 production frames" >&2; exit 1; }
    cp "$AA/tcs.xml" "$AN/tcs.xml"
    local tmap=$SECONDS
    run "$AN" backmap_map.log "$BACKMAP" map --topology "$AA/topol.top" --traj aa.xtc --mapping tcs.xml --out mapped.xtc
    tmap=$((SECONDS - tmap))
    run "$AN" stats_aa.log sh -c "'$PYTHON' '$HELPER' stats aa '$AA/topol.tpr' aa.xtc --hist bonds_aa_mapped.dat >stats_aa.json"
    run "$AN" stats_map.log sh -c "'$PYTHON' '$HELPER' stats cg '$CG/topol.tpr' mapped.xtc >stats_backmap_mapped.json"
    run "$AN" stats_aa_npt.log sh -c "'$PYTHON' '$HELPER' stats aa '$AA/npt.tpr' '$AA/npt.trr' >stats_aa_npt.json"
    rm -f "$AA"/.npt.trr_offsets.*
    local npt_re; npt_re=$("$PYTHON" -c "import json; d = json.load(open('$AN/stats_aa_npt.json')); print(', '.join(f'{x:.2f}' for x in d['Re_rms_blocks_nm']))")
    run "$AN" stats_cg.log sh -c "'$PYTHON' '$HELPER' stats cg '$CG/topol.tpr' cg.xtc --hist bonds_martini.dat >stats_martini.json"

    # densities: NPT second half (GROMACS mass density; Martini beads weigh 72) and the production box
    local half_aa half_cg aa_dens cg_dens aa_rho cg_rho cg_rho_real aa_T cg_T aa_P cg_P
    half_aa=$(awk -v t="$NPT_PS" 'BEGIN {print t / 2}'); half_cg=$(awk -v t="$CG_NPT_PS" 'BEGIN {print t / 2}')
    aa_dens=$(edr_avg "$AA" npt.edr Density "$half_aa"); cg_dens=$(edr_avg "$CG" npt.edr Density "$half_cg")
    aa_rho=$(tail -n 1 "$AA/conf.gro" | awk -v n="$NMOL" -v m="$M_TCS" '{printf "%.4f", n * m / 602.214076 / ($1 * $2 * $3)}')
    cg_rho=$(tail -n 1 "$CG/conf.gro" | awk -v n="$NMOL" '{printf "%.4f", n * 6 * 72 / 602.214076 / ($1 * $2 * $3)}')
    cg_rho_real=$(tail -n 1 "$CG/conf.gro" | awk -v n="$NMOL" -v m="$M_TCS" '{printf "%.4f", n * m / 602.214076 / ($1 * $2 * $3)}')
    local aa_dblk cg_dblk; aa_dblk=$(dens_blocks "$AA" npt.edr); cg_dblk=$(dens_blocks "$CG" npt.edr)
    aa_T=$(edr_avg "$AA" prod.edr Temperature); cg_T=$(edr_avg "$CG" prod.edr Temperature)
    aa_P=$(edr_avg "$AA" prod.edr Pressure); cg_P=$(edr_avg "$CG" prod.edr Pressure)

    "$PYTHON" - "$AN" <<PY >"$AN/stats.json"
import json, sys
from pathlib import Path
an = Path(sys.argv[1])
s = {k: json.loads((an / f).read_text()) for k, f in
     [("aa_mapped", "stats_aa.json"), ("aa_backmap_mapped", "stats_backmap_mapped.json"), ("martini", "stats_martini.json")]}
def f3(x): return [float(v) for v in x.split()]
s["density_g_cm3"] = {
    "aa_npt_second_half": round(f3("$aa_dens")[0] / 1000, 4), "aa_npt_err": round(f3("$aa_dens")[1] / 1000, 4),
    "aa_production_box": $aa_rho,
    "martini_npt_second_half_bead_mass72": round(f3("$cg_dens")[0] / 1000, 4), "martini_npt_err": round(f3("$cg_dens")[1] / 1000, 4),
    "martini_production_box_bead_mass72": $cg_rho, "martini_production_box_as_C24H50": $cg_rho_real}
s["production"] = {"aa_frames": $aa_nf, "aa_last_ps": $aa_tl, "aa_status": "$aa_status",
                   "martini_frames": $cg_nf, "martini_last_ps": $cg_tl, "martini_status": "$cg_status",
                   "every_ps": $EVERY_PS, "aa_T": f3("$aa_T")[0], "martini_T": f3("$cg_T")[0],
                   "aa_P_bar": f3("$aa_P")[0], "martini_P_bar": f3("$cg_P")[0]}
a, b = s["aa_mapped"], s["aa_backmap_mapped"]
s["backmap_map_vs_own_mapping"] = {k: round(abs(a[k] - b[k]), 4) for k in ("bond_mean_nm", "Re_rms_nm", "Rg_rms_nm")}
print(json.dumps(s, indent=1))
PY
    local dev; dev=$("$PYTHON" -c "import json,sys; d=json.load(open('$AN/stats.json'))['backmap_map_vs_own_mapping']; print(max(d.values()))")
    awk -v d="$dev" 'BEGIN {exit !(d <= 0.002)}' || { echo "error: backmap map and tcs_data.py disagree ($dev nm)" >&2; exit 1; }

    # ------------------------------------------------------------------ committed set
    local stage=$CACHE_DIR/tests_stage
    rm -rf "$stage"; mkdir -p "$stage/aa" "$stage/martini"
    local aa_e cg_e
    aa_e=$(awk -v n="$COMMIT_AA_FRAMES" -v e="$EVERY_PS" 'BEGIN {print (n - 1) * e}')
    cg_e=$(awk -v n="$COMMIT_CG_FRAMES" -v e="$EVERY_PS" 'BEGIN {print (n - 1) * e}')
    cp "$AA/topol.top" "$AA/tcs.itp" "$AA/tcs.gro" "$AA/conf.gro" "$AA/topol.tpr" "$AA/grompp.mdp" "$stage/aa/"
    cp "$CG/topol.top" "$CG/martini_c1.itp" "$CG/tcs_martini.itp" "$CG/conf.gro" "$CG/topol.tpr" "$CG/grompp.mdp" "$stage/martini/"
    cp "$AA/tcs.xml" "$AN/stats.json" "$stage/"
    (cd "$AA" && printf '0\n' | "$GMX" trjconv -f "$AN/aa.xtc" -s topol.tpr -e "$aa_e" -o "$stage/aa/traj.xtc" >"$AN/trjconv_commit_aa.log" 2>&1)
    (cd "$CG" && printf '0\n' | "$GMX" trjconv -f "$AN/cg.xtc" -s topol.tpr -e "$cg_e" -o "$stage/martini/traj.xtc" >"$AN/trjconv_commit_cg.log" 2>&1)
    (cd "$CG" && printf '0\n' | "$GMX" trjconv -f "$AN/mapped.xtc" -s topol.tpr -e "$aa_e" -o "$stage/mapped.xtc" >"$AN/trjconv_commit_map.log" 2>&1)
    local c_aa c_cg c_map
    c_aa=$(xtc_info "$stage/aa/traj.xtc" | cut -d' ' -f1); c_cg=$(xtc_info "$stage/martini/traj.xtc" | cut -d' ' -f1)
    c_map=$(xtc_info "$stage/mapped.xtc" | cut -d' ' -f1)
    [[ "$c_map" == "$c_aa" ]] || { echo "error: committed mapped.xtc has $c_map frames, aa/traj.xtc $c_aa" >&2; exit 1; }
    local aa_commit_e cg_commit_e
    aa_commit_e=$(awk -v n="$c_aa" -v e="$EVERY_PS" 'BEGIN {print (n - 1) * e}')
    cg_commit_e=$(awk -v n="$c_cg" -v e="$EVERY_PS" 'BEGIN {print (n - 1) * e}')

    # ------------------------------------------------------------------ README
    local gmx_version py_versions table
    gmx_version=$("$GMX" --version 2>/dev/null | awk -F': *' '/^GROMACS version/ {print $2}')
    py_versions=$("$PYTHON" -c "import numpy, MDAnalysis, backmap; print(f'numpy {numpy.__version__}, MDAnalysis {MDAnalysis.__version__}, backmap {backmap.__version__}')" 2>/dev/null || echo "?")
    table=$("$PYTHON" "$HELPER" table "$AN/stats.json")
    local W_AA_BUILD W_AA_INS W_AA_EM W_AA_CMP W_AA_NPT W_AA_PROD W_CG_BUILD W_CG_EM W_CG_NPT W_CG_PROD
    W_AA_BUILD=$(wall_of "$AA" build); W_AA_INS=$(wall_of "$AA" insert); W_AA_EM=$(wall_of "$AA" em)
    W_AA_CMP=$(wall_of "$AA" compress); W_AA_NPT=$(wall_of "$AA" npt); W_AA_PROD=$(wall_of "$AA" prod)
    W_CG_BUILD=$(wall_of "$CG" build); W_CG_EM=$(wall_of "$CG" em); W_CG_NPT=$(wall_of "$CG" npt); W_CG_PROD=$(wall_of "$CG" prod)
    local aa_t0 cg_t0; aa_t0=$(cat "$AA/prod_start_time"); cg_t0=$(cat "$CG/prod_start_time")
    local aa_box cg_box; aa_box=$(tail -n 1 "$AA/conf.gro" | awk '{print $1}'); cg_box=$(tail -n 1 "$CG/conf.gro" | awk '{print $1}')
    cat >"$stage/README.md" <<EOF
# tcs — liquid tetracosane (n-C24H50, TCS) at ${TEMP} K: all-atom OPLS-AA and Martini 2

Generated by \`scripts/make_tcs_data.sh\` (+ \`scripts/tcs_data.py\`; GROMACS ${gmx_version},
\`gmx mdrun -ntmpi 1 -ntomp ${NT} -pin off -reprod\`; ${py_versions}). Do not edit by hand; rerun the script.
Made for the morphing experiments: the same liquid at the atomistic and at the Martini
resolution, ${NMOL} molecules each, snapshots every ${EVERY_PS} ps.

Production status: AA ${aa_status}; Martini ${cg_status}.

## All-atom system (target): OPLS-AA

- Molecule: one all-trans C24H50 built by \`tcs_data.py build-aa\` (own coordinates; C–C 0.1529 nm,
  C–H 0.109 nm, C–C–C 112.7°, H–C–H 107.8°: the OPLS-AA b0/θ0), moleculetype \`TCS\`, one residue \`TCS\`,
  atoms \`C1\`…\`C24\` and \`H<i>A/B(/C)\` on carbon i (74 atoms). Atom types as our hexane
  (\`tests/data/hexane/topol.top\`): opls_135 (CH3 carbon, −0.18 e), opls_136 (CH2 carbon, −0.12 e),
  opls_140 (H, +0.06 e); bonded parameters from \`oplsaa.ff\` of the GROMACS share directory
  (\`#include "oplsaa.ff/forcefield.itp"\`; RB dihedrals, fudge 0.5/0.5).
- Packing: \`gmx insert-molecules -nmol ${NMOL} -box ${BOX0} -seed ${SEED} -rot xyz\` (0.19 g/cm³),
  steepest descent (Fmax < 500).
- Interactions: Verlet lists, reaction field (ε_rf = ∞) and plain LJ cut-off, both 1.0 nm, dispersion
  correction (energy + pressure); bonds to H constrained (LINCS 4/1), 2 fs. Reaction field instead of PME
  because the OPLS alkane charges are small bond dipoles (C −0.12/−0.18, H +0.06) and it is ~1.5–2× cheaper
  on one core; the LJ cut-off + dispersion correction is what sets the density.
- Compression: ${COMPRESS_PS} ps NPT, Berendsen ${COMPRESS_BAR} bar (τ_p 1 ps), v-rescale ${TEMP} K (τ_t 0.1 ps),
  velocities from gen-seed ${SEED}.
- NPT equilibration: ${NPT_PS} ps, C-rescale 1 bar (τ_p 2 ps, κ 4.5e-5 bar⁻¹), v-rescale ${TEMP} K (τ_t 0.1 ps).
  Density over its second half: **$(awk -v d="${aa_dens%% *}" 'BEGIN {printf "%.4f", d / 1000}') g/cm³** (AA density)
  (GROMACS error estimate $(awk -v d="$(echo "$aa_dens" | cut -d' ' -f2)" 'BEGIN {printf "%.4f", d / 1000}')); expected for liquid
  TCS at 400 K ≈ 0.72–0.74 g/cm³ (experiment). Density in 4 consecutive blocks of the NPT run: ${aa_dblk} g/cm³.
  Chain conformations: the chains leave the dilute compression stage more coiled than in the melt (the
  all-trans start collapses while the molecules are far apart) and re-expand; ⟨R_e²⟩^½ at the 6-bead resolution in 4 consecutive blocks of the NPT run: ${npt_re} nm
  (frames every 10 ps), i.e. it levels off after the first ~100–150 ps.
- Production (\`grompp.mdp\`): NVT ${PROD_PS} ps, v-rescale ${TEMP} K (τ_t 1 ps, ld-seed ${SEED}), started from the
  NPT frame at t = ${aa_t0} ps (positions + velocities from npt.trr; among the second-half frames written
  every 10 ps, the one whose volume is closest to the second-half mean): cubic box ${aa_box} nm,
  ${aa_rho} g/cm³. Frames every ${EVERY_PS} ps (xtc precision 0.001 nm): ${aa_nf} frames (t = 0 … ${aa_tl} ps).
  Mean T ${aa_T%% *} K, mean pressure ${aa_P%% *} bar.

## Martini 2 system

- 6 C1 beads per molecule (bead k = carbons 4k−3…4k with their hydrogens), ${NMOL} molecules.
  Parameters written by \`tcs_data.py build-cg\` from Marrink et al., J. Phys. Chem. B 111, 7812 (2007):
  C1 mass 72, LJ σ 0.47 nm, ε(C1–C1) 3.5 kJ/mol; bonds b0 0.47 nm, k 1250 kJ/mol/nm²; angles (GROMACS
  type 2, cosine-harmonic) 180°, k 25 kJ/mol; nrexcl 1 (\`martini_c1.itp\`, \`tcs_martini.itp\`).
- Start: the AA production start (\`aa/conf.gro\`) mapped to the beads (mass-weighted, molecules made
  whole), so both resolutions start from the same conformations; steepest descent.
- Interactions: the "new" Martini settings (de Jong et al. 2016): Verlet lists (buffer tolerance 0.005),
  LJ cut-off 1.1 nm with potential shift, reaction field ε_r 15 (no charges here), no dispersion correction;
  time step ${DT_CG} ps (20 fs).
- NPT ${CG_NPT_PS} ps: C-rescale 1 bar (τ_p 4 ps, κ 3e-4 bar⁻¹), v-rescale ${TEMP} K (τ_t 1 ps), gen-seed ${SEED}.
  Density over its second half: **$(awk -v d="${cg_dens%% *}" 'BEGIN {printf "%.4f", d / 1000}') g/cm³** (Martini density, bead mass 72), i.e.
  **$(awk -v d="${cg_dens%% *}" -v m="$M_TCS" 'BEGIN {printf "%.4f", d / 1000 * m / 432}') g/cm³** as C24H50 (same number density, real molar mass ${M_TCS}).
  In 4 consecutive blocks of the NPT run: ${cg_dblk} g/cm³ (bead mass 72).
- Production: NVT ${CG_PROD_PS} ps, v-rescale ${TEMP} K (τ_t 1 ps), from the NPT frame at t = ${cg_t0} ps
  (chosen like the AA one): box ${cg_box} nm, ${cg_rho} g/cm³ (bead mass 72) = ${cg_rho_real} g/cm³ as C24H50.
  Frames every ${EVERY_PS} ps: ${cg_nf} frames (t = 0 … ${cg_tl} ps). Mean T ${cg_T%% *} K.
  Martini time is not AA time (Martini dynamics are faster, the usual factor ~4).

## Mapping

\`tcs.xml\`: VOTCA mapping of the AA molecule onto the 6 beads (\`<ident>TCS</ident>\`, beads B1…B6 of
type C1, members \`1:TCS:C<i>\` and \`1:TCS:H<i>X\`, mass weights C 12.011, H 1.008). Checked with
\`backmap map --topology data/tcs/aa/topol.top --traj <AA production> --mapping tcs.xml --out mapped.xtc\`
(${tmap} s for ${aa_nf} frames); its bead positions give the same statistics as \`tcs_data.py\`'s own
mapping (max. difference of bond mean / R_e / R_g: ${dev} nm).

## Chain statistics at the Martini resolution

Over all production frames (AA: ${aa_nf} frames, Martini: ${cg_nf} frames; all ${NMOL} molecules; "peaks" are the
maxima of the 5-bin-smoothed histogram, bond bins 0.005 nm, angle bins 2°). R_e = end-to-end distance
B1–B6, R_g = radius of gyration of the 6 beads (unweighted); "blocks" = the value in 4 consecutive blocks of frames.

${table}

The bond-length histograms are in \`data/tcs/analysis/bonds_{aa_mapped,martini}.dat\`. The mapped-AA one is set by
the torsion about the C–C bond that links two beads (row "by the torsion"): trans gives the long, gauche the short
population; they overlap, so on ${aa_nf} frames the histogram shows a broad flat top that ends sharply near
0.52 nm (all-trans limit) rather than two separated peaks (peak detection on the 5-bin-smoothed histogram above).
The Martini bonds are shorter on average than b0 = 0.47 nm in this dense liquid, with a tail of rare short
bonds (a separate check, not part of this script: one Martini chain alone in a 10 nm box, SD 400 K, 10 ns, gave
0.478 ± 0.057 nm).

## Wall times (2 cores shared with other jobs; 1 OpenMP thread per mdrun; the Martini runs went in parallel to the AA production)

| stage | wall time (s) | speed (ns/day) |
|---|---|---|
| AA build + insert + EM | ${W_AA_BUILD} + ${W_AA_INS} + ${W_AA_EM} | |
| AA compress ${COMPRESS_PS} ps | ${W_AA_CMP} | $(nsday "$AA/compress.log") |
| AA NPT ${NPT_PS} ps | ${W_AA_NPT} | $(nsday "$AA/npt.log") |
| AA NVT production ${PROD_PS} ps | ${W_AA_PROD} | $(nsday "$AA/prod.log") |
| Martini build/map + EM | ${W_CG_BUILD} + ${W_CG_EM} | |
| Martini NPT ${CG_NPT_PS} ps | ${W_CG_NPT} | $(nsday "$CG/npt.log") |
| Martini NVT production ${CG_PROD_PS} ps | ${W_CG_PROD} | $(nsday "$CG/prod.log") |
| final (map + statistics + this set) | $((SECONDS - t0)) | |

("-" = not finished. A stage continued after a kill counts only the attempt that finished it; the time
the killed attempt spent is not recorded.)

## Files

Committed (\`tests/data/tcs/\`):

| file | content |
|---|---|
| \`aa/topol.top\`, \`aa/tcs.itp\`, \`aa/tcs.gro\` | AA topology (includes oplsaa.ff from the GROMACS share dir), one molecule |
| \`aa/conf.gro\`, \`aa/topol.tpr\`, \`aa/grompp.mdp\` | AA production start, run input, parameters |
| \`aa/traj.xtc\` | the first ${c_aa} AA production frames (t = 0 … ${aa_commit_e} ps) |
| \`martini/topol.top\`, \`martini/martini_c1.itp\`, \`martini/tcs_martini.itp\` | Martini topology |
| \`martini/conf.gro\`, \`martini/topol.tpr\`, \`martini/grompp.mdp\` | Martini production start, input, parameters |
| \`martini/traj.xtc\` | the first ${c_cg} Martini production frames (t = 0 … ${cg_commit_e} ps) |
| \`tcs.xml\` | VOTCA mapping AA → 6 C1 beads |
| \`mapped.xtc\` | \`aa/traj.xtc\` mapped by \`backmap map\` (${c_map} frames, 288 beads in the order of \`martini/conf.gro\`) |
| \`stats.json\` | all numbers of this README (over the full productions) |

Cache (\`data/tcs/\`, not committed): \`aa/\` and \`martini/\` are the work directories of all stages (mdp, tpr,
edr, log, cpt, \`prod.xtc\` = the full production trajectory, \`commands.log\`), \`analysis/\` the complete-frame
copies \`aa.xtc\`, \`cg.xtc\`, the mapped AA trajectory \`mapped.xtc\`, bond-length histograms and the statistics.
EOF
    local kb; kb=$(du -sk "$stage" | cut -f1)
    [[ "$kb" -le $((MAX_MB * 1024)) ]] || { echo "error: committed set is $kb kB > $MAX_MB MB" >&2; exit 1; }
    cp "$stage/README.md" "$CACHE_DIR/README.md"; cp "$stage/README.md" "$AA/README.md"; cp "$stage/README.md" "$CG/README.md"
    mkdir -p "$DATA_DIR"
    rm -rf "$OUT.new"; mv "$stage" "$OUT.new"; rm -rf "$OUT"; mv "$OUT.new" "$OUT"
    log "final: wrote $OUT ($kb kB) and $CACHE_DIR/README.md"
}

# ========================================================================================== main
case "$ONLY" in
    aa) aa_part; aa_prod ;;
    cg) cg_part ;;
    final) final_part ;;
    "")
        aa_part
        # Martini in the background (it is cheap) while the AA production runs in the foreground
        cg_log=$CACHE_DIR/martini.run.log
        log "CG part in the background (log: $cg_log)"
        ( cg_part ) >>"$cg_log" 2>&1 &
        cg_pid=$!
        aa_prod
        if ! wait "$cg_pid"; then echo "error: the Martini part failed, see $cg_log" >&2; tail -n 20 "$cg_log" >&2; exit 1; fi
        cat "$cg_log"
        final_part ;;
    *) echo "error: ONLY=$ONLY (aa|cg|final)" >&2; exit 1 ;;
esac
log "done"
