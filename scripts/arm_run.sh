#!/usr/bin/env bash
# Run a command inside the emulated aarch64 Debian trixie root (see scripts/arm_root.sh) with this
# repository visible at /work/main.
#
# Usage:  bash scripts/arm_run.sh [--bind HOSTDIR ...] [--env NAME=VALUE ...] -- CMD ARGS...
#   --bind HOSTDIR    make HOSTDIR (folder or file, must exist) visible read-write at the same
#                     absolute path inside the root (repeatable)
#   --env NAME=VALUE  set a variable for CMD (repeatable)
#
# CMD runs as root in cwd /work/main with PATH=/opt/runner/bin:/usr/local/bin:/usr/bin:/bin...,
# PYTHONPATH=/work/main, VIRTUAL_ENV=/opt/runner, HOME=/root, LANG=C.UTF-8,
# PYTHONDONTWRITEBYTECODE=1 (no cpython-313 .pyc files written into the repo) and a fresh empty tmpfs
# at /tmp. The host environment is NOT inherited, except TERM, TZ, COLUMNS, MOBILETL_*, ORT_*, OMP_*
# and PYTHONUNBUFFERED/PYTHONHASHSEED/PYTHONWARNINGS/PYTHONFAULTHANDLER/PYTHONDONTWRITEBYTECODE/
# PYTHONIOENCODING. Exits with CMD's exit code (127: CMD not found; 2: bad usage here).
# The root is built first if missing (once, ~12 min on 2 cores, progress on stderr). Mounts are made in a private
# mount namespace (unshare -m) so they never show on the host and vanish with the process even on
# kill -9; a trap also unmounts them (the only cleanup if unshare is unavailable). Runs can overlap.
# If this script is killed with SIGKILL, CMD receives SIGTERM (setpriv --pdeathsig).
# onnxruntime prints a harmless "cpuinfo" warning on stderr under qemu.
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(dirname "$HERE")
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
ARGS=("$@")

usage() { sed -n '5,8p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "[arm_run] $*" >&2; exit 2; }

binds=() envs=()
while [ $# -gt 0 ]; do
    case $1 in
        --bind) [ $# -ge 2 ] || usage; binds+=("$2"); shift 2 ;;
        --bind=*) binds+=("${1#--bind=}"); shift ;;
        --env) [ $# -ge 2 ] || usage; envs+=("$2"); shift 2 ;;
        --env=*) envs+=("${1#--env=}"); shift ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
[ $# -gt 0 ] || usage
[ "$(id -u)" = 0 ] || die "needs root (chroot, mount)"
for e in ${envs[@]+"${envs[@]}"}; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got: $e"
done
targets=()   # absolute host paths to bind at the same path inside
for b in ${binds[@]+"${binds[@]}"}; do
    [ -e "$b" ] || die "--bind: no such file or folder: $b"
    b=$(readlink -f "$b")
    [ "$b" != / ] || die "--bind /: not supported"
    targets+=("$b")
done

if [ -z "${_ARM_RUN_ROOT:-}" ]; then
    ROOT=$(bash "$HERE/arm_root.sh" | tail -1) || exit $?
    [ -x "$ROOT/opt/runner/bin/python" ] || die "no usable root at '$ROOT'"
    export _ARM_RUN_ROOT=$ROOT
    # Continue in a private mount namespace when possible (mounts then cannot leak to the host).
    if unshare --mount --propagation private true 2>/dev/null; then
        exec unshare --mount --propagation private "$BASH" "$SELF" ${ARGS[@]+"${ARGS[@]}"}
    fi
fi
ROOT=$_ARM_RUN_ROOT
unset _ARM_RUN_ROOT

# ---------------------------------------------------------------- mounts, undone by the trap
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null ||
            echo "[arm_run] warning: could not unmount ${mounted[i]}" >&2
    done
    mounted=()
}
trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 129' HUP
trap 'exit 143' TERM

domount() {   # domount TARGET mount-args...  (TARGET is inside the root)
    local t=$1
    shift
    mount "$@" "$t" || die "mount $* $t failed"
    mounted+=("$t")
}
mkpoint() {   # create the mount point ROOT$2 matching the kind of host path $1
    if [ -d "$1" ]; then
        mkdir -p "$ROOT$2"
    else
        mkdir -p "$(dirname "$ROOT$2")"
        [ -e "$ROOT$2" ] || : >"$ROOT$2"
    fi
}

mountpoint -q "$ROOT/proc" || domount "$ROOT/proc" -t proc proc
domount "$ROOT/tmp" -t tmpfs -o mode=1777 tmpfs
# The repo and the --bind paths, parents before children (so /work does not hide /work/main).
pairs=("$REPO"$'\t'/work/main)
for t in ${targets[@]+"${targets[@]}"}; do
    [ "$t" = /work/main ] && [ "$REPO" = /work/main ] && continue
    pairs+=("$t"$'\t'"$t")
done
while IFS=$'\t' read -r src dst; do
    [ -n "$src" ] || continue
    mkpoint "$src" "$dst"
    domount "$ROOT$dst" --bind "$src"
done < <(for p in "${pairs[@]}"; do
    d=${p#*$'\t'}
    printf '%s\t%s\n' "$(tr -cd / <<<"$d" | wc -c)" "$p"
done | sort -n -s -k1,1 | cut -f2-)

# ---------------------------------------------------------------- the command
env_args=(
    HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 PYTHONPATH=/work/main VIRTUAL_ENV=/opt/runner
    PATH=/opt/runner/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    PYTHONDONTWRITEBYTECODE=1
)
while IFS= read -r name; do
    env_args+=("$name=${!name}")
done < <(compgen -e | grep -E '^(TERM|TZ|COLUMNS|MOBILETL_.*|ORT_.*|OMP_.*|PYTHON(UNBUFFERED|HASHSEED|WARNINGS|FAULTHANDLER|DONTWRITEBYTECODE|IOENCODING))$' || true)
env_args+=(${envs[@]+"${envs[@]}"})

# --pdeathsig: if this script is SIGKILLed (e.g. a test timeout), CMD gets SIGTERM instead of running on.
pdeath=()
if setpriv --pdeathsig TERM true 2>/dev/null; then pdeath=(setpriv --pdeathsig TERM); fi
set +e
${pdeath[@]+"${pdeath[@]}"} chroot "$ROOT" /usr/bin/env -i -C /work/main "${env_args[@]}" "$@"
rc=$?
set -e
exit $rc
