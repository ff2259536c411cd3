"""The training page on real photos, as a person uses it: accuracy, time, and the README's screenshot.

usage: python benchmarks/page_demo.py [--per-class 30] [--classes trouser,bag,sneaker,dress] [--epochs 5]
           [--resolution 64] [--screenshot docs/web-page.png] [--exports DIR]

Exports EfficientNet-Lite0 (ImageNet weights) top-2 with mobiletl, writes --per-class Fashion-MNIST training
images of each class as PNG files (/usr/share/datasets/fashion-mnist, Debian package dataset-fashion-mnist),
serves the page with serve.py, and drives headless Chromium (device_runner/web/test/drive-page.mjs) at a phone's
viewport: classes named and photos picked through the page's own inputs, Train pressed, a test-set photo tried.
Then the same folder through the Node CLI (onnxruntime-web WASM) for comparison. Prints page and CLI
validation accuracy (the page's 20 % split), wall time, and the test photo's prediction; saves the screenshot.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "device_runner" / "web"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--classes", default="trouser,bag,sneaker,dress")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--screenshot", default=str(REPO / "docs" / "web-page.png"))
    p.add_argument("--exports", help="cache folder for the export")
    a = p.parse_args()
    from PIL import Image

    classes = a.classes.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="page-demo-"))
    art = Path(a.exports or tmp) / f"lite0-top2-{a.resolution}"
    if not (art / "manifest.json").exists():
        subprocess.run([str(REPO / ".venv" / "bin" / "mobiletl-export"), "--model", "efficientnet-lite0", "--top-k", "2",
                        "--resolution", str(a.resolution), "--num-classes", str(len(classes)), "--out", str(art)],
                       check=True, stdout=subprocess.DEVNULL)
    x, y = idx(FMNIST / "train-images-idx3-ubyte.gz"), idx(FMNIST / "train-labels-idx1-ubyte.gz")
    data = tmp / "photos"
    request_classes = []
    for name in sorted(classes):
        (data / name).mkdir(parents=True)
        files = []
        for k, i in enumerate(np.flatnonzero(y == NAMES.index(name))[:a.per_class]):
            f = data / name / f"{k:03d}.png"
            Image.fromarray(x[i]).resize((112, 112), Image.BICUBIC).save(f)  # photo-sized, as a phone would give
            files.append(str(f))
        request_classes.append([name, files])
    tx, ty = idx(FMNIST / "t10k-images-idx3-ubyte.gz"), idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    probe_label = sorted(classes)[0]
    probe = tmp / "probe.png"
    Image.fromarray(tx[np.flatnonzero(ty == NAMES.index(probe_label))[0]]).resize((112, 112), Image.BICUBIC).save(probe)

    settings = {"epochs": a.epochs, "batch-size": 8, "val-split": 0.2}
    server = subprocess.Popen([sys.executable, str(WEB / "serve.py"), "--export", str(art), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split()[1]
    try:
        req = tmp / "request.json"
        req.write_text(json.dumps({"url": url + "?sw=0", "classes": request_classes, "settings": settings,
                                   "try": str(probe), "screenshot": a.screenshot, "timeout_s": 900}))
        t0 = time.perf_counter()
        out = subprocess.run(["node", str(WEB / "test" / "drive-page.mjs"), str(req)], capture_output=True, text=True,
                             check=True)
        page_s = time.perf_counter() - t0
    finally:
        server.terminate()
    page = json.loads(out.stdout)
    if page["state"] != "done":
        print("page failed:", page.get("errorBox"), file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    cli = subprocess.run(["node", str(WEB / "node" / "cli.mjs"), "--artifacts", str(art), "--data", str(data), "--out",
                          str(tmp / "run"), "--backend", "wasm", "--epochs", str(a.epochs), "--batch-size", "8",
                          "--val-split", "0.2", "--no-progress"], capture_output=True, text=True, check=True)
    cli_s = time.perf_counter() - t0
    last = json.loads(cli.stdout)
    e = page["epochs"][-1]
    print(f"EfficientNet-Lite0 (ImageNet) top-2 mobiletl, {a.resolution} px, {len(classes)} Fashion-MNIST classes x "
          f"{a.per_class} photos, {a.epochs} epochs, batch 8, 20 % validation")
    print(f"page (Chromium, WASM, {page['loaded']['threads']} threads, isolated {page['loaded']['isolated']}): "
          f"train loss {page['epochs'][0]['train_loss']:.3f} -> {e['train_loss']:.3f}, val acc {e['val_acc']:.3f}, "
          f"{page_s:.1f} s including browser start; test photo of a {probe_label}: predicted {page['prediction']}")
    print(f"Node CLI (WASM): val acc {last['val_acc']:.3f}, train loss {last['train_loss']:.3f}, {cli_s:.1f} s")
    print(f"screenshot: {a.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
