"""Real weights, real data: EfficientNet-Lite0 (ImageNet) top-2 trained on Fashion-MNIST by the runner.

Bar: validation accuracy >= 0.75 after 3 epochs on 2,000 images at 64 px. Chance is 0.10; the run measured
0.84 when written, so 0.75 leaves room for platform noise while proving the pipeline learns (a broken
gradient, mask or feature cache lands near chance or well below).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fashion_mnist  # noqa: E402


def test_efficientnet_lite0_learns_fashion_mnist():
    result = fashion_mnist.main(["--top-k", "2", "--resolution", "64", "--samples", "2000", "--epochs", "3"])
    print(result)
    assert result["val_acc"] >= 0.75
