"""The JavaScript runner (device_runner/web) against the Python runner and independent references.

- PCG32 (the shared shuffle) against the reference implementation's published output, and JS == Python orders;
- the bilinear resize (device_runner/resize.py and its JS copy) against Pillow run axis by axis, and JS == numpy;
- preprocessing (resize + normalisation) bit-exact between the two runners; safetensors files both ways;
- the Node CLI (onnxruntime-node, and onnxruntime-web's WASM in Node) against `mobiletl-train` on the same
  folder of PNG/JPEG images: per-epoch losses, trained parameters, and the joined model.onnx's logits and
  class names;
- bad inputs (a missing or corrupt export file, an undecodable image, an empty class) give one line and exit 2.
Needs node >= 18 and `npm ci` in device_runner/web (scripts/setup.sh does both).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import export_randomized

from device_runner.order import PCG32, permutation
from device_runner.resize import resize_bilinear

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "device_runner" / "web"
CLI = WEB / "node" / "cli.mjs"
RUNNER_PY = ROOT / ".venv-runner" / "bin" / "python"
CLASSES = ["cat", "dog", "fox", "owl"]


@pytest.fixture(scope="module", autouse=True)
def node_ready():
    if shutil.which("node") is None or not (WEB / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("node or device_runner/web/node_modules is missing: run `bash scripts/setup.sh`")


def worker(request: dict):
    out = subprocess.run(["node", str(ROOT / "tests" / "web_worker.mjs")], input=json.dumps(request),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def unb64(s: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype)


# -- shuffle ---------------------------------------------------------------------------------------------------
def test_pcg32_matches_reference_output():
    # pcg32-global-demo of pcg-random.org's pcg_basic.c: pcg32_srandom_r(42, 54), first six outputs
    rng = PCG32(42, 54)
    assert [rng.next() for _ in range(6)] == [0xA15C02B7, 0x7B47F409, 0xBA1D3330, 0x83D2F293, 0xBFA4784B,
                                              0xCBED606E]


def test_js_orders_equal_python():
    cases = [[10, 0, 0], [1000, 7, 0], [999, 3, 1], [5, 2**40, 2], [1, 0, 0], [60000, 11, 0]]
    js = worker({"op": "permutation", "cases": cases})
    for (n, seed, stream), order in zip(cases, js):
        assert order == permutation(n, seed, stream).tolist()
    assert sorted(js[-1]) == list(range(60000))


# -- preprocessing ---------------------------------------------------------------------------------------------
def _pillow_axis_by_axis(a: np.ndarray, ow: int, oh: int) -> np.ndarray:
    """Pillow's BILINEAR, horizontal pass then vertical pass as two one-axis resizes (Resample.c's order)."""
    from PIL import Image

    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    h = a.shape[0]
    if ow != a.shape[1]:
        im = im.resize((ow, h), Image.BILINEAR)
    if oh != h:
        im = im.resize((ow, oh), Image.BILINEAR)
    return np.asarray(im).reshape(oh, ow, a.shape[2])


def test_resize_equals_pillow_and_js():
    rng = np.random.default_rng(0)
    cases, expected = [], []
    shapes = [(640, 427, 224, 224), (4000, 3000, 64, 64), (17, 300, 64, 64), (20, 20, 32, 32), (224, 224, 224, 224)]
    shapes += [tuple(int(v) for v in rng.integers(3, 130, 4)) for _ in range(60)]
    for w, h, ow, oh in shapes:
        c = int(rng.choice([1, 3]))
        a = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        ours = resize_bilinear(a, ow, oh)
        np.testing.assert_array_equal(ours, _pillow_axis_by_axis(a, ow, oh), err_msg=f"{(w, h, c, ow, oh)}")
        if w * h < 200_000:
            cases.append([w, h, c, ow, oh, b64(a)])
            expected.append(ours)
    for got, want in zip(worker({"op": "resize", "cases": cases}), expected):
        np.testing.assert_array_equal(unb64(got, np.uint8), want.reshape(-1))


@pytest.mark.parametrize("spec", [None, {"resize": "squash"}, {"resize": "shorter-side", "crop_fraction": 0.875}])
def test_js_input_equals_python_preprocess(spec):
    from device_runner.data import preprocess

    rng = np.random.default_rng(1)
    shapes = [(40, 30, 3), (32, 32, 1), (9, 70, 3), (427, 640, 3), (301, 17, 1), (37, 36, 3)]
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    js = worker({"op": "input", "resolution": 32, "mean": mean, "std": std, "spec": spec,
                 "images": [[im.shape[1], im.shape[0], im.shape[2], b64(im)] for im in images]})
    np.testing.assert_array_equal(unb64(js, np.float32).reshape(len(shapes), 3, 32, 32),
                                  preprocess(images, 32, mean, std, spec))


def test_safetensors_both_ways(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(2)
    tensors = {"a.weight": rng.standard_normal((3, 4, 1, 1)).astype(np.float32),
               "exp_avg/a.weight": rng.standard_normal(5).astype(np.float32)}
    written = worker({"op": "safetensors-write", "metadata": {"step": "3"},
                      "tensors": [[k, list(v.shape), b64(v)] for k, v in tensors.items()]})
    (tmp_path / "js.safetensors").write_bytes(base64.b64decode(written))
    loaded = load_file(str(tmp_path / "js.safetensors"))
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        np.testing.assert_array_equal(loaded[k], tensors[k])
    save_file(tensors, str(tmp_path / "py.safetensors"), metadata={"step": "9"})
    read = worker({"op": "safetensors-read", "file": base64.b64encode((tmp_path / "py.safetensors").read_bytes())
                   .decode()})
    assert read["metadata"] == {"step": "9"}
    for k, (shape, data) in read["tensors"].items():
        assert shape == list(tensors[k].shape)
        np.testing.assert_array_equal(unb64(data, np.float32), tensors[k].reshape(-1))


# -- the Node CLI against mobiletl-train -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return export_randomized(tmp_path_factory.mktemp("web") / "mbv3s", 5)


def image_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Class = brightness band; PNG and JPEG, RGB, grey and RGBA, sizes that need resizing (up and down)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(16, 64, 2))
            a = np.clip(c * 55 + 25 + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
            kind = i % 4
            if kind == 0:
                Image.fromarray(a).save(root / name / f"{i:02d}.png")
            elif kind == 1:
                Image.fromarray(a).save(root / name / f"{i:02d}.jpg", quality=90)
            elif kind == 2:
                Image.fromarray(a[:, :, 0]).save(root / name / f"{i:02d}.png")
            else:
                Image.fromarray(np.dstack([a, rng.integers(0, 256, (h, w), dtype=np.uint8)])).save(
                    root / name / f"{i:02d}.png")
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    return root


def _run_python(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUNNER_PY), "-m", "device_runner", *args, "--no-progress"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def _run_js(args: list[str], cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(CLI), *args, "--no-progress"], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def _epochs(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "epoch"]


@pytest.fixture(scope="module")
def python_run(artifacts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("py")
    data = image_folder(tmp / "data")
    out = tmp / "run"
    args = ["--artifacts", str(artifacts), "--data", str(data), "--epochs", "2", "--batch-size", "8", "--lr",
            "1e-4", "--val-split", "0.2", "--seed", "3", "--allow-unused-outputs", "--out", str(out)]
    done = _run_python(args)
    assert done.returncode == 0, done.stderr
    return args, out


@pytest.mark.parametrize("backend", ["node", "wasm"])
def test_node_cli_matches_python_runner(backend, artifacts, python_run, tmp_path):
    import onnxruntime as ort
    from safetensors.numpy import load_file

    args, py_out = python_run
    js_out = tmp_path / "run"
    args = [a if a != str(py_out) else str(js_out) for a in args]
    done = _run_js(args + ["--backend", backend, "--threads", "1"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    py_epochs, js_epochs = _epochs(py_out), _epochs(js_out)
    assert len(js_epochs) == len(py_epochs) == 2
    for p, j in zip(py_epochs, js_epochs):
        assert (j["step"], j["cache_misses"], j["cache_hits"]) == (p["step"], p["cache_misses"], p["cache_hits"])
        for key in ("train_loss", "val_loss", "lr"):
            assert j[key] == pytest.approx(p[key], rel=1e-5, abs=1e-7), key
        assert j["train_acc"] == p["train_acc"] and j["val_acc"] == p["val_acc"]
    assert py_epochs[-1]["train_loss"] < py_epochs[0]["train_loss"]  # it learns (not a trivially equal run)
    py_ckpt = load_file(str(py_out / "checkpoint" / "parameters.safetensors"))
    js_ckpt = load_file(str(js_out / "checkpoint" / "parameters.safetensors"))
    assert js_ckpt.keys() == py_ckpt.keys()
    off, total = 0, 0
    for k in py_ckpt:
        scale = max(float(np.abs(py_ckpt[k]).max()), 1e-3)
        diff = np.abs(js_ckpt[k] - py_ckpt[k])
        if backend == "node":  # the same CPU kernels as onnxruntime in Python: equal to 1e-5
            assert float(diff.max()) <= 1e-5 * scale, k
        else:  # WASM kernels round differently: a few activation-mask bits flip, and Adam turns the changed
            # gradient of those elements into a different step of size ~lr (10 steps of lr 1e-4 here)
            assert float(diff.max()) <= 10 * 1e-4, k
            off, total = off + int((diff > 1e-5 * scale).sum()), total + diff.size
    assert off <= 1e-4 * max(total, 1), f"{off} of {total} parameters differ by more than 1e-5 relative"
    # the joined models: same logits on the same images, class names in the metadata
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    sessions = [ort.InferenceSession(str(run / "model.onnx")) for run in (py_out, js_out)]
    py_logits, js_logits = (s.run(["logits"], {"image": x})[0] for s in sessions)
    np.testing.assert_allclose(js_logits, py_logits, rtol=1e-5, atol=1e-5 * float(np.abs(py_logits).max()))
    names = [json.loads(s.get_modelmeta().custom_metadata_map["class_names"]) for s in sessions]
    assert names[0] == names[1] == CLASSES + ["4"]
    assert summary["model"] == str(js_out / "model.onnx")


def test_node_cli_resume_continues_where_it_stopped(artifacts, tmp_path):
    data = image_folder(tmp_path / "data", per_class=6)
    common = ["--artifacts", str(artifacts), "--data", str(data), "--allow-unused-outputs", "--epochs", "3",
              "--batch-size", "4", "--lr", "1e-4", "--checkpoint-every", "2"]
    whole = _run_js(common + ["--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    part = _run_js(common + ["--out", str(tmp_path / "part"), "--max-steps", "7"])
    assert part.returncode == 0, part.stderr
    resumed = _run_js(common + ["--out", str(tmp_path / "part"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs(tmp_path / "part")[-1]["train_loss"] == pytest.approx(_epochs(tmp_path / "whole")[-1]["train_loss"],
                                                                          rel=1e-6)
    changed = _run_js(common[:-2] + ["--checkpoint-every", "2", "--out", str(tmp_path / "part"), "--resume", "--lr",
                                     "1e-3"])
    assert changed.returncode == 2 and "--lr" in changed.stderr
    shutil.copy(next((data / "cat").glob("*.png")), data / "cat" / "new.png")
    grown = _run_js(common + ["--out", str(tmp_path / "part"), "--resume"])
    assert grown.returncode == 2 and "files of --data changed" in grown.stderr, grown.stderr


# -- bad inputs --------------------------------------------------------------------------------------------------
def _copy_export(artifacts: Path, dst: Path) -> Path:
    shutil.copytree(artifacts, dst)
    return dst


@pytest.mark.parametrize("case", ["missing-file", "corrupt-file", "no-manifest", "undecodable", "zero-byte",
                                  "empty-class", "unknown-flag", "bad-number", "too-many-classes",
                                  "unused-outputs"])
def test_node_cli_bad_inputs_one_line(case, artifacts, tmp_path):
    art, data = artifacts, image_folder(tmp_path / "data", per_class=4)
    extra: list[str] = []
    expect = {"missing-file": "artifact file missing", "corrupt-file": "does not match the manifest's sha256",
              "no-manifest": "no manifest.json", "undecodable": "1 image file cannot be decoded", "zero-byte": "cannot be decoded",
              "empty-class": "has no images", "unknown-flag": "--bogus", "bad-number": "--epochs",
              "too-many-classes": "has 6 classes", "unused-outputs": "--allow-unused-outputs"}[case]
    if case == "missing-file":
        art = _copy_export(artifacts, tmp_path / "art")
        (art / "eval_step.onnx").unlink()
    elif case == "corrupt-file":
        art = _copy_export(artifacts, tmp_path / "art")
        blob = bytearray((art / "train_step.onnx").read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (art / "train_step.onnx").write_bytes(bytes(blob))
    elif case == "no-manifest":
        art = _copy_export(artifacts, tmp_path / "art")
        (art / "manifest.json").unlink()
    elif case == "undecodable":
        good = next((data / "dog").glob("*.jpg"))
        blob = good.read_bytes()
        good.write_bytes(blob[:len(blob) * 2 // 3])  # truncated mid-scan: the header still reads
    elif case == "zero-byte":
        (data / "fox" / "empty.png").write_bytes(b"")
    elif case == "empty-class":
        (data / "zebra").mkdir()
    elif case == "unknown-flag":
        extra = ["--bogus"]
    elif case == "bad-number":
        extra = ["--epochs", "two"]
    elif case == "too-many-classes":
        for name in ("elk", "emu"):
            shutil.copytree(data / "cat", data / name)
    out = tmp_path / "run"
    if case != "unused-outputs":
        extra.append("--allow-unused-outputs")
    done = _run_js(["--artifacts", str(art), "--data", str(data), "--out", str(out), *extra])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobiletl-train-js: error:"), done.stderr
    assert expect in lines[0]
    assert not out.exists()  # nothing half-written


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# -- the page in headless Chromium ---------------------------------------------------------------------------------
def _serve(export_dir: Path):
    """serve.py on a free port; returns (process, base url)."""
    proc = subprocess.Popen([sys.executable, str(WEB / "serve.py"), "--export", str(export_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("serving "), proc.stderr.read()
    return proc, line.split()[1]


def _drive_page(request: dict, tmp_path: Path) -> dict:
    if not Path(request.get("chromium", "/usr/bin/chromium")).exists():
        pytest.fail("chromium is missing: run `bash scripts/setup.sh`")
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run(["node", str(WEB / "test" / "drive-page.mjs"), str(tmp_path / "request.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _page_classes(data: Path) -> list:
    return [[name, sorted(str(f) for f in (data / name).iterdir())] for name in CLASSES]


def test_page_trains_like_the_node_runner(artifacts, tmp_path):
    """The page, used as a person would (class names typed, photos picked, Train clicked), trains with falling
    loss and the same per-epoch losses as the Node CLI on the same images, order and settings."""
    data = image_folder(tmp_path / "data", per_class=10, seed=5)
    for f in data.rglob("*.png"):  # browsers composite transparency; keep the comparison to opaque images
        from PIL import Image

        with Image.open(f) as im:
            if im.mode == "RGBA":
                im.convert("RGB").save(f)
    settings = {"epochs": 3, "batch-size": 8, "lr": "1e-4", "val-split": 0.2}
    proc, url = _serve(artifacts)
    try:
        shot = Path(os.environ.get("MOBILETL_SCREENSHOT", tmp_path / "page.png"))
        page = _drive_page({"url": url + "?sw=0", "classes": _page_classes(data), "settings": settings,
                            "try": str(next((data / "fox").glob("*.jpg"))), "screenshot": str(shot)}, tmp_path)
    finally:
        proc.terminate()
    assert page["state"] == "done", page
    assert page["loaded"]["isolated"] is True  # serve.py's headers: WASM threads available
    assert page["errorBox"] is None and not [m for m in page["console"] if "favicon" not in m], page["console"]
    assert len(page["steps"]) == 3 * 4 and page["epochs"][-1]["train_loss"] < page["epochs"][0]["train_loss"]
    assert page["prediction"] in CLASSES and shot.stat().st_size > 10_000
    cli = _run_js(["--artifacts", str(artifacts), "--data", str(data), "--out", str(tmp_path / "run"), "--backend",
                   "wasm", "--epochs", "3", "--batch-size", "8", "--lr", "1e-4", "--val-split", "0.2",
                   "--allow-unused-outputs"])
    assert cli.returncode == 0, cli.stderr
    for p, j in zip(page["epochs"], _epochs(tmp_path / "run"), strict=True):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert p[key] == pytest.approx(j[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("case", ["corrupt-export", "undecodable", "empty-class", "too-many-classes",
                                  "split-empties-a-class"])
def test_page_bad_inputs_one_message(case, artifacts, tmp_path):
    data = image_folder(tmp_path / "data", per_class=3)
    export_dir, classes = artifacts, _page_classes(data)
    settings = {"epochs": 1}
    if case == "corrupt-export":
        export_dir = _copy_export(artifacts, tmp_path / "art")
        blob = bytearray((export_dir / "eval_step.onnx").read_bytes())
        blob[100] ^= 0xFF
        (export_dir / "eval_step.onnx").write_bytes(bytes(blob))
        expect = "does not match the manifest's sha256"
    elif case == "undecodable":
        (data / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        classes = _page_classes(data)
        expect = "cannot be read: broken.jpg"
    elif case == "empty-class":
        classes[2][1] = []
        expect = "no photos in class 'fox'"
    elif case == "too-many-classes":
        classes += [[f"extra{i}", classes[0][1]] for i in range(2)]
        expect = "this export has 5 outputs, but there are 6 classes"
    else:
        classes = [[name, files[:1]] for name, files in classes]
        settings["val-split"] = 0.5
        expect = "no training images left for"
    proc, url = _serve(export_dir)
    try:
        page = _drive_page({"url": url + "?sw=0", "classes": classes, "settings": settings}, tmp_path)
    finally:
        proc.terminate()
    assert page["state"] == "error"
    assert page["errorBox"] is not None and expect in page["errorBox"], page["errorBox"]
    assert "\n" not in page["errorBox"] and not re.search(r"\bat \S+:\d+", page["errorBox"])  # no trace


def test_page_works_offline_once_loaded(artifacts, tmp_path):
    """Service worker: after one visit the page, onnxruntime-web and the export load with the network off, and
    training works."""
    data = image_folder(tmp_path / "data", per_class=3)
    proc, url = _serve(artifacts)
    try:
        page = _drive_page({"url": url, "offline": True, "server_pid": proc.pid, "classes": _page_classes(data),
                            "settings": {"epochs": 1}}, tmp_path)
    finally:
        proc.terminate()
    assert page["offline"] is True
    assert page["loaded"]["state"] == "ready", page
    assert page["state"] == "done", page


def test_page_over_plain_http_to_another_host(artifacts, tmp_path):
    """A phone opening the page at http://<laptop's address>:8000/ is not in a secure context: no WebCrypto, no
    cross-origin isolation. The page still verifies the export (@noble/hashes) and trains on one thread."""
    data = image_folder(tmp_path / "data", per_class=3)
    proc, url = _serve(artifacts)
    port = url.rstrip("/").rsplit(":", 1)[1]
    try:
        page = _drive_page({"url": f"http://phone-lan.test:{port}/?sw=0", "classes": _page_classes(data),
                            "settings": {"epochs": 1},
                            "chromium_args": ["--host-resolver-rules=MAP phone-lan.test 127.0.0.1"]}, tmp_path)
    finally:
        proc.terminate()
    assert page["loaded"]["secure"] is False and page["loaded"]["isolated"] is False
    assert page["loaded"]["state"] == "ready", page
    assert page["state"] == "done", page
    # and a corrupt file is still caught there
    export_dir = _copy_export(artifacts, tmp_path / "art")
    blob = bytearray((export_dir / "backbone.onnx").read_bytes())
    blob[-5] ^= 0x01
    (export_dir / "backbone.onnx").write_bytes(bytes(blob))
    proc, url = _serve(export_dir)
    port = url.rstrip("/").rsplit(":", 1)[1]
    try:
        page = _drive_page({"url": f"http://phone-lan.test:{port}/?sw=0",
                            "chromium_args": ["--host-resolver-rules=MAP phone-lan.test 127.0.0.1"]}, tmp_path)
    finally:
        proc.terminate()
    assert "does not match the manifest's sha256" in (page["errorBox"] or ""), page
