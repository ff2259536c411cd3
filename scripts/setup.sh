#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Idempotent: re-running is a no-op unless
# pyproject.toml changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Fashion-MNIST for the real-data test and benchmark (Debian package; needs root, as on these machines).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch==2.13.0 resolves to the CPU build that lies on this machine's disk (see README).
    .venv/bin/python -m pip install -q -e ".[export,test,plot]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
