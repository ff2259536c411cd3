#!/usr/bin/env bash
# Build (once) and cache an emulated aarch64 Debian 13 "trixie" root for running Python under qemu
# user emulation: python3 (3.13), python3-venv, and a venv at /opt/runner holding aarch64 cp313
# wheels of onnxruntime, numpy, pillow, safetensors and tqdm (installed offline, --no-deps).
#
# Usage:  ROOT=$(bash scripts/arm_root.sh | tail -1)
#   stdout: only the root path (last line); progress and errors go to stderr.
#   Idempotent: when the root is complete (stamp file present, same recipe) it only makes sure the
#   qemu-aarch64 binfmt handler is active, prints the path and exits 0.
#   Needs root. Installs qemu-user-static binfmt-support debootstrap on the host if missing.
# Environment:
#   MOBILETL_CACHE      cache folder (default /var/cache/mobiletl); the root is $MOBILETL_CACHE/arm64-trixie
#   ARM_ROOT_MIRROR     Debian mirror (default http://deb.debian.org/debian)
# The root is built in a temporary sibling folder inside a private mount namespace (so no mount can
# leak to the host) and renamed into place only after a smoke test, so an interrupted build never
# leaves a half root that looks complete. Full build output: $MOBILETL_CACHE/arm64-trixie.build.log
set -euo pipefail

