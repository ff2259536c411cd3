"""The training loop: backbone features (cached), training steps (portable or ORT-training backend),
evaluation, checkpoints, metrics."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import RunnerError, checkpoint
from .cache import FeatureCache
from .data import Dataset, preprocess
from .order import EPOCH, permutation
from .ort import Inference

# how epochs are shuffled (device_runner/order.py); a checkpoint made with another order cannot be resumed
SHUFFLE = "pcg32 fisher-yates(seed + epoch, stream 0)"

BACKENDS = ("portable", "ort-training")


def trainer_class(backend: str):
    """portable: train_step.onnx on any onnxruntime; ort-training: ORT's training API (onnxruntime-training)."""
    if backend == "portable":
        from .portable import PortableTrainer

        return PortableTrainer
    if backend == "ort-training":
        from .ort import OrtTrainingTrainer

        return OrtTrainingTrainer
    raise RunnerError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


@dataclass
class RunConfig:
    epochs: int = 5
    batch_size: int = 8
    lr: float | None = None  # default: the manifest's
    schedule: str = "cosine"  # cosine | linear | constant
    checkpoint_every: int = 100
    cache_mb: float = 1024
    cache: bool = True
    threads: int | None = None
    seed: int = 0
    progress: bool = True
    max_steps: int | None = None  # stop early (tests, benchmarks)
    backend: str = "portable"
    checkpoints: bool = True  # False: no checkpoint/ (a federated round restarts from the global tensors)


# Below this spread of the backbone's features across images (mean over feature elements of the standard
# deviation over samples), the frozen layers map every image to the same point: a randomly initialised
# MobileNet with default BatchNorm statistics gives ~1e-7, a trained one ~1 (EfficientNet-Lite0 ImageNet: 5.8).
DEAD_FEATURE_SPREAD = 1e-4


def check_features(features: np.ndarray) -> None:
    """Refuse features that do not depend on the image (float32 [N >= 2, C, H, W] of N different images)."""
    spread = float(features.reshape(len(features), -1).std(axis=0).mean())
    if not np.isfinite(features).all():
        raise RunnerError("the backbone gives NaN or infinite features: the export's frozen weights are broken")
    if spread < DEAD_FEATURE_SPREAD:
        raise RunnerError(f"the backbone gives (almost) the same features for every image (spread {spread:.1e} across "
                          "images): its frozen layers are untrained, so nothing can be learnt; export with --weights "
                          "FILE (a trained state_dict)")


def learning_rate(base: float, schedule: str, step: int, total: int) -> float:
    if schedule == "constant" or total <= 1:
        return base
    t = min(step / total, 1.0)
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return base * (1 - t)
    raise RunnerError(f"unknown schedule {schedule!r}")


def epoch_line(r: dict, epochs: int) -> str:
    """One human-readable line per epoch (stderr; metrics.jsonl has the record)."""
    val = f", val loss {r['val_loss']:.4g} acc {r['val_acc']:.3f}" if "val_loss" in r else ""
    return (f"epoch {r['epoch']}/{epochs}: train loss {r['train_loss']:.4g} acc {r['train_acc']:.3f}{val}, "
            f"{r['samples_per_s']:.0f} img/s")


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, unless disabled or stderr is not a terminal (a log file would fill with redraws)."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=True, file=sys.stderr, dynamic_ncols=True)


def fresh_state(seed: int) -> dict:
    """The loop state (checkpointed as state.json) of a training that has not taken a step."""
    return {"step": 0, "epoch": 0, "seed": seed, "shuffle": SHUFFLE,
            "epoch_loss_sum": 0.0, "epoch_correct": 0, "epoch_seen": 0}


