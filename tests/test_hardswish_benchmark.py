"""benchmarks/hardswish.py --quick: the pipeline runs end to end (pretraining, three exports, runner fine-tuning,
memory analysis), and the three variants' exports differ as they should."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DATA / "train-images-idx3-ubyte.gz").exists(), reason="needs Debian's dataset-fashion-mnist")
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hardswish.py"), "--quick", "--threads", "1",
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mobiletl (exact hswish) | 2 |" in proc.stdout
    results = json.loads(out.read_text())
    assert list((tmp_path / "cache").glob("mbv3-small-fmnist04-32px-seed0-*.pt"))  # the cached source weights
    assert 0.0 <= results["source"]["source_test_acc"] <= 1.0  # a tiny pretraining: only that it ran
    rows = {r["variant"]: r for r in results["rows"]}
    assert set(rows) == {"mobiletl (sign)", "mobiletl (exact hswish)", "vanilla"}
    for r in rows.values():
        assert 0.0 <= r["test_acc_mean"] <= 1.0 and r["memory"]["training_bytes"] > 0

    exports = results["exports"]
    sign, exact, vanilla = (exports[f"{v}, k=2"] for v in ("mobiletl (sign)", "mobiletl (exact hswish)", "vanilla"))
    assert (sign["hardswish_backward"], exact["hardswish_backward"], vanilla["hardswish_backward"]) == \
        ("sign", "exact", "exact")
    for graph in ("training_model.onnx", "train_step.onnx"):
        assert sign["mask_calls"][graph].get("HardSwishMask", 0) > 0
        assert "HardSwishMask" not in exact["mask_calls"][graph]
        # the exact-derivative masks stay: ReLU in squeeze-excite, Hard-Sigmoid gates
        assert exact["mask_calls"][graph]["ReLUMask"] == sign["mask_calls"][graph]["ReLUMask"] > 0
        assert exact["mask_calls"][graph]["HardSigmoidMask"] == sign["mask_calls"][graph]["HardSigmoidMask"] > 0
        assert vanilla["mask_calls"][graph] == {}
    mem = {v: rows[v]["memory"] for v in rows}
    assert mem["mobiletl (sign)"]["stored_bytes"] < mem["mobiletl (exact hswish)"]["stored_bytes"] \
        < mem["vanilla"]["stored_bytes"]
    assert mem["mobiletl (sign)"]["trainable_params"] == mem["mobiletl (exact hswish)"]["trainable_params"]
