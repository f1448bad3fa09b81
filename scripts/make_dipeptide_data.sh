#!/usr/bin/env bash
# make_dipeptide_data.sh -- alanine dipeptide (ACE-ALA-NME) in vacuum, AMBER ff99SB-ILDN, 300 K
#
#   tests/data/dipeptide/   committed: topology, conf.gro, the first COMMIT_NS ns of the trajectory
#                           (1 frame/ps), energies.csv, README.md (small, < 1 MB)
#   data/dipeptide/         NOT committed (cache): the full PROD_NS trajectory + energies + run info
#
# For reproducing Monroe & Shen's VAE Monte Carlo study of dialanine (vacuum, AMBER99SB, one
# configuration per ps).  For alanine dipeptide ff99SB-ILDN is identical to ff99SB: the ILDN
# torsion changes only concern Ile, Leu, Asp and Asn side chains.
#
# Steps: heavy atoms built from standard internal coordinates (scripts/dipeptide_md.py pdb; nothing is
# downloaded) -> gmx pdb2gmx -ff amber99sb-ildn -water none -ignh (adds hydrogens, writes topol.top
# that #includes amber99sb-ildn.ff from the GROMACS share dir) -> OpenMM (GromacsTopFile on that
# topol.top): NoCutoff, HBonds constraints, LangevinMiddle 300 K, 1/ps, 2 fs, seeded; minimise,
# EQUIL_PS equilibration, PROD_NS production, a frame every 1 ps -> cross-check of backmap's own
# force field (and of gmx mdrun -rerun) against OpenMM's energies -> (phi, psi) basin populations.
#
# Usage:  scripts/make_dipeptide_data.sh            (from any working directory)
# Env:    PROD_NS=100 (production length, ns)  COMMIT_NS=2 (committed part, ns)  SEED=2024
#         EQUIL_PS=100  PLATFORM=Reference (OpenMM platform; Reference is deterministic and, for
#         22 atoms, the fastest: ~17000 ns/day, one core)  NT=2 (threads, CPU platform only)
#         PYTHON=<repo>/.venv/bin/python  GMX=gmx  GMXTOP=/usr/share/gromacs/top  KEEP_WORK=1
#         DATA_DIR=<repo>/tests/data (committed set goes to DATA_DIR/dipeptide)
#         CACHE_DIR=<repo>/data/dipeptide (full trajectory)  CROSSCHECK_FRAMES=100
#
# Requires: gmx (GROMACS 2022; tested with 2022.5-Debian), Python with openmm (tested 8.x),
# MDAnalysis, numpy, and the backmap package (for the cross-check).
# With PLATFORM=Reference the run is bitwise reproducible (same seed, same machine and versions);
# OpenMM's CPU platform is not (multi-threaded force summation), its data are statistically equivalent.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
GMX=${GMX:-gmx}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
GMXTOP=${GMXTOP:-/usr/share/gromacs/top}
DATA_DIR=${DATA_DIR:-$REPO/tests/data}
CACHE_DIR=${CACHE_DIR:-$REPO/data/dipeptide}
OUT="$DATA_DIR/dipeptide"
HELPER="$SCRIPT_DIR/dipeptide_md.py"

FF=amber99sb-ildn
SEED=${SEED:-2024}          # OpenMM integrator random number seed and initial-velocity seed
TEMP=300                    # K
FRICTION=1                  # 1/ps
DT=0.002                    # ps
EQUIL_PS=${EQUIL_PS:-100}
PROD_NS=${PROD_NS:-100}
COMMIT_NS=${COMMIT_NS:-2}
EVERY_PS=1
PLATFORM=${PLATFORM:-Reference}
NT=${NT:-2}
CROSSCHECK_FRAMES=${CROSSCHECK_FRAMES:-100}
PHI0=-80; PSI0=80           # starting (phi, psi) of the built structure (C7eq region), degrees

