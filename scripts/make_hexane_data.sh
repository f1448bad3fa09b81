#!/usr/bin/env bash
# make_hexane_data.sh -- regenerate the small liquid n-hexane test/quickstart data sets
#
#   tests/data/hexane/            ~200 molecules, cubic box, NVT 300 K, 21 frames (x + f), 5 ps apart
#   tests/data/hexane_triclinic/  ~60 molecules, triclinic box (70/80/90 deg), 5 frames (xtc), molecules
#                                 left broken across the periodic boundaries as GROMACS writes them
#
# Everything is simulated here with GROMACS from the VOTCA csg-tutorials hexane example
# (Apache-2.0; Debian package votca-tutorials): its equilibrated conf.gro (1000 molecules) is carved
# down to a smaller periodic cell at the same number density, energy-minimised, equilibrated NPT and
# then run NVT.  The force field is the OPLS-AA shipped with GROMACS (oplsaa.ff, via #include).
#
# Usage:  scripts/make_hexane_data.sh            (from any working directory)
# Env:    GMX=gmx  NT=2 (mdrun threads)  VOTCA_HEXANE_DIR=<tutorial atomistic dir>  KEEP_WORK=1
#         TEMP=300 (K; with DATA_DIR=data/hexane350 TEMP=350 it makes the temperature-transfer set)
#         (testing only: DATA_DIR=<out root>, NPT_PS_CUBIC, PROD_PS_CUBIC, NPT_PS_TRIC, PROD_PS_TRIC)
#
# Requires: gmx (GROMACS 2022; tested with 2022.5-Debian), awk, standard coreutils.
# Runs are seeded (gen-seed, ld-seed) and use mdrun -reprod with a fixed thread count, so a rerun on
# the same build/hardware gives the same data; other builds/CPUs give statistically equivalent data.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TUT=${VOTCA_HEXANE_DIR:-/usr/share/votca/csg-tutorials/hexane/atomistic}
GMX=${GMX:-gmx}
NT=${NT:-2}
DATA_DIR=${DATA_DIR:-$REPO/tests/data}   # override only for testing the script
OUT_CUBIC="$DATA_DIR/hexane"
OUT_TRIC="$DATA_DIR/hexane_triclinic"

SEED=1993          # gen-seed / ld-seed (v-rescale and C-rescale are stochastic)
TEMP=${TEMP:-300}   # K (another temperature: TEMP=350 DATA_DIR=data/hexane350 for a transfer set)
# cubic system
N_CUBIC=200
RC_CUBIC=1.2       # nm, Coulomb (PME real space) and LJ cut-off
NPT_PS_CUBIC=${NPT_PS_CUBIC:-50}
PROD_PS_CUBIC=${PROD_PS_CUBIC:-100}
OUT_EVERY_CUBIC=5000   # steps (1 fs) -> 5 ps
# triclinic system
N_TRIC=60
ANGLES_TRIC="70 80 90" # alpha (b,c)  beta (a,c)  gamma (a,b), degrees
RC_TRIC=1.0
NPT_PS_TRIC=${NPT_PS_TRIC:-50}
PROD_PS_TRIC=${PROD_PS_TRIC:-20}
OUT_EVERY_TRIC=5000

export GMX_MAXBACKUP=-1    # no #backup# files
export GMXLIB=${GMXLIB:-}  # default: GROMACS share dir provides oplsaa.ff

for f in conf.gro topol.top hexane.xml; do
    [[ -r "$TUT/$f" ]] || { echo "error: $TUT/$f not found (Debian package votca-tutorials?)" >&2; exit 1; }
done
command -v "$GMX" >/dev/null || { echo "error: $GMX not found" >&2; exit 1; }

source "$SCRIPT_DIR/lib/work.sh"
start_work make_hexane_data

