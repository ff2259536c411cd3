"""Federated MobileTL with Flower: real flower-superlink / flower-supernode / flwr processes on 127.0.0.1.

Exports EfficientNet-Lite0 (ImageNet weights) top-2 at 32 px; clients train Fashion-MNIST partitions with the
portable step in the runner environment (no torch). Independent checks (tests/federated_worker.py): the global
tensors of a round equal the example-weighted float64 mean of the clients' tensors trained again outside
Flower; the server's model.onnx scores the test set as the server's evaluation said; refusals and FedAdam
against hand computations.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from flower_local import LocalFederation  # noqa: E402

RUNNER = ROOT / ".venv-runner" / "bin"
DATA = Path("/usr/share/datasets/fashion-mnist")
TRAIN, TEST = str(DATA / "train-images-idx3-ubyte.gz"), str(DATA / "t10k-images-idx3-ubyte.gz")
WORKER = str(ROOT / "tests" / "federated_worker.py")


def export(out: Path, resolution: int) -> Path:
    subprocess.run([sys.executable, "-m", "mobiletl_export", "--model", "efficientnet-lite0", "--top-k", "2",
                    "--num-classes", "10", "--resolution", str(resolution), "--out", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    # the other export differs only in resolution: same trainable keys and shapes, another manifest hash
    return export(base / "lite0-32", 32), export(base / "lite0-48", 48)


def worker(*args, timeout=600) -> str:
    proc = subprocess.run([str(RUNNER / "python"), WORKER, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def recompute(tmp: Path, art: Path, out: Path, record: dict, server_round: int, partitions, num_partitions,
              partitioner, max_samples) -> dict:
    job = {"export": str(art), "previous": str(out / "rounds" / f"round-{server_round - 1:03d}.safetensors"),
           "result": str(out / "rounds" / f"round-{server_round:03d}.safetensors"), "data": TRAIN,
           "max_samples": max_samples, "partition_seed": 2023, "partitions": partitions,
           "num_partitions": num_partitions, "partitioner": partitioner, "alpha": 0.5, "batch_size": 32,
           "local_epochs": 1, "lr": record["lr"], "seed": server_round - 1}
    (tmp / "job.json").write_text(json.dumps(job))
    return json.loads(worker("recompute", tmp / "job.json").splitlines()[-1])


def test_refusals_and_aggregation_by_hand(exports):
    """Other export / wrong keys / shapes / dtype / NaN refused with their names; FedAvg and FedAdam of admitted
    replies equal the float64 weighted mean (and Adam step) computed in the worker; partitions disjoint."""
    assert worker("checks", *exports).splitlines()[-1] == "ok"


def test_simulation_three_clients_improve_and_average(exports, tmp_path):
    """Flower's simulation engine (flower-superlink --simulation, 3 virtual clients, Dirichlet 0.5 label skew):
    3 rounds raise the global test accuracy well above chance; round 3's global tensors are the weighted mean of
    the clients' round-3 tensors trained again outside Flower; model.onnx (class names inside) scores the test set
    as the server's last evaluation said."""
    art, _ = exports
    out = tmp_path / "out"
    config = {"export": str(art), "data": TRAIN, "max-samples": 900, "partitioner": "dirichlet", "alpha": 0.5,
              "test-data": TEST, "out": str(out), "num-server-rounds": 3, "lr": 0.001, "min-nodes": 3,
              "save-rounds": True, "class-names": "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,"
                                                  "Bag,Ankle boot"}
    with LocalFederation(tmp_path / "flwr", RUNNER, simulation=True) as fed:
        result = fed.run(config, num_supernodes=3, timeout=900)
    assert result["status"] == "finished:completed", result["output"][-3000:]
    history = rounds(out)
    acc = [r["test_acc"] for r in history]
    print("test accuracy per round:", acc)
    assert [r["round"] for r in history] == [0, 1, 2, 3]
    assert acc[0] < 0.2 and acc[3] > 0.6 and acc[3] > acc[1], acc
    assert all(r["replies"] == 3 and not r["refused"] and not r["failed"] for r in history[1:])
    sizes = recompute(tmp_path, art, out, history[3], 3, [0, 1, 2], 3, "dirichlet", 900)
    print(sizes)
    assert len(set(sizes["clients"])) > 1, "Dirichlet partitions of equal size: the weighting is not tested"
    assert sizes["moved"] > 1e-3 and sizes["max_abs_diff"] < 1e-5, sizes
    model = json.loads(worker("model", out / "model.onnx", TEST, art).splitlines()[-1])
    assert model["class_names"][9] == "Ankle boot"
    assert abs(model["accuracy"] - acc[3]) <= 0.002, (model["accuracy"], acc[3])
    from safetensors.numpy import load_file

    final, last_round = load_file(out / "parameters.safetensors"), load_file(out / "rounds" / "round-003.safetensors")
    assert final.keys() == last_round.keys() and all((final[k] == last_round[k]).all() for k in final)
    run = json.loads((out / "run.json").read_text())
    assert run["run_config"]["partitioner"] == "dirichlet" and run["run_config"]["max-samples"] == 900
    assert run["manifest_sha256"] and run["payload_bytes"] == 4 * json.loads(
        (art / "manifest.json").read_text())["portable"]["parameter_count"]


