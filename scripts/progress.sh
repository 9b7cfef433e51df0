# Progress lines for long set-up steps; sourced by setup.sh and test.sh.
#
#   with_progress WHAT [COUNTER] -- COMMAND ARGS...
# runs COMMAND and, while it runs, prints `== still WHAT (Ns[, COUNTER's output])` on
# stderr every ${HVLITE_PROGRESS_SECS:-30} seconds. COMMAND's status is returned.

with_progress() {
    local what="$1" counter="" every="${HVLITE_PROGRESS_SECS:-30}" start=$SECONDS rc=0
    shift
    if [[ "$1" != -- ]]; then counter="$1"; shift; fi
    shift
    (
        while sleep "$every"; do
            extra=""
            [[ -n "$counter" ]] && extra=", $("$counter")"
            printf '== still %s (%d s%s)\n' "$what" $((SECONDS - start)) "$extra" >&2
        done
    ) >/dev/null &
    local ticker=$!
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    return "$rc"
}

# How many kernel objects the running scripts/build-kernel.sh has compiled so far.
kernel_objects() {
    local n
    n="$(find "${HVLITE_CACHE:-$HOME/.cache/hvlite}/kernel" -path '*/.build.*' -name '*.o' \
        2>/dev/null | wc -l)"
    printf '%s kernel objects compiled' "$n"
}