PROD_PS=$(awk -v n="$PROD_NS" 'BEGIN { printf "%d", n * 1000 }')
COMMIT_FRAMES=$(awk -v n="$COMMIT_NS" -v e="$EVERY_PS" 'BEGIN { printf "%d", n * 1000 / e }')
[[ "$COMMIT_FRAMES" -le "$((PROD_PS / EVERY_PS))" ]] || { echo "error: COMMIT_NS > PROD_NS" >&2; exit 1; }

export GMX_MAXBACKUP=-1
command -v "$GMX" >/dev/null || { echo "error: $GMX not found (apt-get install gromacs)" >&2; exit 1; }
[[ -r "$GMXTOP/$FF.ff/forcefield.itp" ]] || { echo "error: $GMXTOP/$FF.ff not found (set GMXTOP)" >&2; exit 1; }
"$PYTHON" -c "import openmm, MDAnalysis, backmap" 2>/dev/null || {
    echo "error: $PYTHON lacks openmm / MDAnalysis / backmap (set PYTHON)" >&2; exit 1; }

source "$SCRIPT_DIR/lib/work.sh"
start_work make_dipeptide_data
cd "$WORK"

# ---------------------------------------------------------------------------------------------------
log "building ACE-ALA-NME heavy atoms (phi $PHI0, psi $PSI0) and running pdb2gmx -ff $FF"
run pdb.log "$PYTHON" "$HELPER" pdb --out heavy.pdb --phi "$PHI0" --psi "$PSI0"
run pdb2gmx.log "$GMX" pdb2gmx -f heavy.pdb -o start.gro -p pdb2gmx.top -ff "$FF" -water none -ignh
grep -q "Identified residue ACE1 as a starting terminus" pdb2gmx.log &&
    grep -q "Identified residue NME3 as a ending terminus" pdb2gmx.log ||
    { echo "error: pdb2gmx did not take ACE/NME as caps" >&2; exit 1; }
GMX_VERSION=$("$GMX" --version 2>/dev/null | awk -F': *' '/^GROMACS version/ {print $2}')
# topol.top: pdb2gmx's output without its volatile header (date, host, working directory) and
# without the position-restraint block (posre.itp is not kept); everything else verbatim
{
    cat <<EOF
;
;   ACE-ALA-NME (alanine dipeptide), AMBER ff99SB-ILDN, no solvent
;   written by scripts/make_dipeptide_data.sh with:
;     gmx pdb2gmx -f heavy.pdb -ff $FF -water none -ignh   (GROMACS $GMX_VERSION)
;   header and POSRES block removed; the force field is #included from the GROMACS share
;   directory (share/gromacs/top, e.g. /usr/share/gromacs/top)
;
EOF
    awk '/^; Include forcefield parameters/ {p = 1} p' pdb2gmx.top | sed '/^#ifdef POSRES/,/^#endif/d'
} >topol.top
grep -q "^#include \"$FF.ff/forcefield.itp\"" topol.top || { echo "error: unexpected pdb2gmx topology" >&2; exit 1; }
grep -q "^#include \"posre\|^#ifdef POSRES" topol.top && { echo "error: POSRES block not removed" >&2; exit 1; }
NATOMS=$(awk 'NR == 2 {print $1}' start.gro)
[[ "$NATOMS" == 22 ]] || { echo "error: $NATOMS atoms, expected 22" >&2; exit 1; }
grep -A1 -E "^There are +[0-9]+ dihedrals" pdb2gmx.log | sed 's/^ *//' >pdb2gmx.counts

# ---------------------------------------------------------------------------------------------------
log "OpenMM: minimise, ${EQUIL_PS} ps equilibration, ${PROD_NS} ns production ($PLATFORM platform, seed $SEED)"
T_MD=$SECONDS
"$PYTHON" "$HELPER" md --top topol.top --gro start.gro --include-dir "$GMXTOP" --outdir run \
    --seed "$SEED" --temperature "$TEMP" --friction "$FRICTION" --dt "$DT" --equil-ps "$EQUIL_PS" \
    --prod-ps "$PROD_PS" --every-ps "$EVERY_PS" --platform "$PLATFORM" --threads "$NT" \
    --progress 10000 >md.log 2>&1 || { echo "error: MD failed" >&2; tail -n 40 md.log >&2; exit 1; }
