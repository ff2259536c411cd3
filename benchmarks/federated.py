"""Federated MobileTL: accuracy per round, bytes per round and a client's memory, against centralised training.

    .venv/bin/python benchmarks/federated.py [--quick] [--out docs/federated]

EfficientNet-Lite0 (ImageNet weights) top-k (--k, default 4) -> Fashion-MNIST, exported as for the accuracy
study (benchmarks/accuracy.py: 64 px, AdamW wd 0.01, each method's learning rate from that study's validation:
mobiletl 3e-4, vanilla 1e-3, last-layer 3e-3; cosine decay).
- federated: the pool of --pool training images (the accuracy study's 3,000: same seed) split over --clients
  clients, IID and Dirichlet label skew (alpha --alpha; flwr-datasets' partitioners, seeded), --rounds rounds of
  --local-epochs local epoch(s) each, FedAvg, every client every round (fraction 1.0). Run by Flower's simulation
  engine through real processes (flower-superlink --simulation + flwr run of the Flower App in federated/,
  benchmarks/flower_local.py), clients on plain onnxruntime in .venv-runner. The server evaluates the global model
  on the 10,000 test images after every round.
- centralised: the same export trained on the union of the clients' data by the runner's loop
  (device_runner.train.Run, as benchmarks/accuracy.py) for rounds x local-epochs epochs: the same number of
  sample passes, the test accuracy after every epoch.
- bytes per client per round: Flower's ArrayRecord.count_bytes() of the message each way (the trainable tensors,
  float32, plus their keys); the export's frozen backbone never travels.
- one client's peak memory: VmHWM of a fresh runner process that imports Flower's ClientApp module and runs one
  client's round (1/clients of the pool, batch 32, --resolution px, 1 thread), as a device's ClientApp process
  does (without the simulation's partitioner, which a device does not load); again on exports at
  --memory-resolution (224 px) with batch --memory-batch (8), a phone's setting (`--memory-only` measures just
  that column again for an earlier results.json).
Writes results.json and table.md to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import DATA, cpu_name, export_to, fashion_mnist, backbone_features, train_run  # noqa: E402
from flower_local import LocalFederation  # noqa: E402

METHODS = ("mobiletl", "vanilla", "last-layer")
LR = {"mobiletl": 3e-4, "vanilla": 1e-3, "last-layer": 3e-3}  # docs/accuracy/results.json's chosen rates
PARTITION_SEED = 2023  # = accuracy.DATA_SEED: the pool is the accuracy study's training subset

# one client's round in its own process: import Flower's ClientApp (its footprint), build the node, train
CLIENT_ROUND = """
import json, sys, tempfile
from pathlib import Path
import flwr.clientapp  # noqa: F401  (the ClientApp process imports Flower)
from device_runner.data import load_dataset
from device_runner.federated.client import Node
import numpy as np
from device_runner.federated.server import load_tensors_of
from device_runner.manifest import load_manifest
folder, data, pool, clients, lr, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
manifest = load_manifest(Path(folder))
full = load_dataset(data, 10, max_samples=pool, seed=%d, resolution=manifest["resolution"])
mine = full.subset(np.arange(len(full) // clients))  # a client's share (a device has no partitioner)
with tempfile.TemporaryDirectory() as tmp:
    node = Node(Path(folder), mine, Path(tmp), batch, 1)
    node.fit(load_tensors_of(Path(folder), manifest), 1, lr, 0)
hwm = next(s for s in open("/proc/self/status") if s.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mib": int(hwm.split()[1]) / 1024, "samples": len(mine)}))
""" % PARTITION_SEED


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tests: 3 clients, 2 rounds, 300 images, 32 px, 1,000 test")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--partitions", nargs="+", default=["iid", "dirichlet"], choices=("iid", "dirichlet"))
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--memory-resolution", type=int, default=224, help="one client's peak RSS also at this "
                   "resolution (an export of its own), batch --memory-batch: a phone's setting")
    p.add_argument("--memory-batch", type=int, default=8)
    p.add_argument("--memory-only", action="store_true", help="keep OUT/results.json's accuracy and bytes (same "
                   "settings) and measure only the --memory-resolution column again")
    p.add_argument("--threads", type=int, default=2, help="centralised training (federated clients and server: 1 "
                   "each; Ray runs 2 clients at a time on 2 cores)")
    p.add_argument("--runner-bin", type=Path, default=ROOT / ".venv-runner" / "bin",
                   help="bin/ of the runner environment with Flower (scripts/setup.sh makes .venv-runner)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "federated")
    return p


QUICK = dict(clients=3, rounds=2, pool=300, test=1000, resolution=32, k=2, memory_resolution=64,
             out=Path(tempfile.gettempdir()) / "mobiletl-federated-quick")


def check_args(args) -> None:
    for name in ("k", "clients", "rounds", "local_epochs", "pool", "test", "batch_size", "threads", "memory_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.clients > args.pool:
        raise SystemExit("--clients must be <= --pool")
    if not args.alpha > 0:
        raise SystemExit("--alpha must be > 0")
    if not 32 <= args.resolution <= 1024 or not 32 <= args.memory_resolution <= 1024:
        raise SystemExit("--resolution and --memory-resolution must be between 32 and 1024")
    if not (args.runner_bin / "flwr").exists():
        raise SystemExit(f"{args.runner_bin}/flwr not found: bash scripts/setup.sh installs Flower into .venv-runner")
    if not (DATA / "t10k-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST not found in {DATA}: bash scripts/setup.sh installs dataset-fashion-mnist")


def test_subset(n: int, work: Path) -> str:
    """The test images the server evaluates on: the whole idx file, or a seeded subset in an .npz."""
    if n >= 10000:
        return str(DATA / "t10k-images-idx3-ubyte.gz")
    import numpy as np

    test = fashion_mnist(1, 0, n)["test"]
    path = work / "test.npz"
    np.savez(path, x=np.stack(test.images), y=test.labels)
    return str(path)


def federated(args, fed: LocalFederation, art: Path, method: str, scheme: str, test: str, work: Path) -> dict:
    out = work / f"{method}-{scheme}"
    config = {"export": str(art), "data": str(DATA / "train-images-idx3-ubyte.gz"), "max-samples": args.pool,
              "partitioner": scheme, "alpha": args.alpha, "partition-seed": PARTITION_SEED, "test-data": test,
              "out": str(out), "force": True, "num-server-rounds": args.rounds, "local-epochs": args.local_epochs,
              "lr": LR[method], "batch-size": args.batch_size, "min-nodes": args.clients, "threads": 1,
              "work-dir": str(work / "nodes")}
    start = time.perf_counter()
    result = fed.run(config, num_supernodes=args.clients, timeout=7200)
    if result["status"] != "finished:completed":
        raise SystemExit(f"{method} {scheme}: the Flower run ended {result['status']}:\n{result['output'][-3000:]}")
    rounds = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    return {"test_acc": [r["test_acc"] for r in rounds], "seconds": time.perf_counter() - start,
            "bytes_down_per_client": rounds[1]["bytes_down_per_client"],
            "bytes_up_per_client": rounds[1]["bytes_up_per_client"][0],
            "replies": [r.get("replies") for r in rounds[1:]],
            "client_train_loss": [r.get("clients", {}).get("train-loss") for r in rounds[1:]]}


def centralised(args, art: Path, method: str, data: dict, work: Path) -> dict:
    manifest = json.loads((art / "manifest.json").read_text())
    feats = {"train": backbone_features(art, manifest, data["train"], args.threads),
             "val": backbone_features(art, manifest, data["test"], args.threads)}
    run_args = argparse.Namespace(epochs=args.rounds * args.local_epochs, batch_size=args.batch_size,
                                  threads=args.threads)
    _, curve, seconds = train_run(art, manifest, {"train": data["train"], "val": data["test"]}, feats, LR[method], 0,
                                  run_args, work)
    return {"test_acc": [c["val_acc"] for c in curve], "seconds": seconds}


def client_memory(args, art: Path, batch: int) -> dict:
    """Peak RSS of one client's round on export `art` at `batch` (CLIENT_ROUND, its own process)."""
    proc = subprocess.run([str(args.runner_bin / "python"), "-c", CLIENT_ROUND, str(art),
                           str(DATA / "train-images-idx3-ubyte.gz"), str(args.pool), str(args.clients), "1e-3",
                           str(batch)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"client memory run failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.splitlines()[-1])


def memory_columns(res: dict) -> str:
    """The client peak RSS cells: at the benchmark's resolution and batch, and at --memory-resolution."""
    big = res.get("client_memory_resolution")
    return f"{res['client']['peak_rss_mib']:.0f} | " + (f"{big['peak_rss_mib']:.0f}" if big else "–")


def table(results: dict, args) -> str:
    s = results["settings"]
    rows = ["| method | data | " + " | ".join(f"r{r}" for r in range(args.rounds + 1)) + " | MiB sent / client / round "
            f"(each way) | client peak RSS MiB ({s['resolution']} px, batch {s['batch_size']}) | client peak RSS MiB "
            f"({s.get('memory_resolution', '–')} px, batch {s.get('memory_batch', '–')}) |",
            "|---|---|" + "---|" * (args.rounds + 4)]
    for method, res in results["methods"].items():
        for scheme in args.partitions:
            f = res[scheme]
            rows.append(f"| {method} | {scheme} | " + " | ".join(f"{a * 100:.1f}" for a in f["test_acc"]) +
                        f" | {f['bytes_up_per_client'] / 2**20:.2f} | {memory_columns(res)} |")
        c = res["centralised"]
        rows.append(f"| {method} | centralised | – | " + " | ".join(f"{a * 100:.1f}" for a in c["test_acc"]) +
                    " | – | – | – |")
    return "\n".join(rows)


def large_memory(args, method: str, work: Path) -> dict:
    """One client's peak RSS on an export at --memory-resolution (generic target), batch --memory-batch."""
    art = work / f"art-{method}-{args.memory_resolution}"
    export_to(art, method, args.k, args.memory_resolution, 0)
    return client_memory(args, art, args.memory_batch)


def _terminate(signum, frame):  # SIGTERM: stop like Ctrl-C, so the Flower processes are stopped too
    raise KeyboardInterrupt


def main(argv=None) -> dict:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    p = parser()
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    check_args(args)

    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "runner_bin")}
    settings.update(model="efficientnet-lite0", cpu=cpu_name(), cores=os.cpu_count(), lr=LR, strategy="fedavg",
                    partition_seed=PARTITION_SEED, lr_schedule="cosine over rounds (federated) / steps (centralised)")
    results = {"settings": settings, "methods": {}}
    if args.memory_only:
        return memory_only(args, settings, log)
    data = fashion_mnist(args.pool, 0, args.test)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        test = test_subset(args.test, work)
        with LocalFederation(work / "flwr", args.runner_bin, simulation=True) as fed:
            for method in args.methods:
                art = work / f"art-{method}"
                manifest = export_to(art, method, args.k, args.resolution, 0)
                res = {"payload_bytes": 4 * manifest["portable"]["parameter_count"]}
                for scheme in args.partitions:
                    res[scheme] = federated(args, fed, art, method, scheme, test, work)
                    log(f"{method} {scheme}: test accuracy per round {[round(a, 4) for a in res[scheme]['test_acc']]}"
                        f" ({res[scheme]['seconds']:.0f} s)")
                res["centralised"] = centralised(args, art, method, data, work)
                log(f"{method} centralised: {[round(a, 4) for a in res['centralised']['test_acc']]}")
                res["client"] = client_memory(args, art, args.batch_size)
                res["client_memory_resolution"] = large_memory(args, method, work)
                log(f"{method} one client's peak RSS {res['client']['peak_rss_mib']:.0f} MiB, "
                    f"{res['client_memory_resolution']['peak_rss_mib']:.0f} MiB at {args.memory_resolution} px")
                results["methods"][method] = res
    results["seconds"] = time.perf_counter() - start
    return write(args, results)


def write(args, results: dict) -> dict:
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return results


def memory_only(args, settings: dict, log) -> dict:
    """--memory-only: OUT/results.json's federated and centralised numbers (same settings but the memory ones),
    the --memory-resolution client memory measured again."""
    path = args.out / "results.json"
    if not path.exists():
        raise SystemExit(f"--memory-only needs {path} from a full run")
    results = json.loads(path.read_text())
    skip = ("memory_resolution", "memory_batch", "memory_only", "cpu", "cores")
    old = {k: v for k, v in results["settings"].items() if k not in skip}
    new = {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in skip}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise SystemExit(f"--memory-only: {path} was made with other settings ({', '.join(diff)})")
    results["settings"].update(memory_resolution=args.memory_resolution, memory_batch=args.memory_batch)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            results["methods"][method]["client_memory_resolution"] = large_memory(args, method, Path(tmp))
            log(f"{method}: {results['methods'][method]['client_memory_resolution']['peak_rss_mib']:.0f} MiB at "
                f"{args.memory_resolution} px")
    return write(args, results)


if __name__ == "__main__":
    main()
