"""A board-class machine: `mobiletl-train` on aarch64, Python 3.13, plain onnxruntime 1.32 (qemu user mode).

scripts/arm_root.sh builds (once, cached in /var/cache/mobiletl, about 12 minutes on 2 cores) a Debian 13
arm64 root with Python 3.13 and only the runner's wheels for aarch64 (onnxruntime, numpy, Pillow,
safetensors, tqdm; no torch, no onnx); scripts/arm_run.sh runs a command in it with this repository at
/work/main. The same tiny export trains there and in `.venv-runner` (x86-64, the newest onnxruntime; the root
pins 1.32.0): losses, trained parameters and the joined model's logits agree to 1e-5.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import randomize
from safetensors.numpy import load_file

from mobiletl_export.export import ExportConfig, export
from mobiletl_export.models import create_model

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / ".venv-runner" / "bin" / "python"


@pytest.fixture(scope="module")
def arm_root():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "arm_root.sh")], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _arm(args: list[str], *binds: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "scripts" / "arm_run.sh")]
    for b in binds:
        cmd += ["--bind", str(b)]
    return subprocess.run(cmd + ["--"] + args, capture_output=True, text=True, timeout=timeout)


def test_arm_root_is_aarch64_python313_plain_onnxruntime(arm_root):
    proc = _arm(["python", "-c", "import json, platform, sys, onnxruntime, onnxruntime.capi._pybind_state as C; "
                 "print(json.dumps([platform.machine(), sys.version_info[:2], onnxruntime.__version__, "
                 "hasattr(C, 'Module'), 'torch' in sys.modules]))"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    machine, version, ort_version, training_api, torch = json.loads(proc.stdout.strip().splitlines()[-1])
    assert machine == "aarch64" and tuple(version) == (3, 13) and not training_api and not torch
    assert tuple(int(x) for x in ort_version.split(".")[:2]) >= (1, 17)
    for module in ("torch", "onnx"):
        probe = _arm(["python", "-c", f"import {module}"])
        assert probe.returncode != 0, f"the board environment must not have {module}"


def test_training_on_aarch64_equals_x86(arm_root, tmp_path):
    art = tmp_path / "art"
    model = randomize(create_model("mbv3-small", num_classes=4, dropout=0.0), res=32)
    with torch.no_grad():  # logits of order 1: a loss of large logits is a difference of large numbers, where
        model.classifier[3].weight.mul_(0.05)  # two builds' 1e-6 rounding becomes 1e-5 of the loss
    # SGD: AdamW's update lr * m / (sqrt(v) + eps) turns gradients at float-noise level (|g| ~ 1e-8, here in
    # the head) into full +-lr steps whose sign the noise decides, so no two builds agree there (the parity
    # tests bound those elements separately); SGD's update is proportional to the gradient
    export(ExportConfig(model="mbv3-small", top_k=2, num_classes=4, resolution=32, optimizer="sgd", out=str(art)),
           model=model)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 24)
    x = np.clip((y * 50 + 20)[:, None, None, None] + rng.integers(-15, 16, (24, 20, 20, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    args = ["-m", "device_runner", "--artifacts", str(art), "--data", str(tmp_path / "data.npz"), "--epochs", "2",
            "--batch-size", "8", "--val-split", "0.25", "--threads", "1", "--no-progress", "--lr", "3e-5"]
    arm = _arm(["python", *args, "--out", str(tmp_path / "arm")], tmp_path)
    assert arm.returncode == 0, arm.stderr[-3000:]
    x86 = subprocess.run([str(RUNNER), *args, "--out", str(tmp_path / "x86")], capture_output=True, text=True,
                         cwd=ROOT)
    assert x86.returncode == 0, x86.stderr[-3000:]

    def metrics(run):
        return [json.loads(s) for s in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    a, b = metrics("arm"), metrics("x86")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 6]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    pa = load_file(str(tmp_path / "arm" / "checkpoint" / "parameters.safetensors"))
    pb = load_file(str(tmp_path / "x86" / "checkpoint" / "parameters.safetensors"))
    assert set(pa) == set(pb) and len(pa) > 0
    initial = load_file(str(art / "parameters.safetensors"))
    moved = 0
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-5, atol=1e-6, err_msg=key)
        moved += key in initial and not np.array_equal(pa[key], initial[key])
    assert moved > 0, "training changed the parameters"
    images = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    la = ort.InferenceSession(str(tmp_path / "arm" / "model.onnx")).run(None, {"image": images})[0]
    lb = ort.InferenceSession(str(tmp_path / "x86" / "model.onnx")).run(None, {"image": images})[0]
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)
    print(f"\naarch64 vs x86: largest parameter difference "
          f"{max(float(np.abs(pa[k] - pb[k]).max()) for k in pa):.2e}, loss {a[-1]['train_loss']:.6f} vs "
          f"{b[-1]['train_loss']:.6f}", file=sys.stderr)
