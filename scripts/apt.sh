# Debian packages for scripts that need a system tool; sourced by test.sh, the bench
# scripts and cri-check.sh (run them as root: apt-get installs system-wide).
#
#   apt_install [--recommends] PACKAGE...
# installs PACKAGE with apt-get, without recommended packages unless --recommends; when
# that fails (a stale or empty package index) it runs `apt-get update` and tries once more.
# Output goes to stderr; apt-get's status is returned.
#
#   install_missing TAG COMMAND[:PACKAGE]...
# installs, with apt_install, the PACKAGE (default: COMMAND) of every COMMAND that is not
# on PATH, after a line `TAG: installing ...` on stderr. Nothing missing: nothing done.

apt_install() {
    local opts=(-y --no-install-recommends)
    if [[ "${1:-}" == --recommends ]]; then
        opts=(-y)
        shift
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install "${opts[@]}" "$@" >&2 \
        || { apt-get update >&2 && apt-get install "${opts[@]}" "$@" >&2; }
}

install_missing() {
    local tag="$1" spec missing=()
    shift
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}")
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    echo "$tag: installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
}
