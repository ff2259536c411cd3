"""The ClientApp: one device's part of a federated MobileTL run.

Every `train` message carries the global trainable tensors and the round's config; the client checks them
against its export (payload.py), trains `local-epochs` epochs of its own data with device_runner.train.Run
(portable step on plain onnxruntime, no torch; the frozen backbone's features are computed once and cached
in the node's work folder), and replies with its tensors, `num-examples` (FedAvg's weight), its training loss
and accuracy, and its export's manifest hash (the server refuses other exports). `evaluate` replies the global
model's loss and accuracy on the node's data.

Where things come from (node config overrides run config; Flower's simulation engine sets partition-id and
num-partitions, a SuperNode gets them from `--node-config`):
  export         artifact folder (the same export on every client and on the server)
  data           the node's images: class-per-folder directory, .npz or idx3 file (device_runner/data.py)
  partition-id, num-partitions
                 simulate many clients on one pool: keep this partition of `data` (partition.py; run config
                 `partitioner`, `alpha`, `partition-seed`, `max-samples` pick the scheme and the pool)
  work-dir       the node's backbone features (features.npy: computed in the first round, reused by every
                 later message's process) and metrics.jsonl. Node config: this node's folder; run config: the
                 parent of every node's run-R-node-N folder; default parent: /tmp/mobiletl-federated (the
                 system's temporary directory). Delete it after the run.
Paths must be absolute.
  threads        onnxruntime intra-op threads (default 1: simulated clients share the CPU)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import RunnerError
from ..data import Dataset, fingerprint, load_dataset
from ..manifest import load_manifest
from ..train import Run, RunConfig
from .partition import partition
from .payload import EXPORT_RECORD, HASH_KEY, export_hash, from_record, to_record

app = ClientApp()
log = logging.getLogger("flwr.mobiletl")  # a child of Flower's logger: its output reaches `flwr run --stream`


def setting(context: Context, key: str, default=None):
    """A node-config value, else the run config's, else `default`."""
    for source in (context.node_config, context.run_config):
        if key in source and source[key] != "":
            return source[key]
    return default