# ---------------------------------------------------------------------------------------------------
# carve IN_GRO N "ALPHA BETA GAMMA" OUT_GRO
# Pick the N molecules (20 atoms each; whole in the tutorial file) whose centres of mass lie closest
# (in the max-norm of fractional coordinates) to the centre of a parallelepiped cell with the given
# angles, centred in the cubic source box.  The cell is scaled so that N molecules have the source
# number density.  Molecules stay whole, velocities are dropped, box written in GROMACS .gro order.
carve() {
    local in=$1 n=$2 angles=$3 out=$4
    read -r alpha beta gamma <<<"$angles"
    awk -v N="$n" -v APM=20 -v alpha="$alpha" -v beta="$beta" -v gamma="$gamma" '
    function abs(v) { return v < 0 ? -v : v }
    function fl(v) { return (v == int(v) || v >= 0) ? int(v) : int(v) - 1 }
    NR == 2 { natoms = $1 + 0; next }
    NR > 2 && NR <= natoms + 2 {
        i = NR - 3
        head[i] = substr($0, 1, 15)
        x[i] = substr($0, 21, 8) + 0; y[i] = substr($0, 29, 8) + 0; z[i] = substr($0, 37, 8) + 0
        an = substr($0, 11, 5); gsub(/ /, "", an)
        m[i] = (an ~ /^C/) ? 12.011 : 1.008
        next
    }
    NR == natoms + 3 {
        L = $1 + 0
        if (NF != 3 || $2 + 0 != L || $3 + 0 != L) { print "carve: source box must be cubic" > "/dev/stderr"; exit 1 }
    }
    END {
        nmol = natoms / APM
        if (nmol != int(nmol) || N > nmol) { print "carve: bad atom/molecule count" > "/dev/stderr"; exit 1 }
        d2r = atan2(0, -1) / 180
        ca = cos(alpha * d2r); cb = cos(beta * d2r); cg = cos(gamma * d2r); sg = sin(gamma * d2r)
        # unit-edge lower-triangular box: a=(ax,0,0) b=(bx,by,0) c=(cx,cy,cz)
        ax = 1; bx = cg; by = sg; cx = cb; cy = (ca - cb * cg) / sg; cz = sqrt(1 - cx * cx - cy * cy)
        s = (N * (L * L * L / nmol) / (ax * by * cz)) ^ (1 / 3)
        ax *= s; bx *= s; by *= s; cx *= s; cy *= s; cz *= s
        ox = L / 2 - (ax + bx + cx) / 2; oy = L / 2 - (by + cy) / 2; oz = L / 2 - cz / 2
        for (k = 0; k < nmol; k++) {
            mt = 0; sx = 0; sy = 0; sz = 0
            for (j = 0; j < APM; j++) { i = k * APM + j; mt += m[i]; sx += m[i] * x[i]; sy += m[i] * y[i]; sz += m[i] * z[i] }
            sx /= mt; sy /= mt; sz /= mt
            # shift whole molecule so its COM lies in [0,L)
            shx[k] = -L * fl(sx / L); shy[k] = -L * fl(sy / L); shz[k] = -L * fl(sz / L)
            rx = sx + shx[k] - ox; ry = sy + shy[k] - oy; rz = sz + shz[k] - oz
            fc = rz / cz; fb = (ry - fc * cy) / by; fa = (rx - fb * bx - fc * cx) / ax
            d = abs(fa - 0.5); if (abs(fb - 0.5) > d) d = abs(fb - 0.5); if (abs(fc - 0.5) > d) d = abs(fc - 0.5)
            dist[k] = d; order[k] = k
        }
        # insertion sort of molecule indices by distance (nmol is ~1000)
        for (p = 1; p < nmol; p++) {
            key = order[p]; q = p - 1
            while (q >= 0 && dist[order[q]] > dist[key]) { order[q + 1] = order[q]; q-- }
            order[q + 1] = key
        }
        # keep the selected molecules in their original order
        for (p = 0; p < N; p++) sel[order[p]] = 1
        printf "n-hexane, %d molecules carved from VOTCA csg-tutorials hexane conf.gro\n", N
        printf "%d\n", N * APM
        na = 0
        for (k = 0; k < nmol; k++) {
            if (!(k in sel)) continue
            for (j = 0; j < APM; j++) {
                i = k * APM + j; na++
                printf "%s%5d%8.3f%8.3f%8.3f\n", head[i], na % 100000, \
                    x[i] + shx[k] - ox, y[i] + shy[k] - oy, z[i] + shz[k] - oz
            }
        }
        printf "%10.5f%10.5f%10.5f%10.5f%10.5f%10.5f%10.5f%10.5f%10.5f\n", ax, by, cz, 0, 0, bx, 0, cx, cy
    }' "$in" >"$out"
}

