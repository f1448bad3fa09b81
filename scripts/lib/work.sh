# work.sh -- what the data scripts share (source it, then call start_work NAME):
#   - a scratch directory $WORK (mktemp under $TMPDIR), removed when the script succeeds, kept when it
#     fails or with KEEP_WORK=1 (its path is printed);
#   - log MESSAGE: a line with the seconds since start_work;
#   - run LOGFILE CMD...: CMD run quietly, its output in LOGFILE, the command line appended to
#     $WORK/commands.log; on failure the command and the log's last 40 lines, and the script exits 1.

start_work() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    START=$SECONDS
    trap _finish_work EXIT
}

_finish_work() {
    local rc=$?
    if [[ $rc -ne 0 || -n "${KEEP_WORK:-}" ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

log() { printf '[%5ds] %s\n' "$((SECONDS - START))" "$*"; }

run() {
    local logf=$1; shift
    echo "\$ $*" >>"$WORK/commands.log"
    if ! "$@" >"$logf" 2>&1; then
        echo "error: command failed: $*" >&2
        tail -n 40 "$logf" >&2
        exit 1
    fi
}

# gmx_energies EDR: the mean potential energy, temperature and pressure of EDR into energies.txt
gmx_energies() {
    echo -e "Potential\nTemperature\nPressure\n" | run energy.log "$GMX" energy -f "$1" -o energies.xvg
    grep -E "^(Potential|Temperature|Pressure) " energy.log > energies.txt || true
}

# publish OUT: the finished $OUT.tmp becomes OUT (a failed run never leaves a half-written OUT)
publish() {
    rm -rf "$1"
    mv "$1.tmp" "$1"
    log "done: $1"
}