def absolute(key: str, value) -> Path:
    """A path setting; RunnerError when relative (Flower's processes run in directories of their own, so a
    relative path would be read against whichever directory started them)."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        raise RunnerError(f"{key}={value!r} is a relative path: give an absolute path (Flower's ServerApp and "
                          "ClientApp processes do not run in your directory)")
    return path


def node_data(context: Context, num_classes: int, resolution: int) -> tuple[Dataset, str]:
    """(this node's samples, their identity): its `data`, or its partition of the pool when `num-partitions` is
    set. The identity (hex sha256 of the data's fingerprint and the selection) keys the feature file."""
    spec = setting(context, "data")
    if not spec:
        raise RunnerError("no data for this node: set node config data=PATH (or run config data)")
    pool = int(setting(context, "max-samples", 0)) or None
    seed = int(setting(context, "partition-seed", 2023))
    data = load_dataset(str(absolute("data", spec)), num_classes, max_samples=pool, seed=seed, resolution=resolution)
    selection: list = [pool, seed]
    if "num-partitions" in context.node_config:
        part = (int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                str(setting(context, "partitioner", "iid")), float(setting(context, "alpha", 0.5)))
        selection += list(part)
        data = data.subset(partition(data.labels, *part, seed))
    # own copies: a subset's images are views that would keep the whole file's array alive
    data.images = [np.array(im) if isinstance(im, np.ndarray) else im for im in data.images]
    identity = hashlib.sha256(json.dumps([fingerprint(str(spec)), selection]).encode()).hexdigest()
    return data, identity


class Node:
    """One client's state across rounds: its export, data and Run (whose feature cache outlives rounds). The
    server's evaluation on its test data is a Node too (server.py)."""

    def __init__(self, folder: Path, data: Dataset, work: Path, batch_size: int, threads: int | None,
                 data_identity: str | None = None):
        """`data_identity`: what the data is (node_data); with it the backbone's features are kept in `work`
        (features.npy) and reused by the next message's process — a SuperNode starts a ClientApp process per
        message, and the frozen backbone is most of the compute."""
        self.folder = folder
        self.manifest = load_manifest(folder, "portable")
        self.hash = export_hash(folder)
        self.data, self.work = data, work
        work.mkdir(parents=True, exist_ok=True)
        cfg = RunConfig(epochs=1, batch_size=batch_size, schedule="constant", checkpoints=False,
                        threads=threads, progress=False, backend="portable", cache_mb=1e9)
        self.run = Run(folder, self.manifest, work, data, data, cfg, resume=False)
        self.run.val_cache = self.run.cache  # evaluation reads the same samples: one cache
        self.key = {"export": self.hash, "data": data_identity, "shape": list(self.run.cache.shape)} \
            if data_identity else None
        self.saved = self.key is not None and self._load_features()

    def _load_features(self) -> bool:
        try:
            if json.loads((self.work / "features.json").read_text()) != self.key:
                return False
            self.run.cache.fill(np.load(self.work / "features.npy", mmap_mode="r"))
            self.run.features_checked = True
            return True
        except (OSError, ValueError):  # none yet, or damaged: computed again
            return False

    def _save_features(self) -> None:
        """features.npy (float32 [n, *features]) + features.json (its key), each written then renamed."""
        if self.key is None or self.saved or not self.run.cache.filled.all():
            return
        (self.work / "features.json").unlink(missing_ok=True)  # never a key beside another data's features
        tmp = self.work / "features.tmp.npy"
        np.save(tmp, np.asarray(self.run.cache.store))
        os.replace(tmp, self.work / "features.npy")
        (self.work / "features.json.tmp").write_text(json.dumps(self.key))
        os.replace(self.work / "features.json.tmp", self.work / "features.json")
        self.saved = True

    def fit(self, tensors: dict[str, np.ndarray], epochs: int, lr: float, seed: int) -> tuple[dict, dict]:
        """`epochs` local epochs from the global `tensors` at constant rate `lr` (fresh AdamW state), shuffled
        with seeds seed, seed + 1, ... -> (trained tensors by key, metrics for the reply)."""
        t0 = time.perf_counter()
        self.run.restart(tensors, epochs, lr, seed)
        last = self.run.run()
        self._save_features()
        return ({k: v.copy() for k, v in self.run.trainer.parameters().items()},
                {"num-examples": len(self.data), "train-loss": float(last["train_loss"]),
                 "train-acc": float(last["train_acc"]), "train-seconds": time.perf_counter() - t0})

    def evaluate(self, tensors: dict[str, np.ndarray]) -> dict:
        """Loss and accuracy of the global `tensors` on this node's data."""
        self.run.trainer.reset(tensors)
        result = self.run.evaluate()
        self._save_features()
        return {"num-examples": len(self.data), "loss": float(result["val_loss"]), "accuracy": float(result["val_acc"])}


_NODES: dict[tuple, Node] = {}  # per process: a simulation runs many virtual nodes in a few worker processes


def node(context: Context) -> Node:
    folder = setting(context, "export")
    if not folder:
        raise RunnerError("no export: set run config export=PATH (an artifact folder of mobiletl-export)")
    key = (context.run_id, context.node_id)
    if key not in _NODES:
        folder = absolute("export", folder).resolve()
        manifest = load_manifest(folder, "portable")
        data, identity = node_data(context, manifest["num_classes"], manifest["resolution"])
        own = f"run-{context.run_id}-node-{context.node_id}"
        if context.node_config.get("work-dir"):  # this node's folder
            work = absolute("work-dir", context.node_config["work-dir"])
        elif context.run_config.get("work-dir"):  # every node's parent folder
            work = absolute("work-dir", context.run_config["work-dir"]) / own
        else:
            work = Path(tempfile.gettempdir()) / "mobiletl-federated" / own
        threads = int(setting(context, "threads", 1)) or None
        _NODES[key] = Node(folder, data, work, int(setting(context, "batch-size", 32)), threads, identity)
    return _NODES[key]


def _same_export(msg: Message, me: Node) -> bool:
    """Whether the server's message was made for this node's export. When not, the node does not train: it
    replies only its manifest hash, and the server refuses the reply (server.py ExportCheck)."""
    theirs = msg.content["config"].get(HASH_KEY)
    if theirs == me.hash:
        return True
    log.warning("this node's export %s (manifest sha256 %s) is not the server's (%s): not training; deploy the "
                "same export on every device", me.folder, me.hash[:12], str(theirs)[:12])
    return False


def _reply(msg: Message, me: Node, metrics: dict | None = None, tensors: dict | None = None) -> Message:
    content = RecordDict({EXPORT_RECORD: ConfigRecord({HASH_KEY: me.hash})})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    if tensors is not None:
        content["arrays"] = to_record(tensors, me.manifest)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    me = node(context)
    if not _same_export(msg, me):
        return _reply(msg, me)
    config = msg.content["config"]
    tensors = from_record(msg.content["arrays"], me.manifest, "the server's model")
    epochs, lr = int(config["local-epochs"]), float(config["lr"])
    if not (epochs >= 1 and math.isfinite(lr) and lr > 0):
        raise RunnerError(f"bad round config: local-epochs {epochs}, lr {lr}")
    seed = int(config.get("seed", 0)) + (int(config["server-round"]) - 1) * epochs
    trained, metrics = me.fit(tensors, epochs, lr, seed)
    return _reply(msg, me, metrics, trained)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    me = node(context)
    if not _same_export(msg, me):
        return _reply(msg, me)
    return _reply(msg, me, me.evaluate(from_record(msg.content["arrays"], me.manifest, "the server's model")))
