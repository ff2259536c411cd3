"""Centre crop (the default) against squash, on real non-square photos with the ImageNet weights.

usage: python benchmarks/preprocess.py [--exports DIR]

EfficientNet-Lite0 with its ImageNet weights and 1000-class head (so the export's inference.onnx is the ImageNet
classifier), 224 px; scikit-learn's two sample photos (china.jpg: a palace, flower.jpg: a daisy, 427 x 640) and
portrait / wide cuts of them. Each image goes through the runner's own preprocessing (device_runner.data.fit)
with the manifest's `preprocess` = shorter-side + centre crop 0.875 (torchvision's evaluation) and = squash, and
the table gives the probability of the photo's ImageNet class (palace 698, daisy 985) and whether it is top-1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"china.jpg": (698, "palace"), "flower.jpg": (985, "daisy")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exports", help="cache folder for the export")
    a = p.parse_args()
    import json

    import onnxruntime as ort
    from sklearn.datasets import load_sample_images

    from device_runner.data import preprocess

    art = Path(a.exports or tempfile.mkdtemp(prefix="prep-")) / "lite0-imagenet-224"
    if not (art / "manifest.json").exists():
        subprocess.run([str(REPO / ".venv" / "bin" / "mobiletl-export"), "--model", "efficientnet-lite0", "--top-k", "1",
                        "--num-classes", "1000", "--out", str(art)], check=True, capture_output=True)
    manifest = json.loads((art / "manifest.json").read_text())
    session = ort.InferenceSession(str(art / "inference.onnx"), providers=["CPUExecutionProvider"])
    photos = load_sample_images()
    images = []
    for name, img in zip(photos.filenames, photos.images):
        name = Path(name).name
        h, w = img.shape[:2]
        images += [(f"{name} {w}x{h}", name, img),
                   (f"{name} portrait {h * 2 // 3}x{h}", name, img[:, (w - h * 2 // 3) // 2:(w + h * 2 // 3) // 2]),
                   (f"{name} wide {w}x{h // 2}", name, img[h // 4:h // 4 + h // 2])]
    specs = {"crop": manifest["preprocess"], "squash": {"resize": "squash"}}
    assert specs["crop"]["resize"] == "shorter-side"
    norm = manifest["normalization"]
    print("| image | class | p (crop) | top-1 (crop) | p (squash) | top-1 (squash) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, name, img in images:
        index, cls = CLASSES[name]
        row = [label, cls]
        for spec in specs.values():
            x = preprocess([np.ascontiguousarray(img)], 224, norm["mean"], norm["std"], spec)
            logits = session.run(["logits"], {"image": x})[0][0].astype(np.float64)
            prob = np.exp(logits - logits.max())
            prob /= prob.sum()
            row += [f"{prob[index]:.3f}", "yes" if int(prob.argmax()) == index else f"no ({int(prob.argmax())})"]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