def test_deployment_killed_client_and_other_export(exports, tmp_path):
    """Real processes: a SuperLink, four SuperNodes. Two train their halves of a pool; one is SIGKILLed (with its
    ClientApp) while it trains; one has another export. The round ends at round-timeout (not stalled), the other
    export is refused by the server, and the global tensors are the weighted mean of the two good clients'."""
    art, other = exports
    out, victim = tmp_path / "out", tmp_path / "victim"
    config = {"export": str(art), "data": TRAIN, "max-samples": 600, "test-data": TEST, "out": str(out),
              "num-server-rounds": 1, "lr": 0.001, "min-nodes": 4, "save-rounds": True, "round-timeout": 30.0}
    with LocalFederation(tmp_path / "flwr", RUNNER) as fed:
        fed.add_supernode("a", {"partition-id": 0, "num-partitions": 2})
        fed.add_supernode("b", {"partition-id": 1, "num-partitions": 2})
        fed.add_supernode("victim", {"max-samples": 30000, "work-dir": str(victim)})  # slow: 30,000 images
        fed.add_supernode("foreign", {"export": str(other), "partition-id": 0, "num-partitions": 2})
        import threading

        def kill_when_training():
            deadline = time.monotonic() + 600
            while not (victim / "metrics.jsonl").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            fed.kill("victim")

        killer = threading.Thread(target=kill_when_training, daemon=True)
        killer.start()
        start = time.monotonic()
        result = fed.run(config, timeout=600)
        took = time.monotonic() - start
        killer.join(timeout=5)
        assert fed.procs["victim"].poll() is not None, "the victim never started training"
    assert result["status"] == "finished:completed", result["output"][-3000:]
    (record,) = [r for r in rounds(out) if r["round"] == 1]
    print(json.dumps(record), f"{took:.0f} s")
    assert record["sampled"] == 4 and record["replies"] == 2, record
    assert record["missing"] + len(record["failed"]) == 1, record  # the victim: no reply, or an error reply
    assert len(record["refused"]) == 1 and "reports export" in record["refused"][0]["why"], record
    sizes = recompute(tmp_path, art, out, record, 1, [0, 1], 2, "iid", 600)
    assert sizes["clients"] == [300, 300] and sizes["moved"] > 1e-3 and sizes["max_abs_diff"] < 1e-5, sizes
    assert (out / "model.onnx").is_file() and not (tmp_path / "out.partial").exists()
    assert not (victim / "checkpoint").exists()  # a client keeps only its features between rounds