# count_broken TOP MULTIFRAME_GRO  -> prints "frames total_broken min max" where a molecule is
# "broken" if any bonded pair from [ bonds ] is longer than 0.5 nm (raw coordinates, no PBC applied)
count_broken() {
    awk '
    FNR == NR {
        if ($0 ~ /^[ \t]*\[/) { sec = $0; gsub(/[][ \t]/, "", sec); next }
        if (sec == "bonds" && $1 ~ /^[0-9]+$/) { nb++; bi[nb] = $1 - 1; bj[nb] = $2 - 1 }
        if (sec == "atoms" && $1 ~ /^[0-9]+$/) apm = $1 + 0
        next
    }
    { line++ }
    line == 1 { next }
    line == 2 { natoms = $1 + 0; next }
    line <= natoms + 2 { i = line - 3; x[i] = substr($0, 21, 8) + 0; y[i] = substr($0, 29, 8) + 0; z[i] = substr($0, 37, 8) + 0; next }
    {
        nbroken = 0
        for (k = 0; k < natoms / apm; k++) {
            for (b = 1; b <= nb; b++) {
                i = k * apm + bi[b]; j = k * apm + bj[b]
                dx = x[i] - x[j]; dy = y[i] - y[j]; dz = z[i] - z[j]
                if (dx * dx + dy * dy + dz * dz > 0.25) { nbroken++; break }
            }
        }
        frames++; tot += nbroken
        if (frames == 1 || nbroken < mn) mn = nbroken
        if (frames == 1 || nbroken > mx) mx = nbroken
        line = 0
    }
    END { printf "%d %d %d %d\n", frames, tot, mn, mx }' "$1" "$2"
}

# ---------------------------------------------------------------------------------------------------
# .mdp files.  Verlet lists, PME, plain LJ cut-off with dispersion correction, no constraints,
# 1 fs time step (as in the tutorial's grompp.mdp).
mdp_common() {  # $1 = cut-off (nm)
    cat <<EOF
; interactions (OPLS-AA n-hexane, as in the VOTCA tutorial but with the Verlet scheme)
cutoff-scheme            = Verlet
nstlist                  = 10
pbc                      = xyz
coulombtype              = PME
rcoulomb                 = $1
vdwtype                  = Cut-off
vdw-modifier             = None
rvdw                     = $1
DispCorr                 = EnerPres
fourierspacing           = 0.12
pme-order                = 4
ewald-rtol               = 1e-5
constraints              = none
EOF
}

# Carving leaves some atoms of molecules on opposite faces of the new cell almost on top of each other
# (down to ~0.01 nm), which plain steepest descent cannot resolve in single precision.  So the
# intermolecular LJ is first switched on gradually through soft-core stages (charges off,
# lambda 0.6 -> 0.3 -> 0.1; intramolecular interactions at full strength), then a normal minimisation.
mdp_softem() {  # $1 = lambda (0 = full LJ, 1 = no intermolecular LJ)
    cat <<EOF
; soft-core minimisation to remove atom overlaps left by carving (lambda = $1)
integrator               = steep
emtol                    = 10
emstep                   = 0.01
nsteps                   = 500
nstenergy                = 0
nstlog                   = 500
cutoff-scheme            = Verlet
pbc                      = xyz
coulombtype              = Cut-off
rcoulomb                 = 0.8
rvdw                     = 0.8
constraints              = none
free-energy              = yes
init-lambda              = $1
couple-moltype           = Protein
couple-lambda0           = vdw
couple-lambda1           = none
couple-intramol          = no
sc-alpha                 = 0.5
sc-power                 = 1
sc-sigma                 = 0.3
nstdhdl                  = 0
EOF
}

mdp_em() {  # $1 = cut-off
    cat <<EOF
; energy minimisation of the carved box
integrator               = steep
emtol                    = 500
emstep                   = 0.01
nsteps                   = 5000
nstenergy                = 0
nstlog                   = 500
EOF
    mdp_common "$1"
}

mdp_npt() {  # $1 = cut-off  $2 = nsteps
    cat <<EOF
; NPT equilibration, 1 fs, ${TEMP} K, 1 bar, velocities generated with a fixed seed
integrator               = md
dt                       = 0.001
nsteps                   = $2
comm-mode                = Linear
nstcomm                  = 100
nstxout                  = 0
nstvout                  = 0
nstfout                  = 0
nstxout-compressed       = 0
nstlog                   = 10000
nstenergy                = 1000
nstcalcenergy            = 100
tcoupl                   = v-rescale
tc-grps                  = System
tau-t                    = 0.1
ref-t                    = ${TEMP}
pcoupl                   = C-rescale
pcoupltype               = isotropic
tau-p                    = 2.0
ref-p                    = 1.0
compressibility          = 4.5e-5
gen-vel                  = yes
gen-temp                 = ${TEMP}
gen-seed                 = ${SEED}
ld-seed                  = ${SEED}
EOF
    mdp_common "$1"
}

mdp_prod() {  # $1 = cut-off  $2 = nsteps  $3 = nstxout/nstfout (0 = no trr)  $4 = nstxout-compressed
    cat <<EOF
; NVT production, 1 fs, ${TEMP} K (v-rescale, tau-t as in the VOTCA tutorial),
; continued from the NPT run (positions, velocities and box from its checkpoint)
integrator               = md
dt                       = 0.001
tinit                    = 0
nsteps                   = $2
continuation             = yes
gen-vel                  = no
comm-mode                = Linear
nstcomm                  = 100
nstxout                  = $3
nstvout                  = 0
nstfout                  = $3
nstxout-compressed       = $4
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
    mdp_common "$1"
}

mdrun() {  # mdrun DEFFNM [extra mdrun options]
    local deffnm=$1; shift
    run "$WORK/$deffnm.mdrun.log" "$GMX" mdrun -nt "$NT" -ntmpi 1 -reprod -deffnm "$deffnm" "$@"
}

# simulate NAME NMOL ANGLES RC NPT_PS PROD_PS TRR_EVERY XTC_EVERY
# leaves in $WORK/NAME: topol.top conf.gro (production start) grompp.mdp topol.tpr traj.{trr,xtc}
simulate() {
    local name=$1 nmol=$2 angles=$3 rc=$4 npt_ps=$5 prod_ps=$6 trr_every=$7 xtc_every=$8
    local d="$WORK/$name"
    mkdir -p "$d"
    cd "$d"
    # tutorial topology, molecule count adjusted (molecule type stays "Protein" = <ident> in hexane.xml)
    sed -E "s/^(Protein[[:space:]]+)1000[[:space:]]*$/\\1${nmol}/" "$TUT/topol.top" >topol.top
    grep -Eq "^Protein[[:space:]]+${nmol}$" topol.top || { echo "error: could not set molecule count" >&2; exit 1; }
    cp "$TUT/hexane.xml" hexane.xml

    log "$name: carving $nmol molecules (angles $angles)"
    carve "$TUT/conf.gro" "$nmol" "$angles" carved.gro

    log "$name: energy minimisation (soft-core lambda 0.6, 0.3, 0.1, then full)"
    local in=carved.gro lam
    for lam in 0.6 0.3 0.1; do
        mdp_softem "$lam" >"softem_$lam.mdp"
        run "grompp_softem_$lam.log" "$GMX" grompp -f "softem_$lam.mdp" -c "$in" -p topol.top \
            -o "softem_$lam.tpr" -po "softem_$lam.mdout.mdp" -maxwarn 0
        mdrun "softem_$lam"
        in="softem_$lam.gro"
    done
    mdp_em "$rc" >em.mdp
    run grompp_em.log "$GMX" grompp -f em.mdp -c "$in" -p topol.top -o em.tpr -po em.mdout.mdp -maxwarn 0
    mdrun em
    if ! grep -q "converged to Fmax" em.log; then
        echo "error: $name: energy minimisation did not converge" >&2; grep -E "Steepest|Maximum force" em.log >&2; exit 1
    fi

    log "$name: NPT equilibration ${npt_ps} ps"
    mdp_npt "$rc" "$((npt_ps * 1000))" >npt.mdp
    run grompp_npt.log "$GMX" grompp -f npt.mdp -c em.gro -p topol.top -o npt.tpr -po npt.mdout.mdp -maxwarn 0
    mdrun npt

    log "$name: NVT production ${prod_ps} ps"
    mdp_prod "$rc" "$((prod_ps * 1000))" "$trr_every" "$xtc_every" >grompp.mdp
    cp npt.gro conf.gro
    run grompp_prod.log "$GMX" grompp -f grompp.mdp -c conf.gro -t npt.cpt -p topol.top -o topol.tpr -po prod.mdout.mdp -maxwarn 0
    mdrun prod -s topol.tpr
    [[ "$trr_every" -gt 0 ]] && mv prod.trr traj.trr
    mv prod.xtc traj.xtc

    # numbers for the README
    run check_xtc.log "$GMX" check -f traj.xtc
    printf '0\n' | "$GMX" trjconv -f traj.xtc -s topol.tpr -o frames.gro >trjconv.log 2>&1
    read -r NFRAMES NBROKEN_TOT NBROKEN_MIN NBROKEN_MAX < <(count_broken topol.top frames.gro)
    BOX_START=$(tail -n 1 conf.gro | awk '{printf "%s", $1; for (i = 2; i <= NF; i++) printf " %s", $i}')
    BOX_CARVED=$(tail -n 1 carved.gro | awk '{printf "%s", $1; for (i = 2; i <= NF; i++) printf " %s", $i}')
    DENS=$(awk -v n="$nmol" 'END { v = $1 * $2 * $3; printf "%.1f", n * 86.178 / 0.602214076 / v }' conf.gro)
    EM_FMAX=$(grep -E "^Maximum force" em.log | tail -n 1 | awk '{printf "%.0f", $4}')
    NPT_DENS=$(printf 'Density\n' | "$GMX" energy -f npt.edr -b "$((npt_ps / 2))" 2>/dev/null | awk '/^Density/ {printf "%.1f (GROMACS error estimate %.1f)", $2, $4}')
    PROD_T=$(printf 'Temperature\n' | "$GMX" energy -f prod.edr 2>/dev/null | awk '/^Temperature/ {printf "%.1f", $2}')
    log "$name: box $BOX_START, $NFRAMES xtc frames, broken molecules per frame $NBROKEN_MIN..$NBROKEN_MAX"
    cd "$WORK"
}

# ---------------------------------------------------------------------------------------------------
GMX_VERSION=$("$GMX" --version 2>/dev/null | awk -F': *' '/^GROMACS version/ {print $2}')
REL_TUT=$TUT

# ===== cubic =====
simulate hexane "$N_CUBIC" "90 90 90" "$RC_CUBIC" "$NPT_PS_CUBIC" "$PROD_PS_CUBIC" "$OUT_EVERY_CUBIC" "$OUT_EVERY_CUBIC"
run "$WORK/hexane/check_trr.log" "$GMX" check -f "$WORK/hexane/traj.trr"
TRR_FRAMES=$(awk '/^Coords/ {print $2}' "$WORK/hexane/check_trr.log")
TRR_FORCES=$(awk '/^Forces/ {print $2}' "$WORK/hexane/check_trr.log")
C_FRAMES=$NFRAMES; C_BOX=$BOX_START; C_BOX0=$BOX_CARVED; C_DENS=$DENS; C_FMAX=$EM_FMAX
C_NPT_DENS=$NPT_DENS; C_T=$PROD_T; C_BROKEN="$NBROKEN_MIN..$NBROKEN_MAX"
[[ "$TRR_FRAMES" == "$C_FRAMES" && "$TRR_FORCES" == "$C_FRAMES" ]] || {
    echo "error: trr has $TRR_FRAMES coordinate / $TRR_FORCES force frames, xtc $C_FRAMES" >&2; exit 1; }

stage=$WORK/stage_hexane
mkdir -p "$stage"
cp "$WORK/hexane/"{topol.top,hexane.xml,conf.gro,topol.tpr,traj.trr,traj.xtc,grompp.mdp} "$stage/"
cat >"$stage/README.md" <<EOF
# hexane — liquid n-hexane, OPLS-AA, ${TEMP} K, cubic box

Generated by \`scripts/make_hexane_data.sh\` (GROMACS ${GMX_VERSION}, $NT threads). Do not edit by hand;
rerun the script instead.

## Provenance and licence

Input: the VOTCA csg-tutorials \`hexane/atomistic\` example (Apache License 2.0; Debian package
\`votca-tutorials\`, \`${REL_TUT}\`):

- \`topol.top\` — the tutorial topology unchanged except the \`[ molecules ]\` count
  (\`Protein ${N_CUBIC}\`). The molecule type is still called \`Protein\`, which is the \`<ident>\` the
  mapping expects. It \`#include\`s \`oplsaa.ff/forcefield.itp\` from the GROMACS share directory
  (\`/usr/share/gromacs/top\`), so \`gmx grompp\` needs a GROMACS installation to re-process it.
- \`hexane.xml\` — the tutorial's VOTCA mapping, copied unchanged: 3 beads A1–B–A2, each two carbons
  with their hydrogens, mass-weighted (C 12, H 1).
- The starting structure was carved from the tutorial's equilibrated \`conf.gro\`
  (1000 molecules, cubic 6.04233 nm).

Everything else here was simulated by us with GROMACS; no other data were used.

## Steps

1. Carve: the ${N_CUBIC} molecules whose centres of mass are nearest the centre of the tutorial box
   (max-norm) were kept whole and put in a cubic box with the tutorial's number density:
   edge ${C_BOX0%% *} nm (the tutorial's 6.04233 nm × (${N_CUBIC}/1000)^(1/3)).
2. Energy minimisation: carving leaves a few near-coincident atoms across the new periodic faces,
   so first three steepest-descent stages (500 steps each) with soft-core intermolecular LJ
   (GROMACS free-energy code, \`couple-moltype = Protein\`, charges off, lambda 0.6, 0.3, 0.1,
   0.8 nm cut-off), then a normal steepest descent to Fmax < 500 (final max. force ${C_FMAX} kJ/mol/nm).
3. NPT equilibration, ${NPT_PS_CUBIC} ps: 1 fs, v-rescale ${TEMP} K (tau-t 0.1 ps), C-rescale 1 bar isotropic
   (tau-p 2 ps), velocities generated at ${TEMP} K (gen-seed ${SEED}, ld-seed ${SEED}).
   Density over the second half: ${C_NPT_DENS} kg/m³.
4. NVT production, ${PROD_PS_CUBIC} ps (\`grompp.mdp\`): continued from the NPT checkpoint (positions,
   velocities, box), 1 fs, v-rescale ${TEMP} K (tau-t 1 ps, ld-seed ${SEED}), no constraints, PME +
   LJ cut-off ${RC_CUBIC} nm with dispersion correction (Verlet lists), positions and forces written every
   ${OUT_EVERY_CUBIC} steps. \`gmx mdrun -nt ${NT} -ntmpi 1 -reprod\`.

## Files

| file | content |
|---|---|
| \`conf.gro\` | production start (= end of NPT = frame 0 of the trajectories, but with molecules whole) |
| \`topol.top\` | topology (see above) |
| \`grompp.mdp\` | production run parameters |
| \`topol.tpr\` | production run input (MDAnalysis and VOTCA read it as topology) |
| \`traj.trr\` | ${C_FRAMES} frames, t = 0, 5, …, ${PROD_PS_CUBIC} ps: positions **and forces** (no velocities) |
| \`traj.xtc\` | the same ${C_FRAMES} frames, positions only, precision 0.001 nm |
| \`hexane.xml\` | VOTCA mapping (see above) |

## Numbers

- ${N_CUBIC} molecules × 20 atoms = $((N_CUBIC * 20)) atoms; cubic box ${C_BOX%% *} nm
  (density ${C_DENS} kg/m³; the box is fixed during production).
- ${C_FRAMES} frames, 5 ps (5000 steps of 1 fs) apart, t = 0–${PROD_PS_CUBIC} ps; mean temperature
  ${C_T} K.
- Frame 0 is the NPT end state. Successive frames 5 ps apart are decorrelated for local structure
  (bond, angle, packing statistics) but not fully for whole-molecule reorientation.
- As written by GROMACS, atoms are put back into the box, so molecules crossing a face are split:
  ${C_BROKEN} molecules per frame have a bond longer than 0.5 nm in the raw coordinates.

Check with VOTCA: \`csg_map --top topol.tpr --trj traj.trr --cg hexane.xml --out cg.gro --nframes 1\`.
EOF

# ===== triclinic =====
simulate hexane_triclinic "$N_TRIC" "$ANGLES_TRIC" "$RC_TRIC" "$NPT_PS_TRIC" "$PROD_PS_TRIC" 0 "$OUT_EVERY_TRIC"
if [[ "$NBROKEN_MAX" -lt 1 ]]; then
    echo "error: no molecule is split across the triclinic boundaries; the data would not test make-whole" >&2
    exit 1
fi
stage_t=$WORK/stage_hexane_triclinic
mkdir -p "$stage_t"
cp "$WORK/hexane_triclinic/"{topol.top,hexane.xml,conf.gro,topol.tpr,traj.xtc,grompp.mdp} "$stage_t/"
read -r _a _b _c _ayz _azz _bx _bz _cx _cy <<<"$BOX_START"
TRIC_VOL=$(awk -v a="$_a" -v b="$_b" -v c="$_c" 'BEGIN { printf "%.3f", a * b * c }')
cat >"$stage_t/README.md" <<EOF
# hexane_triclinic — small n-hexane liquid in a triclinic box (make-whole test data)

Generated by \`scripts/make_hexane_data.sh\` (GROMACS ${GMX_VERSION}, $NT threads), exactly like
\`../hexane\` (see its README for provenance: VOTCA csg-tutorials hexane, Apache-2.0; OPLS-AA from
GROMACS), but smaller and in a genuinely triclinic cell.

## Steps

1. Carve: the ${N_TRIC} tutorial molecules whose centres of mass are nearest the centre of a
   parallelepiped cell with angles alpha beta gamma = ${ANGLES_TRIC} degrees, scaled to the
   tutorial's number density; molecules kept whole. Box (.gro order) ${BOX_CARVED}.
2. Energy minimisation: soft-core stages then normal steepest descent as for \`../hexane\`
   (final max. force ${EM_FMAX} kJ/mol/nm).
3. NPT ${NPT_PS_TRIC} ps (as for \`../hexane\`: C-rescale isotropic, which keeps the cell shape;
   v-rescale ${TEMP} K; gen-seed and ld-seed ${SEED}).
   Density over the second half: ${NPT_DENS} kg/m³.
4. NVT production ${PROD_PS_TRIC} ps (\`grompp.mdp\`), 1 fs, v-rescale ${TEMP} K, PME + LJ cut-off
   ${RC_TRIC} nm (less than half the shortest box vector), dispersion correction, no constraints;
   compressed positions every ${OUT_EVERY_TRIC} steps.

## Files and numbers

- \`conf.gro\` (production start = frame 0, but with molecules whole), \`topol.top\` (\`Protein ${N_TRIC}\`), \`grompp.mdp\`,
  \`topol.tpr\`, \`traj.xtc\`, \`hexane.xml\` (tutorial mapping, unchanged).
- ${N_TRIC} molecules, $((N_TRIC * 20)) atoms; box vectors (nm)
  a = (${_a}, 0, 0), b = (${_bx}, ${_b}, 0), c = (${_cx}, ${_cy}, ${_c})
  (.gro box line: \`${BOX_START}\`); angles 70/80/90 degrees; volume ${TRIC_VOL} nm³, density ${DENS} kg/m³;
  the production run is NVT so the box is the same in every frame.
- \`traj.xtc\`: ${NFRAMES} frames, t = 0, 5, …, ${PROD_PS_TRIC} ps; mean temperature ${PROD_T} K.
- **Broken molecules**: the frames are as GROMACS writes them (atoms put back into the triclinic
  unit cell), so molecules straddling a face are split. In the raw coordinates, ${NBROKEN_MIN}–${NBROKEN_MAX}
  of the ${N_TRIC} molecules per frame (${NBROKEN_TOT} molecule-frames in total over ${NFRAMES} frames) have at
  least one bond longer than 0.5 nm. \`conf.gro\` itself has whole molecules.
EOF

# ===== move into place =====
mkdir -p "$DATA_DIR"
for pair in "$stage:$OUT_CUBIC" "$stage_t:$OUT_TRIC"; do
    src=${pair%%:*}; dst=${pair#*:}
    rm -rf "$dst.new"
    mv "$src" "$dst.new"
    rm -rf "$dst"
    mv "$dst.new" "$dst"
done

log "done; wall time $((SECONDS - START)) s"
du -sh "$OUT_CUBIC" "$OUT_TRIC"
ls -l "$OUT_CUBIC" "$OUT_TRIC"
