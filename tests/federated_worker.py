"""Runs inside the runner environment (plain onnxruntime + Flower, no torch) for tests/test_federated.py.

    python tests/federated_worker.py checks EXPORT OTHER_EXPORT
        ExportCheck's refusals (other export, wrong keys / shapes, NaN) and FedAvg / FedAdam aggregation of
        hand-made replies against the example-weighted mean computed here in float64; payload and partition
        checks. Plain asserts; prints "ok" last.
    python tests/federated_worker.py recompute JOB.json
        Trains each listed client's round independently of Flower (its partition, the previous round's global
        tensors, the round's rate and seed) with device_runner.train.Run, averages in float64 weighted by the
        clients' sample counts, and prints {"max_abs_diff": ..., "clients": [n, ...]} against the server's
        tensors of that round.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from device_runner import RunnerError
from device_runner.data import load_dataset
from device_runner.federated.client import Node
from device_runner.federated.partition import partition
from device_runner.federated.payload import EXPORT_RECORD, HASH_KEY, export_hash, from_record, to_record
from device_runner.federated.server import (_replaceable, checked_strategy, error_reason, load_tensors_of,
                                           main_config)
from device_runner.manifest import load_manifest

TRAIN = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
from device_runner.portable import load_tensors


def reply(node: int, content):
    from flwr.app import Metadata
    from flwr.app.message import make_message

    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id=f"q{node}",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return make_message(meta, content)


def content(tensors, manifest, digest, n):
    from flwr.app import ArrayRecord, Array, ConfigRecord, MetricRecord, RecordDict

    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in tensors.items()})
    return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n}),
                       EXPORT_RECORD: ConfigRecord({HASH_KEY: digest})})


def expect_error(fn, text):
    try:
        fn()
    except RunnerError as exc:
        assert text in str(exc), (text, str(exc))
        return
    raise AssertionError(f"no RunnerError ({text})")


def checks(folder: Path, other: Path) -> None:
    manifest = load_manifest(folder)
    digest, other_digest = export_hash(folder), export_hash(other)
    assert digest != other_digest
    base = load_tensors_of(folder, manifest)
    rng = np.random.default_rng(0)
    clients = [{k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()} for _ in range(4)]
    counts = [30, 70, 11, 50]

    # payload: round trip, then every kind of wrong tensor is refused with its name
    back = from_record(to_record(clients[0], manifest), manifest, "x")
    assert all(np.array_equal(back[k], clients[0][k]) for k in base)
    key = next(iter(base))
    missing = dict(clients[0]); missing.pop(key)
    expect_error(lambda: from_record(content(missing, manifest, digest, 1)["arrays"], manifest, "x"), f"lacks {key!r}")
    extra = dict(clients[0]); extra["bogus"] = np.zeros(2, np.float32)
    expect_error(lambda: from_record(content(extra, manifest, digest, 1)["arrays"], manifest, "x"), "'bogus'")
    shaped = dict(clients[0]); shaped[key] = np.zeros((3, 3), np.float32)
    expect_error(lambda: from_record(content(shaped, manifest, digest, 1)["arrays"], manifest, "x"), "the export needs")
    nan = {k: v.copy() for k, v in clients[0].items()}; nan[key].reshape(-1)[0] = np.nan
    expect_error(lambda: from_record(content(nan, manifest, digest, 1)["arrays"], manifest, "x"), "NaN")
    half = {k: v.astype(np.float16) for k, v in clients[0].items()}
    expect_error(lambda: from_record(content(half, manifest, digest, 1)["arrays"], manifest, "x"), "float16")

    # FedAvg with the export check: the other export's, the NaN and the mis-shaped replies are refused; the
    # global tensors are the example-weighted mean of the admitted ones (float64 here)
    for name in ("fedavg", "fedadam"):
        strategy = checked_strategy(name, min_train_nodes=1, min_available_nodes=1)
        strategy.setup(manifest, digest, 1e-3, "constant", 1, 0)
        if name == "fedadam":  # FedOpt keeps the arrays it sent (configure_train, which needs a Grid)
            strategy.current_arrays = {k: v.copy() for k, v in base.items()}
        replies = [reply(i + 1, content(t, manifest, digest, n)) for i, (t, n) in enumerate(zip(clients, counts))]
        replies += [reply(11, content(clients[0], manifest, other_digest, 1000)),
                    reply(12, content(nan, manifest, digest, 1000)),
                    reply(13, content(shaped, manifest, digest, 1000))]
        arrays, _ = strategy.aggregate_train(1, replies)
        got = from_record(arrays, manifest, "aggregate")
        record = strategy.rounds[1]
        assert sorted(r["node"] for r in record["refused"]) == [11, 12, 13], record["refused"]
        assert record["replies"] == 4
        w = np.asarray(counts, np.float64) / sum(counts)
        mean = {k: sum(wi * c[k].astype(np.float64) for wi, c in zip(w, clients)) for k in base}
        if name == "fedavg":
            worst = max(float(np.abs(got[k] - mean[k]).max()) for k in base)
            assert worst < 1e-5, worst
        else:  # FedAdam, round 1 (Reddi et al. 2021, Flower's bias-corrected eta): x + eta_t m / (sqrt(v) + tau)
            eta, b1, b2, tau = strategy.eta, strategy.beta_1, strategy.beta_2, strategy.tau
            eta_t = eta * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
            worst = 0.0
            for k in base:
                delta = mean[k] - base[k]
                m, v = (1 - b1) * delta, (1 - b2) * delta ** 2
                want = base[k] + eta_t * m / (np.sqrt(v) + tau)
                worst = max(worst, float(np.abs(got[k] - want).max()))
            assert worst < 1e-4, worst

    # a round in which no client trained stops the run, naming the first cause (not an empty global model)
    strategy = checked_strategy("fedavg", min_train_nodes=1, min_available_nodes=1)
    strategy.setup(manifest, digest, 1e-3, "constant", 1, 0)
    strategy.rounds[2] = {"sampled": 2}
    expect_error(lambda: strategy.aggregate_train(2, [reply(11, content(clients[0], manifest, other_digest, 5))]),
                 "round 2: no client trained (0 failed, 1 refused, 1 sent nothing before round-timeout); first: it "
                 "reports export")
    assert error_reason("<class 'device_runner.RunnerError'>:<'data not found: /x'>") == "data not found: /x"
    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() (pid=1, ip=1.2.3.4)\n"
           "  File \"x.py\", line 3, in run\n    raise RunnerError(...)\ndevice_runner.RunnerError: data not found: /y\n'>")
    assert error_reason(ray) == "data not found: /y", error_reason(ray)
    assert error_reason("Error: Node Unavailable - no heartbeat") == "Error: Node Unavailable - no heartbeat"
    assert error_reason("Exception ClientAppException occurred. Message: data not found: /z") == "data not found: /z"

    # the average does not depend on the order the replies arrived in (float32 sums do)
    sums = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        strategy = checked_strategy("fedavg", min_train_nodes=1, min_available_nodes=1)
        strategy.setup(manifest, digest, 1e-3, "constant", 1, 0)
        arrays, _ = strategy.aggregate_train(1, [reply(i + 1, content(clients[i], manifest, digest, counts[i]))
                                                 for i in order])
        sums.append(from_record(arrays, manifest, "aggregate"))
    assert all(np.array_equal(sums[0][k], sums[1][k]) for k in base)

    # run config: relative paths, bad counts; force replaces only a federated run folder or an empty one
    good = {"export": str(folder), "out": "/tmp/x"}
    expect_error(lambda: main_config({**good, "export": "artifacts/x"}), "export='artifacts/x' is a relative path")
    expect_error(lambda: main_config({**good, "data": "train.npz"}), "data='train.npz' is a relative path")
    expect_error(lambda: main_config({**good, "num-server-rounds": 0}), "num-server-rounds must be >= 1, got 0")
    expect_error(lambda: main_config({**good, "strategy": "fedprox"}), "choose from fedavg, fedadam")
    expect_error(lambda: main_config({"export": str(folder)}), "run config out is empty")
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(tmp) / "precious"
        keep.mkdir()
        assert _replaceable(keep)  # empty
        (keep / "keep.txt").write_text("mine")
        assert not _replaceable(keep)
        (keep / "run.json").write_text(json.dumps({"epochs": 3}))  # mobiletl-train's run folder: not ours
        assert not _replaceable(keep)
        (keep / "run.json").write_text(json.dumps({"federated": {}}))
        assert _replaceable(keep)

    # partitions: disjoint, covering, deterministic; Dirichlet skews the labels
    labels = np.random.default_rng(1).integers(0, 10, 2000)
    for scheme in ("iid", "dirichlet"):
        parts = [partition(labels, i, 5, scheme, 0.5, 7) for i in range(5)]
        joined = np.concatenate(parts)
        assert len(joined) == len(np.unique(joined)) == len(labels), scheme
        assert all(np.array_equal(p, partition(labels, i, 5, scheme, 0.5, 7)) for i, p in enumerate(parts))
        mix = np.stack([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
        spread = float(np.abs(mix - np.bincount(labels, minlength=10) / len(labels)).sum(1).mean())
        if scheme == "iid":
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
            assert spread < 0.25, spread
        else:
            assert spread > 0.5, spread
    expect_error(lambda: partition(labels, 5, 5), "outside")
    expect_error(lambda: partition(labels, 0, 5, "shards"), "unknown partitioner")

    # a SuperNode runs each message in a new process: the features a node saved are reused by the next one
    # (loaded, not computed) and the round trains exactly as without them; another data identity recomputes
    data = load_dataset(TRAIN, 10, max_samples=64, seed=3, resolution=manifest["resolution"])
    with tempfile.TemporaryDirectory() as tmp:
        first = Node(folder, data, Path(tmp) / "w", 16, 1, "data-A")
        assert not first.saved
        want, _ = first.fit(base, 1, 1e-3, 5)
        assert (Path(tmp) / "w" / "features.npy").exists() and first.saved
        again = Node(folder, data, Path(tmp) / "w", 16, 1, "data-A")
        assert again.saved and again.run.cache.filled.all()
        got, _ = again.fit(base, 1, 1e-3, 5)
        assert again.run.cache.misses == 0
        assert all(np.array_equal(want[k], got[k]) for k in want)
        other_data = Node(folder, data, Path(tmp) / "w", 16, 1, "data-B")
        assert not other_data.saved and not other_data.run.cache.filled.any()
    print("ok")


def recompute(job: dict) -> dict:
    folder = Path(job["export"])
    manifest = load_manifest(folder)
    start, _ = load_tensors(Path(job["previous"]))
    target, _ = load_tensors(Path(job["result"]))
    pool = load_dataset(job["data"], manifest["num_classes"], max_samples=job["max_samples"], seed=job["partition_seed"],
                        resolution=manifest["resolution"])
    trained, counts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for pid in job["partitions"]:
            index = partition(pool.labels, pid, job["num_partitions"], job["partitioner"], job["alpha"],
                              job["partition_seed"])
            node = Node(folder, pool.subset(index), Path(tmp) / str(pid), job["batch_size"], 1)
            tensors, metrics = node.fit(start, job["local_epochs"], job["lr"], job["seed"])
            trained.append(tensors)
            counts.append(metrics["num-examples"])
    w = np.asarray(counts, np.float64) / sum(counts)
    diff = max(float(np.abs(target[k].astype(np.float64) - sum(wi * t[k] for wi, t in zip(w, trained))).max())
               for k in target)
    moved = max(float(np.abs(target[k] - start[k]).max()) for k in target)
    return {"max_abs_diff": diff, "moved": moved, "clients": counts}



def model_accuracy(model: str, data: str, resolution_from: str) -> dict:
    """Accuracy of a joined model.onnx on an idx/npz/folder dataset, with the export's preprocessing."""
    import onnxruntime

    from device_runner.data import preprocess

    manifest = load_manifest(Path(resolution_from))
    test = load_dataset(data, manifest["num_classes"], resolution=manifest["resolution"])
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(test), 500):
        idx = np.arange(start, min(start + 500, len(test)))
        x = preprocess([test.image(i) for i in idx], manifest["resolution"], manifest["normalization"]["mean"],
                       manifest["normalization"]["std"], manifest.get("preprocess"))
        correct += int((session.run(None, {name: x})[0].argmax(1) == test.labels[idx]).sum())
    meta = session.get_modelmeta().custom_metadata_map
    return {"accuracy": correct / len(test), "class_names": json.loads(meta["class_names"])}


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        checks(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "model":
        print(json.dumps(model_accuracy(*sys.argv[2:5])))
    else:
        print(json.dumps(recompute(json.loads(Path(sys.argv[2]).read_text()))))