T_MD=$((SECONDS - T_MD))
grep "frame " md.log || true

# ---------------------------------------------------------------------------------------------------
log "cross-check: backmap ForceField vs OpenMM (and gmx mdrun -rerun), $CROSSCHECK_FRAMES frames"
run crosscheck.log "$PYTHON" "$HELPER" crosscheck --top topol.top --gro run/conf.gro --xtc run/traj.xtc \
    --include-dir "$GMXTOP" --n-frames "$CROSSCHECK_FRAMES" --cutoff 2.0 --box 5.0 \
    --energies run/energies.csv --gmx-rerun --out run/crosscheck.json
log "(phi, psi) basin populations"
run basins.log "$PYTHON" "$HELPER" analyse --gro run/conf.gro --xtc run/traj.xtc --mean-phipsi --out run/basins.json

stage=$WORK/stage
mkdir -p "$stage"
cp topol.top run/conf.gro "$stage/"
run cut.log "$PYTHON" "$HELPER" cut --xtc run/traj.xtc --frames "$COMMIT_FRAMES" --out-xtc "$stage/traj.xtc" \
    --energies run/energies.csv --out-energies "$stage/energies.csv" --gro run/conf.gro
run basins_commit.log "$PYTHON" "$HELPER" analyse --gro run/conf.gro --xtc "$stage/traj.xtc" --out basins_commit.json

# ---------------------------------------------------------------------------------------------------
# numbers for the README
J() { "$PYTHON" -c "import json, sys; d = json.load(open(sys.argv[1])); v = eval(sys.argv[2], {'d': d}); print(v)" "$@"; }
OMM_VERSION=$(J run/md_info.json "d['openmm_version']")
E_INIT=$(J run/md_info.json "f'{d[\"potential_initial\"]:.2f}'")
E_MIN=$(J run/md_info.json "f'{d[\"potential_minimised\"]:.2f}'")
E_MEAN=$(J run/md_info.json "f'{d[\"potential_mean\"]:.2f} ± {d[\"potential_std\"]:.2f}'")
T_MEAN=$(J run/md_info.json "f'{d[\"temperature_mean_K\"]:.1f}'")
NS_DAY=$(J run/md_info.json "f'{d[\"ns_per_day\"]:.0f}'")
SEC_PROD=$(J run/md_info.json "f'{d[\"seconds_prod\"]:.0f}'")
NFRAMES=$(J run/md_info.json "d['n_frames']")
CC_STD=$(J run/crosscheck.json "f'{d[\"std_diff\"]:.1e}'")
CC_MEAN=$(J run/crosscheck.json "f'{d[\"mean_diff_ours_minus_openmm\"]:.1e}'")
CC_MAX=$(J run/crosscheck.json "f'{d[\"max_abs_dev_from_mean\"]:.1e}'")
CC_N=$(J run/crosscheck.json "d['n_frames']")
CC_GMX=$(J run/crosscheck.json "f'{d[\"gromacs_rerun\"][\"std_diff_ours_minus_gmx\"]:.1e}'")
CC_GMX_OMM=$(J run/crosscheck.json "f'{d[\"gromacs_rerun\"][\"std_diff_gmx_minus_openmm\"]:.1e}'")
CC_TERMS=$(J run/crosscheck.json "', '.join(f'{k} {v[\"max_abs_diff\"]:.0e}' for k, v in d['per_term'].items() if 'max_abs_diff' in v)")
CC_ROUND=$(J run/crosscheck.json "'{mean:.2f} ± {std:.2f}'.format(**d['xtc_rounding_openmm_minus_energies_csv'])")
POP_ROW() { J "$1" "' | '.join(f'{100 * d[\"populations\"][b]:.1f}' for b in ('C7eq', 'C5', 'alphaR', 'C7ax', 'alphaL', 'other')) + f' | {d[\"phi_sign_changes\"]}'"; }
POP_FULL=$(POP_ROW run/basins.json)
POP_COMMIT=$(POP_ROW basins_commit.json)
MEANS=$(J run/basins.json "'; '.join(f'{b} ({d[k][0]:.0f}, {d[k][1]:.0f})' for b in ('C7eq', 'C5', 'alphaR', 'C7ax') for k in [f'mean_phi_psi_{b}'] if k in d)")
if [[ "$PLATFORM" == Reference ]]; then
    PLATFORM_NOTE="Reference (double precision, single thread, deterministic: a rerun with the same seed on the same machine gives identical files)"
