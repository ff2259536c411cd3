"""benchmarks/federated.py --quick: the federated benchmark's pipeline end to end (3 simulated clients, 2 rounds,
32 px), checked against numbers it does not compute itself: the bytes per round against the manifest's
trainable parameter count, accuracies against chance."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_federated_benchmark_quick(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/federated.py", "--quick", "--methods", "mobiletl",
                           "last-layer", "--partitions", "dirichlet", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for method, res in results["methods"].items():
        fed, central = res["dirichlet"], res["centralised"]
        # a message is the float32 tensors plus their keys and a little framing: within 1 % of 4 x parameters
        assert res["payload_bytes"] <= fed["bytes_up_per_client"] <= 1.01 * res["payload_bytes"], method
        assert fed["bytes_down_per_client"] == fed["bytes_up_per_client"]
        assert len(fed["test_acc"]) == 3 and fed["test_acc"][0] < 0.2 < fed["test_acc"][-1], (method, fed)
        assert len(central["test_acc"]) == 2 and central["test_acc"][-1] > 0.2, (method, central)
        assert 50 < res["client"]["peak_rss_mib"] < 2000 and 50 < res["client_memory_resolution"]["peak_rss_mib"] < 2000
    # last-layer sends only the classifier: far less than mobiletl's top blocks
    assert results["methods"]["last-layer"]["payload_bytes"] * 20 < results["methods"]["mobiletl"]["payload_bytes"]
    assert "| mobiletl | dirichlet |" in (tmp_path / "table.md").read_text()
