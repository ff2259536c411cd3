"""The ServerApp: Flower's FedAvg (or FedAdam) over the export's trainable tensors, refusing other exports,
evaluating the global model centrally each round, and writing a normal run folder at the end.

Run config (the Flower App's pyproject.toml, federated/pyproject.toml, documents every key and its default):
  export, out, num-server-rounds, local-epochs, lr (0: the manifest's), lr-schedule (over rounds: cosine,
  linear, constant), strategy (fedavg | fedadam), server-lr (FedAdam's eta), fraction-train, min-nodes,
  fraction-evaluate, round-timeout (s), test-data, class-names, seed, threads, force, save-rounds.

Output folder `out` (written as out.partial, renamed at the end; an existing `out` is refused unless force, which
replaces only an earlier federated run folder or an empty folder). A round in which no client trained stops the
run (RunnerError naming the first failure). Paths must be absolute.
  run.json       the run config, manifest hash, class names, strategy, Flower and onnxruntime versions
  metrics.jsonl  one record per round: lr, central test loss / accuracy, clients' aggregated training loss
                 and accuracy, replies / failed / refused / missing nodes, bytes per client each way, seconds
  parameters.safetensors  the global trainable tensors (the export's parameters.safetensors layout)
  model.onnx     the joined image -> logits model with the global tensors and class names (as mobiletl-train)
  rounds/        with save-rounds: round-000.safetensors (the export's tensors), round-001, ... (after each round)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg

from .. import RunnerError
from ..data import class_names, load_dataset
from ..inference import write_inference
from ..manifest import load_manifest
from ..train import learning_rate
from .client import Node
from .payload import EXPORT_RECORD, HASH_KEY, export_hash, from_record, payload_bytes, to_record

app = ServerApp()
log = logging.getLogger("flwr.mobiletl")  # a child of Flower's logger: its output reaches `flwr run --stream`
STRATEGIES = {"fedavg": FedAvg, "fedadam": FedAdam}


class ExportCheck:
    """Mixed in before a Flower strategy (checked_strategy): adds the round's learning rate and the export's
    manifest hash to every message, and admits only replies that report the same hash and carry exactly the
    export's trainable tensors (float32, the manifest's shapes, finite). Refused replies are logged and left
    out of the aggregation like failed ones; `rounds` keeps what each round saw."""

    def setup(self, manifest: dict, digest: str, lr: float, schedule: str, num_rounds: int, seed: int) -> None:
        self.manifest, self.digest = manifest, digest
        self.base_lr, self.schedule, self.num_rounds, self.seed = lr, schedule, num_rounds, seed
        self.rounds: dict[int, dict] = {}

    def round_lr(self, server_round: int) -> float:
        """The clients' rate in round r (1-based): the schedule over rounds, as mobiletl-train's over steps."""
        return learning_rate(self.base_lr, self.schedule, server_round - 1, self.num_rounds)

    def _config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**config, HASH_KEY: self.digest, "lr": self.round_lr(server_round), "seed": self.seed})

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, self._config(server_round, config), grid))
        self.rounds[server_round] = {"lr": self.round_lr(server_round), "sampled": len(messages),
                                     "bytes_down_per_client": arrays.count_bytes()}
        return messages

    def configure_evaluate(self, server_round, arrays, config, grid):
        return super().configure_evaluate(server_round, arrays, self._config(server_round, config), grid)

    def admit(self, replies, server_round: int, train: bool) -> list[Message]:
        """The replies that may be aggregated (failed ones included: the strategy counts and logs them)."""
        admitted, refused, failed, order = [], [], [], {}
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                failed.append({"node": msg.metadata.src_node_id, "why": error_reason(msg.error.reason)})
            else:
                node = msg.metadata.src_node_id
                theirs = msg.content.config_records.get(EXPORT_RECORD, {}).get(HASH_KEY)
                try:
                    if theirs != self.digest:
                        raise RunnerError(f"it reports export {str(theirs)[:12]}, the server's is {self.digest[:12]}")
                    if train:
                        tensors = from_record(msg.content["arrays"], self.manifest, "its tensors")
                        order[id(msg)] = hashlib.sha256(b"".join(t.tobytes() for t in tensors.values())).digest()
                except (RunnerError, KeyError) as exc:
                    log.warning("round %d: refused the reply of node %d: %s", server_round, node, exc)
                    refused.append({"node": node, "why": str(exc)})
                    continue
            admitted.append(msg)
        # float32 sums depend on their order: aggregate in an order of the replies' content, not of their arrival
        admitted.sort(key=lambda m: order.get(id(m), b""))
        record = self.rounds.setdefault(server_round, {})
        key = "" if train else "evaluate_"
        record[f"{key}refused"] = refused
        record[f"{key}failed"] = failed
        record[f"{key}replies"] = len(admitted) - len(failed)
        if train:  # sampled nodes that sent nothing before round-timeout (a device that died or is too slow)
            record["missing"] = max(record.get("sampled", len(replies)) - len(replies), 0)
            record["bytes_up_per_client"] = [m.content["arrays"].count_bytes() for m in admitted if not m.has_error()]
        return admitted

    def aggregate_train(self, server_round, replies):
        admitted = self.admit(replies, server_round, True)
        if not any(not m.has_error() for m in admitted):
            record = self.rounds[server_round]
            why = [f["why"] for f in record["failed"]] + [r["why"] for r in record["refused"]]
            raise RunnerError(f"round {server_round}: no client trained ({len(record['failed'])} failed, "
                              f"{len(record['refused'])} refused, {record['missing']} sent nothing before "
                              f"round-timeout){'; first: ' + why[0] if why else ''}")
        arrays, metrics = super().aggregate_train(server_round, admitted)
        if arrays is not None:  # FedAdam's update is float64 (numpy scalars): back to the export's float32
            arrays = to_record({k: a.numpy() for k, a in arrays.items()}, self.manifest)
        if metrics is not None:
            self.rounds[server_round]["clients"] = dict(metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        metrics = super().aggregate_evaluate(server_round, self.admit(replies, server_round, False))
        if metrics is not None:
            self.rounds[server_round]["clients_evaluate"] = dict(metrics)
        return metrics


def error_reason(reason: str) -> str:
    """What a failed reply says, in one line: a ClientApp exception arrives as "<class 'X'>:<'message'>" (Flower)
    whose message may be a whole traceback (Ray's, in the simulation engine): its last line, without the
    exception's class name."""
    text = reason.strip()
    match = re.match(r"<class '[^']*'>:<'(.*)'>$", text, re.S)
    lines = [line.strip() for line in (match.group(1) if match else text).splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    last = re.sub(r"^Exception \w+ occurred\. Message: ", "", lines[-1])  # Flower's simulation wrapper
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)[:300]


def checked_strategy(name: str, **kwargs):
    """Flower's strategy `name` (fedavg, fedadam) with ExportCheck mixed in. RunnerError for another name."""
    if name not in STRATEGIES:
        raise RunnerError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    base = STRATEGIES[name]
    return type(f"Checked{base.__name__}", (ExportCheck, base), {})(**kwargs)


def _replaceable(out: Path) -> bool:
    """An empty folder, or an earlier federated run's (run.json with a "federated" field)."""
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return "federated" in json.loads((out / "run.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _str(config, key: str, default: str = "") -> str:
    value = config.get(key, default)
    return str(value) if value is not None else default


def main_config(rc) -> dict:
    """The run config, checked (RunnerError naming the first bad value)."""
    c = {"export": _str(rc, "export"), "out": _str(rc, "out"),
         "num-server-rounds": int(rc.get("num-server-rounds", 5)), "local-epochs": int(rc.get("local-epochs", 1)),
         "lr": float(rc.get("lr", 0.0)), "lr-schedule": _str(rc, "lr-schedule", "cosine"),
         "strategy": _str(rc, "strategy", "fedavg"), "server-lr": float(rc.get("server-lr", 0.01)),
         "fraction-train": float(rc.get("fraction-train", 1.0)), "min-nodes": int(rc.get("min-nodes", 2)),
         "fraction-evaluate": float(rc.get("fraction-evaluate", 0.0)),
         "round-timeout": float(rc.get("round-timeout", 600)), "test-data": _str(rc, "test-data"),
         "class-names": _str(rc, "class-names"), "seed": int(rc.get("seed", 0)),
         "threads": int(rc.get("threads", 1)), "force": bool(rc.get("force", False)),
         "save-rounds": bool(rc.get("save-rounds", False))}
    for key, what in (("export", "/path/to/artifacts"), ("out", "/path/to/run-folder")):
        if not c[key]:
            raise RunnerError(f"run config {key} is empty: pass --run-config '{key}=\"{what}\"' (an absolute path)")
    for key in ("export", "out", "test-data", "data"):
        value = _str(rc, key) if key == "data" else c[key]
        if value and not Path(value).expanduser().is_absolute():
            raise RunnerError(f"{key}={value!r} is a relative path: give an absolute path (Flower's ServerApp and "
                              "ClientApp processes do not run in your directory)")
    for key in ("num-server-rounds", "local-epochs", "min-nodes"):
        if c[key] < 1:
            raise RunnerError(f"{key} must be >= 1, got {c[key]}")
    if c["lr-schedule"] not in ("cosine", "linear", "constant"):
        raise RunnerError(f"unknown lr-schedule {c['lr-schedule']!r}; choose from cosine, linear, constant")
    if not (0 < c["fraction-train"] <= 1 and 0 <= c["fraction-evaluate"] <= 1):
        raise RunnerError("fraction-train must be in (0, 1] and fraction-evaluate in [0, 1]")
    if c["strategy"] not in STRATEGIES:
        raise RunnerError(f"unknown strategy {c['strategy']!r}; choose from {', '.join(STRATEGIES)}")
    if not c["round-timeout"] > 0:
        raise RunnerError("round-timeout must be > 0 seconds")
    return c


def _json(x):
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def serve(grid: Grid, rc) -> Path:
    """The whole federated run (see the module docstring) -> the output folder."""
    c = main_config(rc)
    folder = Path(c["export"]).expanduser().resolve()
    manifest = load_manifest(folder, "portable")
    digest = export_hash(folder)
    out = Path(c["out"]).expanduser().resolve()
    if out.exists():
        if not c["force"]:
            raise RunnerError(f"{out} exists; choose another out, or force=true to replace it (a federated run "
                              "folder or an empty folder only)")
        if not _replaceable(out):
            raise RunnerError(f"force=true replaces only a federated run folder (with run.json) or an empty folder; "
                              f"{out} is neither: choose another out")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="mobiletl-federated-eval-"))
    try:
        lr = c["lr"] or float(manifest["optimizer"]["lr"])
        kwargs = dict(fraction_train=c["fraction-train"], fraction_evaluate=c["fraction-evaluate"],
                      min_train_nodes=c["min-nodes"], min_evaluate_nodes=c["min-nodes"] if c["fraction-evaluate"] else 0,
                      min_available_nodes=c["min-nodes"])
        if c["strategy"] == "fedadam":
            kwargs.update(eta=c["server-lr"], eta_l=lr)
        strategy = checked_strategy(c["strategy"], **kwargs)
        strategy.setup(manifest, digest, lr, c["lr-schedule"], c["num-server-rounds"], c["seed"])
        # the server's evaluation is a Node over the test data (the backbone's features computed once)
        central = Node(folder, load_dataset(c["test-data"], manifest["num_classes"], resolution=manifest["resolution"]),
                       work, 200, c["threads"] or None) if c["test-data"] else None
        names = [s.strip() for s in c["class-names"].split(",")] if c["class-names"] else \
            class_names(central.data, manifest["num_classes"]) if central else \
            [str(i) for i in range(manifest["num_classes"])]
        if len(names) != manifest["num_classes"]:
            raise RunnerError(f"class-names lists {len(names)} names, the export has {manifest['num_classes']} outputs")
        import flwr

        from ..ort import onnxruntime

        (partial / "run.json").write_text(json.dumps(
            {"federated": c, "run_config": {k: v for k, v in rc.items()}, "export": str(folder),
             "manifest_sha256": digest, "class_names": names,
             "model": manifest["model"], "method": manifest["method"], "top_k": manifest["top_k"],
             "payload_bytes": payload_bytes(manifest), "flwr": flwr.__version__,
             "onnxruntime": onnxruntime.__version__}, indent=1))
        metrics = open(partial / "metrics.jsonl", "w")
        started = last = time.perf_counter()

        written: set[int] = set()

        def each_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            nonlocal last
            written.add(server_round)
            now = time.perf_counter()
            record = {"event": "round", "round": server_round, **strategy.rounds.get(server_round, {}),
                      "round_s": now - last, "elapsed_s": now - started}
            last = now
            tensors = from_record(arrays, manifest, "the global model")
            if c["save-rounds"]:
                save_tensors(tensors, partial / "rounds" / f"round-{server_round:03d}.safetensors", server_round)
            result = {}
            if central:
                r = central.evaluate(tensors)
                result = {"test_loss": r["loss"], "test_acc": r["accuracy"]}
            record.update(result)
            metrics.write(json.dumps(_json(record)) + "\n")
            metrics.flush()
            log.info("round %d: %s", server_round, ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            return MetricRecord(result) if result else None

        initial = to_record(load_tensors_of(folder, manifest), manifest)
        try:
            result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=c["num-server-rounds"],
                                    timeout=c["round-timeout"],
                                    train_config=ConfigRecord({"local-epochs": c["local-epochs"]}),
                                    evaluate_fn=each_round)
        except RunnerError:  # the round that stopped the run is recorded too
            for r in sorted(set(strategy.rounds) - written):
                metrics.write(json.dumps(_json({"event": "round-failed", "round": r, **strategy.rounds[r],
                                                "elapsed_s": time.perf_counter() - started})) + "\n")
            raise
        finally:
            metrics.close()
        final = from_record(result.arrays, manifest, "the global model")
        save_tensors(final, partial / "parameters.safetensors", c["num-server-rounds"])
        write_inference(folder, manifest, final, partial / "model.onnx", names)
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save_tensors(tensors: dict[str, np.ndarray], path: Path, server_round: int) -> None:
    """The global trainable tensors after `server_round` (0: the export's) as safetensors, keys as the manifest:
    the layout of the export's parameters.safetensors (step 0), so PortableTrainer(checkpoint=path) starts from it."""
    from safetensors.numpy import save_file

    from ..portable import CHECKPOINT_FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata={"format": CHECKPOINT_FORMAT, "step": "0", "federated_round": str(server_round)})
    os.chmod(path, 0o644)  # safetensors writes 0600; the run folder's other files are 0644


def load_tensors_of(folder: Path, manifest: dict) -> dict[str, np.ndarray]:
    """The export's initial trainable tensors (its portable parameters file)."""
    from ..portable import load_tensors

    tensors, _ = load_tensors(folder / manifest["files"]["parameters"])
    return {e["name"]: tensors[e["name"]] for e in manifest["portable"]["parameters"]}


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        out = serve(grid, context.run_config)
    except RunnerError as exc:
        log.error("mobiletl federated server: %s", str(exc).splitlines()[0])
        raise
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    acc = f", test accuracy {last['test_acc']:.4f}" if "test_acc" in last else ""
    log.info("wrote %s (model.onnx, parameters.safetensors, metrics.jsonl, run.json)%s", out, acc)