class Run:
    def __init__(self, folder: Path, manifest: dict, run_dir: Path, train: Dataset, val: Dataset | None,
                 cfg: RunConfig, resume: bool):
        self.folder, self.manifest, self.run_dir, self.cfg = folder, manifest, run_dir, cfg
        self.train_data, self.val_data = train, val
        self.resolution = manifest["resolution"]
        self.norm = manifest["normalization"]
        self.feature_shape = tuple(manifest["inputs"]["training"]["features"][1:])
        self.backbone = Inference(folder / manifest["files"]["backbone"], cfg.threads)
        self.cache = FeatureCache(len(train), self.feature_shape, cfg.cache_mb, run_dir, "features", cfg.cache)
        self.val_cache = FeatureCache(len(val), self.feature_shape, cfg.cache_mb, run_dir, "val_features",
                                      cfg.cache) if val is not None else None
        self.features_checked = False  # check_features on the first backbone batch of >= 2 images
        self.lr = cfg.lr if cfg.lr is not None else manifest["optimizer"]["lr"]
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.state = fresh_state(cfg.seed)
        start = None  # the export's initial parameters
        trainer = trainer_class(cfg.backend)
        self.note = None
        if resume:
            start, state, index, self.note = checkpoint.load(run_dir, trainer.CHECKPOINT)
            self.state = state or self.state
            if state is None:
                index = None
            if self.state.get("shuffle") != SHUFFLE:
                raise RunnerError(f"run {run_dir} was made by an older runner that shuffled differently "
                                  f"({self.state.get('shuffle')}); start a new run (--force)")
            self.cache.restore_index(index)
        self.trainer = trainer(folder, manifest, start, cfg.threads)
        self.metrics = open(run_dir / "metrics.jsonl", "a")

    def restart(self, parameters: dict[str, np.ndarray], epochs: int, lr: float, seed: int) -> None:
        """Begin a new training of `epochs` epochs at base rate `lr` from `parameters` (trainable tensors by
        state_dict key, float32): fresh optimizer state, step 0, epochs shuffled with seeds `seed`, `seed + 1`,
        ...; the feature cache is kept (the backbone is frozen). A federated client calls it every round with
        the global model (device_runner/federated/client.py). Portable backend only (RunnerError otherwise)."""
        if not hasattr(self.trainer, "reset"):
            raise RunnerError(f"backend {self.cfg.backend} cannot restart from given parameters; use portable")
        self.trainer.reset(parameters)
        self.cfg = replace(self.cfg, epochs=epochs, seed=seed)
        self.lr = lr
        self.total_steps = self.steps_per_epoch * epochs
        self.state = fresh_state(seed)

    # -- pieces ------------------------------------------------------------------------------------------
    def _compute(self, data: Dataset, idx: np.ndarray) -> np.ndarray:
        """Backbone features of samples `idx`: one full-size decoded image at a time (photos can be 12 MP)."""
        x = np.empty((len(idx), 3, self.resolution, self.resolution), np.float32)
        for k, i in enumerate(idx):
            x[k] = preprocess([data.image(i)], self.resolution, self.norm["mean"], self.norm["std"],
                              self.manifest.get("preprocess"))[0]
        features = self.backbone(x)
        if not self.features_checked and len(idx) >= 2:
            check_features(features)
            self.features_checked = True
        return features

    def features(self, data: Dataset, cache: FeatureCache, index: np.ndarray) -> np.ndarray:
        return cache.get(index, lambda idx: self._compute(data, idx))

    def check_backbone(self) -> None:
        """Compute the features of the first training images and refuse a dead backbone (check_features) before
        anything is trained or printed (outside the cache, so its hit counts stay true: 8 images are computed
        again in the first epoch)."""
        if len(self.train_data) >= 2 and not self.features_checked:  # outside the cache: its counts stay true
            self._compute(self.train_data, np.arange(min(len(self.train_data), 8)))

    def log(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def save(self) -> None:
        if not self.cfg.checkpoints:
            return
        self.cache.flush()
        checkpoint.save(self.run_dir, self.trainer, self.state, self.cache.filled)

    def evaluate(self) -> dict:
        """Loss and accuracy of the eval model on the validation set."""
        data = self.val_data
        if data is None:
            return {}
        loss_sum, correct = 0.0, 0
        for start in range(0, len(data), self.cfg.batch_size):
            index = np.arange(start, min(start + self.cfg.batch_size, len(data)))
            loss, logits = self.trainer.eval_step(self.features(data, self.val_cache, index), data.labels[index])
            loss_sum += loss * len(index)
            correct += int((logits.argmax(1) == data.labels[index]).sum())
        return {"val_loss": loss_sum / len(data), "val_acc": correct / len(data)}

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, st = self.cfg, self.state
        last = {}
        while st["step"] < self.total_steps:
            epoch = st["step"] // self.steps_per_epoch
            if epoch != st["epoch"]:
                st.update(epoch=epoch, epoch_loss_sum=0.0, epoch_correct=0, epoch_seen=0)
            order = permutation(len(self.train_data), cfg.seed + epoch, EPOCH)
            first = st["step"] - epoch * self.steps_per_epoch
            bar = _progress(len(order), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
            if bar is not None:
                bar.update(first * cfg.batch_size)
            t0, seen0 = time.perf_counter(), 0
            for b in range(first, self.steps_per_epoch):
                index = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                feats = self.features(self.train_data, self.cache, index)
                labels = self.train_data.labels[index]
                lr = learning_rate(self.lr, cfg.schedule, st["step"], self.total_steps)
                loss, logits = self.trainer.step(feats, labels, lr)  # no update when the loss is not finite
                if not math.isfinite(loss):
                    raise RunnerError(f"loss became {loss} at step {st['step']}; lower --lr")
                st["step"] += 1
                st["epoch_loss_sum"] += loss * len(index)
                st["epoch_correct"] += int((logits.argmax(1) == labels).sum())
                st["epoch_seen"] += len(index)
                seen0 += len(index)
                rate = seen0 / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.update(len(index))
                    bar.set_postfix(loss=f"{st['epoch_loss_sum'] / st['epoch_seen']:.3f}",
                                    acc=f"{st['epoch_correct'] / st['epoch_seen']:.3f}", img_s=f"{rate:.0f}")
                if st["step"] % cfg.checkpoint_every == 0:
                    self.save()
                    self.log({"event": "checkpoint", "step": st["step"]})
                if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                    break
            if bar is not None:
                bar.close()
            epoch_done = st["step"] % self.steps_per_epoch == 0
            last = {"event": "epoch" if epoch_done else "partial-epoch", "epoch": epoch + 1, "step": st["step"],
                    "lr": learning_rate(self.lr, cfg.schedule, st["step"], self.total_steps),
                    "train_loss": st["epoch_loss_sum"] / max(st["epoch_seen"], 1),
                    "train_acc": st["epoch_correct"] / max(st["epoch_seen"], 1),
                    "samples_per_s": seen0 / max(time.perf_counter() - t0, 1e-9),
                    "cache": self.cache.kind, "cache_hits": self.cache.hits, "cache_misses": self.cache.misses}
            last.update(self.evaluate())
            self.log(last)
            if cfg.progress:
                print(epoch_line(last, cfg.epochs), file=sys.stderr, flush=True)
            if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                break
        self.save()
        return last

    def export(self, out: Path) -> Path:
        """The joined image -> logits model with the trained parameters (inference.py)."""
        from .inference import write_inference

        from .data import class_names

        return write_inference(self.folder, self.manifest, self.trainer.parameters(), out,
                               class_names(self.train_data, self.manifest["num_classes"]))

    def close(self) -> None:
        self.metrics.close()