else
    PLATFORM_NOTE="$PLATFORM ($NT threads; not bitwise reproducible)"
fi
PDB2GMX_COUNTS=$(tr '\n' ' ' <pdb2gmx.counts | sed 's/  */ /g')
XTC_KB=$(( ($(stat -c %s "$stage/traj.xtc") + 512) / 1024 ))
WALL=$((SECONDS - START))

cat >"$stage/README.md" <<EOF
# dipeptide — alanine dipeptide (ACE-ALA-NME) in vacuum, AMBER ff99SB-ILDN, ${TEMP} K

Generated by \`scripts/make_dipeptide_data.sh\` (helper \`scripts/dipeptide_md.py\`; GROMACS
${GMX_VERSION} for the topology, OpenMM ${OMM_VERSION} for the dynamics). Do not edit by hand; rerun
the script instead. Made for reproducing Monroe & Shen's VAE Monte Carlo study of dialanine
(vacuum, AMBER99SB, one configuration per ps). For this molecule ff99SB-ILDN *is* ff99SB: the ILDN
torsion corrections only concern Ile, Leu, Asp and Asn side chains.

## Provenance

Nothing was downloaded. The 10 heavy atoms were built from standard internal coordinates
(bond lengths/angles of the peptide backbone, trans peptide bonds, L-alanine,
(phi, psi) = (${PHI0}, ${PSI0}) degrees) by \`dipeptide_md.py pdb\`; \`gmx pdb2gmx -ff ${FF} -water none -ignh\`
added the 12 hydrogens and wrote the topology (ACE and NME caps recognised as termini;
pdb2gmx: "${PDB2GMX_COUNTS% }").

## Simulation (OpenMM)

- \`openmm.app.GromacsTopFile(topol.top, includeDir=${GMXTOP})\`, \`nonbondedMethod=NoCutoff\` (vacuum,
  no periodic boundaries), \`constraints=HBonds\` (12 bonds), no centre-of-mass motion remover.
- \`LangevinMiddleIntegrator\`: ${TEMP} K, friction ${FRICTION}/ps, time step ${DT} ps;
  \`setRandomNumberSeed(${SEED})\`, velocities \`setVelocitiesToTemperature(${TEMP} K, ${SEED})\`.
  Platform ${PLATFORM_NOTE}.
- Energy minimisation (L-BFGS to 1 kJ/mol/nm; ${E_INIT} → ${E_MIN} kJ/mol), then ${EQUIL_PS} ps equilibration
  (not saved), then ${PROD_NS} ns production with a frame every ${EVERY_PS} ps (${NFRAMES} frames, t = 0 is the end
  of equilibration).
- Mean potential energy ${E_MEAN} kJ/mol (mean ± std over frames); mean kinetic temperature
  ${T_MEAN} K (3N − 12 = 54 degrees of freedom, half-step velocities of LangevinMiddle).
- Speed ${NS_DAY} ns/day; production ${SEC_PROD} s, whole script ${WALL} s.

## Files

| file | content |
|---|---|
| \`topol.top\` | pdb2gmx topology, volatile header and POSRES block removed; \`#include "${FF}.ff/forcefield.itp"\` from the GROMACS share dir (the backmap \`.top\` reader and OpenMM find it there) |
| \`conf.gro\` | production frame 0, in a 3 nm cubic box (the box only satisfies the formats; the run has no box) |
| \`traj.xtc\` | the first ${COMMIT_NS} ns: ${COMMIT_FRAMES} frames, t = 0, 1, …, $((COMMIT_FRAMES - 1)) ps; nm, precision 0.001 nm, molecule's centre of mass at the box centre (${XTC_KB} kB) |
| \`energies.csv\` | \`time_ps,potential_kJ_mol\`: OpenMM potential energy of each saved frame (full-precision coordinates) |

The full ${PROD_NS} ns run (same files, plus \`md_info.json\`, \`crosscheck.json\`, \`basins.json\`) is written to
the uncommitted cache \`data/dipeptide/\` (CACHE_DIR); the first ${COMMIT_FRAMES} frames here are bitwise
the same as the cache's.

## Cross-check of backmap's force field

\`backmap.forcefield.ForceField(load_topology("topol.top"), NonbondedSettings(rvdw=2.0, rcoulomb=2.0,
coulomb="reaction-field", epsilon_rf=1, vdw_modifier="none"))\` in a 5 nm cubic box (every pair inside the
cut-off, so this equals OpenMM's NoCutoff up to the reaction-field constant −f Σq²/(2 r_c) over all pairs,
which is 0 for this neutral molecule), against OpenMM (Reference platform, no constraints) on the same
${CC_N} frames (evenly spaced over the ${PROD_NS} ns, xtc coordinates):

- ours − OpenMM: mean ${CC_MEAN}, std ${CC_STD}, max |deviation from the mean| ${CC_MAX} kJ/mol.
- per term, max |ours − OpenMM|: ${CC_TERMS} kJ/mol (the 4 periodic impropers, function 4, are in "proper").
- GROMACS \`mdrun -rerun\` (single precision, same settings): std(ours − gmx) ${CC_GMX}, std(gmx − OpenMM)
  ${CC_GMX_OMM} kJ/mol.
- For reference, xtc rounding (0.001 nm) changes OpenMM's energy by ${CC_ROUND} kJ/mol (vs \`energies.csv\`).

## (phi, psi) basins (percent of frames)

Definitions (degrees, phi wrapped to [−240, 120) so the extended region across ±180 counts as phi < 0):
C5 phi < −120 and (psi ≥ 120 or psi < −150); C7eq the rest of phi < 0, psi ≥ 0 (includes PII); alphaR
phi < 0, −120 ≤ psi < 0; C7ax 0 ≤ phi < 120, psi < 0; alphaL 0 ≤ phi < 120, psi ≥ 0; other the rest of
phi < 0, psi < −120. "phi transitions" counts crossings between phi < 0 and 0 ≤ phi < 120, i.e.
C7eq/C5 ↔ C7ax/alphaL, a rare event in vacuum at 300 K (barrier of several tens of kJ/mol); the
populations on the phi > 0 side are therefore not converged on this time scale.

| frames | C7eq | C5 | alphaR | C7ax | alphaL | other | phi transitions |
|---|---|---|---|---|---|---|---|
| full ${PROD_NS} ns (cache) | ${POP_FULL} |
| committed ${COMMIT_NS} ns | ${POP_COMMIT} |

Circular mean (phi, psi) per basin over the full run: ${MEANS}.
EOF

# ===== move into place =====
rm -f "$stage"/.*_offsets.* # MDAnalysis's xtc offset cache (from the checks above)
mkdir -p "$DATA_DIR" "$(dirname "$CACHE_DIR")"
cache_stage=$WORK/cache_stage
mkdir -p "$cache_stage"
cp topol.top run/{conf.gro,traj.xtc,energies.csv,md_info.json,crosscheck.json,basins.json} "$stage/README.md" "$cache_stage/"
cp commands.log "$cache_stage/commands.log"
for pair in "$stage:$OUT" "$cache_stage:$CACHE_DIR"; do
    src=${pair%%:*}; dst=${pair#*:}
    rm -rf "$dst.new"
    mv "$src" "$dst.new"
    rm -rf "$dst"
    mv "$dst.new" "$dst"
done

log "done; wall time $((SECONDS - START)) s (MD $T_MD s)"
du -sh "$OUT" "$CACHE_DIR"
ls -l "$OUT"
