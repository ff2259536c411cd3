"""Console-script entry points: a clear message where the compiler's dependencies are not installed.

`pip install ".[runner]"` (what a device installs) brings the package but not torch/onnx/onnxruntime-training;
`mobiletl-export` there should say so in one line instead of an ImportError traceback.
"""

from __future__ import annotations

import sys

MISSING = ("the compiler needs its dependencies (torch, onnx, onnxruntime-training): "
           "pip install \".[export]\" on x86-64 Linux with Python 3.10-3.12; this environment lacks {name}")


def _cli(prog: str):
    try:
        from . import cli
    except ImportError as exc:  # torch, onnx or onnxruntime.training missing
        print(f"{prog}: error: " + MISSING.format(name=exc.name or exc), file=sys.stderr)
        raise SystemExit(2) from None
    return cli


def main() -> int:
    return _cli("mobiletl-export").main()


def report_main() -> int:
    return _cli("mobiletl-report").report_main()
