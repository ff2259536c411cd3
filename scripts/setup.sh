#!/usr/bin/env bash
# Create the environments and install the project. Idempotent: re-running is a quiet no-op unless pyproject.toml
# or device_runner/web/package-lock.json changed. Usage: bash scripts/setup.sh
#   .venv               the compiler + tests: torch, onnx, onnxruntime-training 1.19.2 ([export,test,plot])
#   .venv-runner        what a device installs: the runner on the newest plain onnxruntime, no torch, no onnx
#   .venv-runner-min    the same on the oldest onnxruntime the portable step supports (1.17)
#   device_runner/web/node_modules   the JavaScript runner and its tests (`npm ci`; Node.js >= 18, Chromium)
# (plain onnxruntime and onnxruntime-training cannot share an environment: both install `onnxruntime`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Debian packages, only where their files are missing (needs root, as on these machines): Fashion-MNIST for the
# real-data test and benchmark; Node.js >= 18, npm and Chromium for the JavaScript runner and its browser tests.
node_ok() { command -v node >/dev/null && node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)'; }
packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
node_ok || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
[ -x /usr/bin/chromium ] || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
fi
# Debian's /usr/bin/chromium sources /etc/chromium.d/dev-shm, which tests `[ $shm_avail -lt 4080218931 ]` with
# shm_avail from `findmnt -T /dev/shm`: where /dev/shm is mounted twice (containers) findmnt prints two lines and
# every start prints "/usr/bin/chromium: 9: [: <bytes>: unexpected operator" (the check is skipped, nothing else
# happens). A file sourced before it keeps findmnt's first line. (The test driver passes --disable-dev-shm-usage.)
if [ -f /etc/chromium.d/dev-shm ] && [ -w /etc/chromium.d ] && [ ! -f /etc/chromium.d/00-findmnt-first-line ] \
        && [ "$(findmnt -bnr -o avail -T /dev/shm | wc -l)" -gt 1 ]; then
    cat >/etc/chromium.d/00-findmnt-first-line <<'EOF'
# Written by mobiletl-export's scripts/setup.sh. /dev/shm is mounted more than once here, so findmnt prints a line
# per mount and the numeric test in /etc/chromium.d/dev-shm fails noisily at every start: keep the first line.
findmnt() { command findmnt "$@" | head -n 1; }
EOF
fi
hash=$(sha256sum pyproject.toml | cut -c1-16)
install() {  # install VENV PIP-ARGS...: once per pyproject.toml version
    local venv=$1
    shift
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
    if [ ! -f "$venv/.installed-$hash" ]; then
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q "$@"
        rm -f "$venv"/.installed-*
        touch "$venv/.installed-$hash"
    fi
}
# torch==2.13.0 resolves to the CPU build that lies on this machine's disk (see README).
install .venv -e ".[export,test,plot]"
install .venv-runner -e ".[runner,simulation]"
install .venv-runner-min -e ".[runner]" "onnxruntime==1.17.3" "numpy<2"
# The JavaScript runner (device_runner/web): `npm ci` once per package-lock.json version (stamp in node_modules,
# which npm ci recreates). ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's postinstall would download extras
# (and fails offline); its CPU binaries are in the package.
node_ok || { echo "setup.sh: Node.js >= 18 is needed, found $(node --version 2>/dev/null || echo none)" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup.sh: npm is needed (Debian package npm)" >&2; exit 1; }
web=device_runner/web
lock=$(sha256sum "$web/package-lock.json" | cut -c1-16)
if [ ! -f "$web/node_modules/.installed-$lock" ]; then
    (cd "$web" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$web/node_modules/.installed-$lock"
fi
