# sps_md.sh -- the GROMACS settings the sPS data scripts share (make_sps_temperature_data.sh,
# make_sps_crystal_data.sh); source it after setting REPO (DT and SEED are read when its functions run):
#   - sps_environment: GMX, NT, PYTHON, SPS, TOP, OUT_DIR from the environment or their defaults;
#   - sps_includes: ITPS (the .itp files beside $TOP/topol.top that it #includes; force-field
#     folders are left to grompp's search path) and TOP_DESC (the topology, for the README);
#   - steps PS [DT]: the number of steps of PS ps;
#   - interactions: DBM's md.mdp (reaction field eps_rf 2.5, 1.0 nm cut-offs, dispersion correction),
#     every bond constrained (shared/data/README: sPS's bonds are rigid), v-rescale 0.2 ps, the box
#     angles kept (off-diagonal compressibilities 0);
#   - stage COMMENT PS CONTINUATION XTC_EVERY_STEPS [DT]: the run control of one MD stage;
#   - berendsen: the barostat that relaxes a box without Parrinello-Rahman's swings;
#   - sps_outputs: after the equil and prod stages (in the work folder, with work.sh's run): the
#     frames aa.xtc/aa.gro, energies.txt, the mapped cg.xtc and md.mdp.

sps_environment() {
    GMX=${GMX:-gmx}
    NT=${NT:-1}
    if [[ -z "${PYTHON:-}" ]]; then
        if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
    fi
    SPS=${SPS:-$REPO/../shared/data/sps}
    TOP=${TOP:-$SPS/top}
    OUT_DIR=${OUT_DIR:-$REPO/data}
}

sps_includes() {
    ITPS=()
    local inc
    while read -r inc; do
        [[ "$inc" == */* || "$inc" != *.itp ]] && continue
        [[ -r "$TOP/$inc" ]] || { echo "error: $TOP/$inc (included by $TOP/topol.top) missing" >&2; exit 1; }
        ITPS+=("$inc")
    done < <(sed -n 's/^[[:space:]]*#include[[:space:]]*"\([^"]*\)".*/\1/p' "$TOP/topol.top")
    if [[ "$TOP" -ef "$SPS/top" ]]; then
        TOP_DESC="shared/data/sps/top/topol.top${ITPS[*]:+, ${ITPS[*]}}"
    else
        TOP_DESC="$TOP/topol.top${ITPS[*]:+ + ${ITPS[*]}}"
    fi
}

steps() { awk -v ps="$1" -v dt="${2:-$DT}" 'BEGIN { printf "%d", ps / dt + 0.5 }'; }

interactions() {
    cat <<MDP
cutoff-scheme            = Verlet
nstlist                  = 10
pbc                      = xyz
coulombtype              = Reaction-Field
rcoulomb                 = 1.0
epsilon-rf               = 2.5
epsilon-r                = 1.0
vdwtype                  = Cut-off
rvdw                     = 1.0
DispCorr                 = EnerPres
constraints              = all-bonds
constraint-algorithm     = Lincs
lincs-order              = 4
lincs-iter               = 1
comm-mode                = Linear
nstcomm                  = 100
tcoupl                   = v-rescale
tc-grps                  = System
tau-t                    = 0.2
ld-seed                  = $SEED
compressibility          = 4.5e-5 4.5e-5 4.5e-5 0 0 0
ref-p                    = 1.01325 1.01325 1.01325 0 0 0
MDP
}

stage() {
    cat <<MDP
; $1
integrator               = md
dt                       = ${5:-$DT}
nsteps                   = $(steps "$2" "${5:-$DT}")
continuation             = $3
nstxout-compressed       = $4
nstenergy                = 500
nstlog                   = 5000
MDP
}

berendsen() {
    cat <<MDP
pcoupl                   = Berendsen
pcoupltype               = anisotropic
tau-p                    = 2.0
MDP
}

sps_outputs() {
    # the frames: the production's compressed trajectory without its t = 0 frame (= the equilibrated start)
    echo 0 | run trjconv.log "$GMX" trjconv -f prod.xtc -s prod.tpr -o aa.xtc -b "$EVERY_PS"
    echo 0 | run dump.log "$GMX" trjconv -f aa.xtc -s prod.tpr -o aa.gro -dump "$EVERY_PS"
    local stage
    for stage in equil prod; do
        printf 'Temperature\nDensity\nPotential\n' | run "energy_$stage.log" "$GMX" energy -f "$stage.edr" -o "energy_$stage.xvg"
    done
    { echo "# stage  observable  average  err.est.  rmsd  drift (GROMACS gmx energy)"
      for stage in equil prod; do
          awk -v s="$stage" '/^(Temperature|Density|Potential) / {print s, $0}' "energy_$stage.log"
      done; } >energies.txt
    run map.log "$REPO/.venv/bin/backmap" map --topology topol.top --traj aa.xtc \
        --mapping "$REPO/recipes/sps/sps.xml" --out cg.xtc
    # evaluate's and the refiners' settings: the production's interactions, no output
    sed -e 's/^nstxout-compressed .*/nstxout-compressed       = 0/' prod.mdp >md.mdp
}
