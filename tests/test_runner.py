"""mobiletl-train: the on-device loop (ORT only), resume after SIGKILL, bad input, joined export."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import export_randomized

from device_runner.cli import main
from device_runner.ort import nchwc_block_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """mbv3-small with calibrated BN statistics (default statistics collapse a random net's features)."""
    return export_randomized(tmp_path_factory.mktemp("art") / "mbv3s", 4)


def synthetic(path: Path, n=96, classes=4, size=20, seed=0, rgb=True) -> Path:
    """Images whose class is their brightness band: learnable, tiny."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    base = (y * (200 // classes) + 20)[:, None, None, None]
    x = np.clip(base + rng.integers(-15, 16, (n, size, size, 3 if rgb else 1)), 0, 255).astype(np.uint8)
    np.savez(path, x=x if rgb else x[..., 0], y=y)
    return path


def run(args, capsys):
    code = main(args + ["--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def nchwc_artifacts(tmp_path_factory):
    """The same on ORT's NCHWc kernels (--target host), mbv2 (its depthwise channels are multiples of 16)."""
    if not nchwc_block_size():
        pytest.skip("this ONNX Runtime has no NCHWc kernels (not x86)")
    return export_randomized(tmp_path_factory.mktemp("art") / "mbv2-host", 4, "mbv2", target="host")


@pytest.mark.parametrize("target", ["generic", "host"])
def test_trains_evaluates_and_exports_joined_model(target, request, tmp_path, capsys):
    artifacts = request.getfixturevalue("artifacts" if target == "generic" else "nchwc_artifacts")
    data = synthetic(tmp_path / "d.npz")
    out = tmp_path / "run"
    code, err = run(["--artifacts", str(artifacts), "--data", str(data), "--epochs", "3", "--batch-size", "8",
                     "--lr", "3e-3", "--out", str(out), "--val-split", "0.25"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[0]["cache_misses"] == 72 and epochs[-1]["cache_hits"] == 2 * 72  # features computed once
    # the joined model image -> logits reproduces the runner's own validation accuracy
    from device_runner.data import load_dataset, preprocess, split

    manifest = json.loads((artifacts / "manifest.json").read_text())
    _, val = split(load_dataset(str(data), 4), 0.25, 0)
    x = preprocess([val.image(i) for i in range(len(val))], 32, manifest["normalization"]["mean"],
                   manifest["normalization"]["std"], manifest["preprocess"])
    logits = ort.InferenceSession(str(out / "model.onnx")).run(["logits"], {"image": x})[0]
    assert (logits.argmax(1) == val.labels).mean() == pytest.approx(epochs[-1]["val_acc"])
    assert epochs[-1]["val_acc"] > 0.5  # 4 classes: chance is 0.25


def test_disk_cache_when_over_budget(artifacts, tmp_path, capsys):
    data = synthetic(tmp_path / "d.npz", n=40)
    code, err = run(["--artifacts", str(artifacts), "--data", str(data), "--epochs", "2", "--cache-mb", "0",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert (tmp_path / "r" / "features.cache").exists()
    last = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["cache"] == "disk" and last["cache_hits"] == 36


def _kill_after_checkpoint(cmd, run_dir: Path, min_step: int) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    state = run_dir / "checkpoint" / "state.json"
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= min_step:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(state.read_text())["step"]


def test_sigkill_then_resume_equals_uninterrupted_run(artifacts, tmp_path):
    data = synthetic(tmp_path / "d.npz", n=160)
    base = [sys.executable, "-m", "device_runner", "--artifacts", str(artifacts), "--data", str(data),
            "--epochs", "3", "--batch-size", "4", "--checkpoint-every", "5", "--threads", "1", "--no-progress",
            "--seed", "3", "--lr", "1e-3"]
    full = tmp_path / "full"
    subprocess.run(base + ["--out", str(full)], check=True, capture_output=True, cwd=ROOT)
    killed = tmp_path / "killed"
    step_at_kill = _kill_after_checkpoint(base + ["--out", str(killed)], killed, min_step=40)
    metrics = [json.loads(s) for s in (killed / "metrics.jsonl").read_text().splitlines() if s.strip()]
    assert step_at_kill % 5 == 0 and step_at_kill >= 40 and step_at_kill < 108  # killed mid-run (108 steps)
    # at most one checkpoint interval lost: the last checkpoint is within 5 steps of the last step logged
    logged = max(r["step"] for r in metrics)
    assert logged - step_at_kill <= 5
    proc = subprocess.run(base + ["--out", str(killed), "--resume"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    from safetensors.numpy import load_file

    a = load_file(str(full / "checkpoint" / "parameters.safetensors"))
    b = load_file(str(killed / "checkpoint" / "parameters.safetensors"))
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert set(a) == set(b) and set(manifest["trainable"]) < set(a)  # + AdamW moments
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    final_a = json.loads((full / "checkpoint" / "state.json").read_text())
    final_b = json.loads((killed / "checkpoint" / "state.json").read_text())
    assert final_a["step"] == final_b["step"] == 108  # 144 training samples / 4 x 3 epochs


# ---- bad input: one line, exit 2, previous runs untouched ------------------------------------------------------

def _corrupt(folder: Path, name: str, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(folder, copy)
    with open(copy / name, "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage")
    return copy


@pytest.mark.parametrize("case, message", [
    ("missing-folder", "artifact folder not found"),
    ("corrupt-checkpoint", "artifact file corrupt"),
    ("missing-file", "artifact file missing"),
    ("malformed-manifest", "field 'portable' is missing"),
    ("manifest-list", "has format 'list'"),
    ("bad-labels", "label 7 is outside [0, 4)"),
    ("empty", "is empty"),
    ("nan", "NaN"),
    ("channels", "expected a grey or RGB image"),
    ("tiny", "too small"),
    ("no-data", "data not found"),
    ("existing-run", "already exists"),
    ("other-target", "NCHWc block size 8"),
    ("corrupt-step", "artifact file corrupt"),
    ("corrupt-parameters", "artifact file corrupt"),
    ("old-format", "export the folder again"),
])
def test_bad_input(case, message, artifacts, tmp_path, capsys):
    art, data = artifacts, synthetic(tmp_path / "d.npz")
    out = tmp_path / "run"
    if case == "missing-folder":
        art = tmp_path / "nope"
    elif case == "corrupt-checkpoint":
        art = _corrupt(artifacts, "checkpoint", tmp_path)
    elif case == "missing-file":
        art = tmp_path / "art"
        shutil.copytree(artifacts, art)
        (art / "eval_step.onnx").unlink()
    elif case == "bad-labels":
        np.savez(data, x=np.zeros((4, 16, 16), np.uint8), y=np.array([0, 1, 7, 2]))
    elif case == "empty":
        np.savez(data, x=np.zeros((0, 16, 16), np.uint8), y=np.zeros(0, np.int64))
    elif case == "nan":
        np.savez(data, x=np.full((4, 16, 16), np.nan, np.float32), y=np.zeros(4, np.int64))
    elif case == "channels":
        np.savez(data, x=np.zeros((4, 16, 16, 5), np.uint8), y=np.zeros(4, np.int64))
    elif case == "tiny":
        np.savez(data, x=np.zeros((4, 4, 4), np.uint8), y=np.zeros(4, np.int64))
    elif case == "no-data":
        data = tmp_path / "missing.npz"
    elif case == "other-target":  # exported for AVX2's block size: must not run on another block size
        art = tmp_path / "art"
        shutil.copytree(artifacts, art)
        manifest = json.loads((art / "manifest.json").read_text())
        other = 16 if nchwc_block_size() == 8 else 8
        manifest["target"] = {"name": f"x86-block{other}", "nchwc_block": other}
        (art / "manifest.json").write_text(json.dumps(manifest))
        message = f"NCHWc block size {other}"
    elif case in ("corrupt-step", "corrupt-parameters"):
        art = _corrupt(artifacts, "train_step.onnx" if case == "corrupt-step" else "parameters.safetensors", tmp_path)
    elif case in ("malformed-manifest", "manifest-list"):  # hand-edited
        art = tmp_path / "art"
        shutil.copytree(artifacts, art)
        manifest = json.loads((art / "manifest.json").read_text())
        del manifest["portable"]
        (art / "manifest.json").write_text(json.dumps(manifest if case == "malformed-manifest" else [manifest]))
    elif case == "old-format":  # written before the portable step existed
        art = tmp_path / "art"
        shutil.copytree(artifacts, art)
        manifest = json.loads((art / "manifest.json").read_text())
        manifest["format"] = "mobiletl-export/1"
        (art / "manifest.json").write_text(json.dumps(manifest))
    elif case == "existing-run":
        out.mkdir()
        (out / "metrics.jsonl").write_text("precious\n")
    code, err = run(["--artifacts", str(art), "--data", str(data), "--out", str(out)], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    if case == "existing-run":
        assert (out / "metrics.jsonl").read_text() == "precious\n"
    else:
        assert not out.exists()


def test_image_folder_dataset(artifacts, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(4):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(6):
            arr = np.clip(c * 50 + 20 + rng.integers(-10, 10, (24, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / f"class{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    code, err = run(["--artifacts", str(artifacts), "--data", str(tmp_path / "imgs"), "--epochs", "1",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("target", ["generic", "host"])
@pytest.mark.parametrize("venv", [".venv-runner", ".venv-runner-min"])
def test_runner_on_plain_onnxruntime_without_torch_or_onnx(venv, target, request, tmp_path):
    """What a device installs (`pip install ".[runner]"`: numpy, onnxruntime, Pillow, safetensors, tqdm), on the
    newest onnxruntime and on 1.17, trains an export end to end and writes the joined model (on --target host
    artifacts too: their check probes ORT's NCHWc block size)."""
    artifacts = request.getfixturevalue("artifacts" if target == "generic" else "nchwc_artifacts")
    py = ROOT / venv / "bin" / "python"
    for module in ("torch", "onnx"):
        probe = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"the runner environment must not have {module}"
    data = synthetic(tmp_path / "d.npz", n=40)
    proc = subprocess.run([str(py), "-m", "device_runner", "--artifacts", str(artifacts), "--data", str(data),
                           "--epochs", "2", "--out", str(tmp_path / "r"), "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epoch"] == 2
    logits = ort.InferenceSession(str(tmp_path / "r" / "model.onnx")).run(
        None, {"image": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert logits.shape == (2, 4) and np.isfinite(logits).all()
    compiler = subprocess.run([str(ROOT / venv / "bin" / "mobiletl-export"), "--model", "mbv2", "--top-k", "1"],
                              capture_output=True, text=True)
    assert compiler.returncode == 2 and 'pip install ".[export]"' in compiler.stderr
    assert len(compiler.stderr.strip().splitlines()) == 1, compiler.stderr
    module = subprocess.run([str(py), "-m", "mobiletl_export", "--model", "mbv2", "--top-k", "1"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert module.returncode == 2 and len(module.stderr.strip().splitlines()) == 1, module.stderr


def test_both_backends_train_the_same(artifacts, tmp_path):
    """--backend ort-training (onnxruntime-training's Module/Optimizer on the ORT-training artifacts) and the
    default portable step give the same losses and the same joined model (to 1e-4: over 12 AdamW steps, Adam
    turns float noise in near-zero gradients into +-lr steps, differently in the two float32 implementations)."""
    data = synthetic(tmp_path / "d.npz", n=48)
    runs = {}
    for backend in ("portable", "ort-training"):
        out = tmp_path / backend
        assert main(["--artifacts", str(artifacts), "--data", str(data), "--epochs", "2", "--batch-size", "8",
                     "--out", str(out), "--no-progress", "--backend", backend]) == 0
        runs[backend] = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs["portable"], runs["ort-training"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    la, lb = (ort.InferenceSession(str(tmp_path / b / "model.onnx")).run(None, {"image": images})[0]
              for b in ("portable", "ort-training"))
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4 * np.abs(lb).max())  # 1e-4 of the logits' scale


def test_resume_refuses_another_backend(artifacts, tmp_path, capsys):
    data = synthetic(tmp_path / "d.npz", n=16)
    out = tmp_path / "r"
    assert main(["--artifacts", str(artifacts), "--data", str(data), "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    code = main(["--artifacts", str(artifacts), "--data", str(data), "--epochs", "2", "--out", str(out),
                 "--no-progress", "--resume", "--backend", "ort-training"])
    assert code == 2 and "resume it with the same backend" in capsys.readouterr().err


def test_portable_backend_needs_only_its_files(artifacts, tmp_path, capsys):
    """A device may leave the ORT-training files off: the portable backend reads only its own."""
    art = tmp_path / "art"
    shutil.copytree(artifacts, art)
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"):
        (art / name).unlink()
    code, err = run(["--artifacts", str(art), "--data", str(synthetic(tmp_path / "d.npz", n=16)), "--epochs", "1",
                     "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err


def test_force_replaces_only_run_folders(artifacts, tmp_path, capsys):
    data = synthetic(tmp_path / "d.npz", n=16)
    victim = tmp_path / "photos"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    code, err = run(["--artifacts", str(artifacts), "--data", str(data), "--out", str(victim), "--force"], capsys)
    assert code == 2 and "not one (no run.json)" in err and len(err.strip().splitlines()) == 1
    assert (victim / "notes.txt").read_text() == "precious"
    inside = tmp_path / "data"
    inside.mkdir()
    (inside / "run.json").write_text("{}")
    np.savez(inside / "d.npz", **np.load(data))
    code, err = run(["--artifacts", str(artifacts), "--data", str(inside / "d.npz"), "--out", str(inside), "--force"],
                    capsys)
    assert code == 2 and "holds the artifacts or the data" in err
    assert (inside / "d.npz").exists()


@pytest.mark.parametrize("flag, value", [("--lr", "0.5"), ("--batch-size", "3"), ("--epochs", "4"), ("--seed", "9")])
def test_resume_refuses_changed_options(flag, value, artifacts, tmp_path, capsys):
    data = synthetic(tmp_path / "d.npz", n=16)
    base = ["--artifacts", str(artifacts), "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "2",
            "--lr", "1e-3"]
    assert run(base, capsys)[0] == 0
    changed = base + [flag, value]
    code, err = run(changed + ["--resume"], capsys)
    assert code == 2 and f"was started with {flag}" in err, err
    assert run(base + ["--resume"], capsys)[0] == 0  # the same options resume
