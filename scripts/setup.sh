#!/usr/bin/env bash
# Create the environments and install the project. Idempotent: re-running is a no-op unless pyproject.toml
# changed. Usage: bash scripts/setup.sh
#   .venv               the compiler + tests: torch, onnx, onnxruntime-training 1.19.2 ([export,test,plot])
#   .venv-runner        what a device installs: the runner on the newest plain onnxruntime, no torch, no onnx
#   .venv-runner-min    the same on the oldest onnxruntime the portable step supports (1.17)
# (plain onnxruntime and onnxruntime-training cannot share an environment: both install `onnxruntime`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Fashion-MNIST for the real-data test and benchmark (Debian package; needs root, as on these machines).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null
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
install .venv-runner -e ".[runner]"
install .venv-runner-min -e ".[runner]" "onnxruntime==1.17.3" "numpy<2"