RECIPE=1   # bump when anything below changes what goes into the root; a different stamp => rebuild
CACHE=${MOBILETL_CACHE:-/var/cache/mobiletl}
ROOT=$CACHE/arm64-trixie
STAMP=.mobiletl-arm-root          # inside the root
MIRROR=${ARM_ROOT_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
WHEELS=(onnxruntime==1.32.0 numpy pillow safetensors tqdm)
LOG=$CACHE/arm64-trixie.build.log
BINFMT=/proc/sys/fs/binfmt_misc
SELF=$(readlink -f "${BASH_SOURCE[0]}")

say() { echo "[arm_root] $*" >&2; }
die() { echo "[arm_root] FAILED: $*" >&2; exit 1; }

root_complete() { [ -f "$ROOT/$STAMP" ] && grep -qx "recipe=$RECIPE" "$ROOT/$STAMP"; }
binfmt_active() {
    [ -r "$BINFMT/status" ] && [ "$(cat "$BINFMT/status")" = enabled ] &&
        [ -r "$BINFMT/qemu-aarch64" ] && [ "$(head -1 "$BINFMT/qemu-aarch64")" = enabled ]
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Refuse to delete anything that has a mount point at or below it (e.g. a leaked bind mount of the repo).
safe_rm() {
    local d=$1
    [ -e "$d" ] || return 0
    if awk -v d="$d" '{ if ($5 == d || index($5, d "/") == 1) found = 1 } END { exit !found }' /proc/self/mountinfo; then
        die "refusing to delete $d: something is mounted below it (see /proc/self/mountinfo)"
    fi
    rm -rf --one-file-system "$d"
}

# Run one build stage with its output going to $LOG; print the stage time; on error show the log tail.
stage() {
    local name=$1 t0 rc
    shift
    t0=$(now)
    say "$name ..."
    echo "===== $name" >>"$LOG"
    local from=$(($(wc -l <"$LOG") + 1))
    set +e
    (set -euo pipefail; "$@") >>"$LOG" 2>&1 </dev/null
    rc=$?
    set -e
    [ $rc -ne 130 ] || exit 130   # Ctrl-C: the outer process reports it
    if [ $rc -ne 0 ]; then
        tail -n +"$from" "$LOG" | tail -n 25 | sed 's/^/    | /' >&2
        die "stage '$name' exited with $rc after $(elapsed "$t0")s (full log: $LOG)"
    fi
    say "$name done in $(elapsed "$t0")s"
}

in_root() {   # run a command in the root being built with a clean environment
    chroot "$BUILD" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# ---------------------------------------------------------------- build stages (private mount ns)
st_wheels() {
    mkdir -p "$CACHE/wheels-arm64-cp313"
    # --no-deps on purpose: onnxruntime's declared deps (flatbuffers, protobuf, sympy, ...) are not
    # needed to import it and run an InferenceSession.
    PIP_FIND_LINKS= PIP_CONSTRAINT= python3 -m pip download --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 --python-version 3.13 --implementation cp \
        -d "$CACHE/wheels-arm64-cp313" "${WHEELS[@]}"
}
st_debootstrap1() {
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$BUILD" "$MIRROR"
    # No qemu binary is copied into the root: Debian registers qemu-aarch64 with the F (fix-binary)
    # flag, so the kernel uses the host's interpreter inside the chroot.
}
st_debootstrap2() {
    chroot "$BUILD" /debootstrap/debootstrap --second-stage
}
st_apt_update() {
    cp -L /etc/resolv.conf "$BUILD/etc/resolv.conf"
    # same date checks as the host's apt (the mirror may be a snapshot)
    printf '%s\n' 'Acquire::Check-Valid-Until "false";' 'Acquire::Check-Date "false";' \
        'APT::Install-Recommends "false";' >"$BUILD/etc/apt/apt.conf.d/99mobiletl"
    in_root apt-get update -q
}
st_python() {
    mountpoint -q "$BUILD/proc" || mount -t proc proc "$BUILD/proc"
    in_root apt-get install -y -q python3 python3-venv
    in_root apt-get clean
    rm -rf "$BUILD"/var/lib/apt/lists/*
}
st_venv() {
    mountpoint -q "$BUILD/proc" || mount -t proc proc "$BUILD/proc"
    in_root python3 -m venv /opt/runner
}
st_wheels_install() {
    rm -rf "$BUILD/tmp/wheels" && mkdir -p "$BUILD/tmp/wheels"
    cp "$CACHE"/wheels-arm64-cp313/*.whl "$BUILD/tmp/wheels/"
    in_root /opt/runner/bin/pip install -q --no-index --no-deps --disable-pip-version-check \
        --find-links /tmp/wheels "${WHEELS[@]}"
    rm -rf "$BUILD/tmp/wheels"
    # onnxruntime segfaults at import under qemu when the host /sys is visible; with these two
    # empty files it only prints a harmless cpuinfo warning.
    mkdir -p "$BUILD/sys/devices/system/cpu"
    : >"$BUILD/sys/devices/system/cpu/possible"
    : >"$BUILD/sys/devices/system/cpu/present"
    mkdir -p "$BUILD/work/main"
}
st_smoke() {
    mountpoint -q "$BUILD/proc" || mount -t proc proc "$BUILD/proc"
    in_root /opt/runner/bin/python -c '
import platform, sys, onnxruntime, numpy, safetensors, PIL, tqdm
assert platform.machine() == "aarch64", platform.machine()
assert sys.version_info[:2] == (3, 13), sys.version
print(platform.machine(), sys.version.split()[0], onnxruntime.__version__, onnxruntime.get_device())'
    {
        echo "recipe=$RECIPE"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "suite=$SUITE arch=arm64 variant=minbase mirror=$MIRROR"
        echo "python=$(in_root python3 -c 'import sys; print(sys.version.split()[0])')"
        echo "debian=$(cat "$BUILD/etc/debian_version")"
        echo "venv=/opt/runner"
        in_root /opt/runner/bin/pip freeze --disable-pip-version-check | sed 's/^/wheel: /'
    } >"$BUILD/$STAMP.tmp"
    umount "$BUILD/proc" 2>/dev/null || true
    mv "$BUILD/$STAMP.tmp" "$BUILD/$STAMP"
}

if [ "${1:-}" = __build ]; then   # internal: runs inside `unshare -m`, see below
    BUILD=$2
    stage "download aarch64 cp313 wheels" st_wheels
    stage "debootstrap first stage ($SUITE arm64 minbase)" st_debootstrap1
    stage "debootstrap second stage (under qemu)" st_debootstrap2
    stage "apt-get update (under qemu)" st_apt_update
    stage "apt-get install python3 python3-venv" st_python
    stage "python3 -m venv /opt/runner" st_venv
    stage "pip install wheels offline (onnxruntime numpy pillow safetensors tqdm)" st_wheels_install
    stage "smoke test + stamp" st_smoke
    exit 0
fi

# ---------------------------------------------------------------- main
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"

if root_complete && binfmt_active; then   # fast path
    echo "$ROOT"
    exit 0
fi

T_ALL=$(now)
mkdir -p "$CACHE"
exec 9>"$CACHE/.arm64-trixie.lock"
flock 9 || die "cannot lock $CACHE/.arm64-trixie.lock"
: >"$LOG"

# Host tools and the binfmt handler (needed to use the root as well as to build it).
if ! command -v debootstrap >/dev/null || ! command -v update-binfmts >/dev/null ||
    [ ! -x /usr/bin/qemu-aarch64-static ]; then
    host_pkgs() { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support debootstrap; }
    stage "host packages (qemu-user-static binfmt-support debootstrap)" host_pkgs
fi
if ! binfmt_active; then
    binfmt_on() {
        [ -e "$BINFMT/status" ] || mount -t binfmt_misc binfmt_misc "$BINFMT"
        [ "$(cat "$BINFMT/status")" = enabled ] || echo 1 >"$BINFMT/status"
        update-binfmts --enable qemu-aarch64 || true   # may report "already enabled"
        binfmt_active
    }
    stage "enable qemu-aarch64 binfmt" binfmt_on
fi

if root_complete; then
    echo "$ROOT"
    exit 0
fi

# Leftovers of interrupted builds (no mounts can be below them: builds use a private mount namespace).
for d in "$CACHE"/.arm64-trixie.build.* "$CACHE"/.arm64-trixie.old.*; do
    if [ -e "$d" ]; then say "removing leftover $d"; safe_rm "$d"; fi
done

BUILD=$CACHE/.arm64-trixie.build.$$
SIGNALLED=
on_exit() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        safe_rm "$BUILD" 2>/dev/null || true
        [ -z "$SIGNALLED" ] || echo "[arm_root] FAILED: $SIGNALLED; partial build removed" >&2
    fi
    exit $rc
}
trap on_exit EXIT
trap 'SIGNALLED=interrupted; exit 130' INT
trap 'SIGNALLED=terminated; exit 143' TERM
trap 'SIGNALLED=hangup; exit 129' HUP
mkdir -p "$BUILD"
# the inner build prints its own one-line FAILED message
unshare --mount --propagation private "$BASH" "$SELF" __build "$BUILD" || exit $?

# Swap into place: the complete root appears under its final name in one rename.
if [ -e "$ROOT" ]; then
    OLD=$CACHE/.arm64-trixie.old.$$
    mv "$ROOT" "$OLD"
    mv "$BUILD" "$ROOT"
    safe_rm "$OLD"
else
    mv "$BUILD" "$ROOT"
fi
trap - EXIT INT TERM HUP
say "root ready at $ROOT ($(du -sh "$ROOT" | cut -f1)) after $(elapsed "$T_ALL")s"
echo "$ROOT"
