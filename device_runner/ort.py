"""ONNX Runtime for the runner: sessions, the NCHWc probe, and the `ort-training` backend.

Plain onnxruntime (any build >= 1.17) runs the portable step (portable.py). Where onnxruntime-training 1.19
is installed, `OrtTrainingTrainer` runs the ORT-training artifacts through its CheckpointState / Module /
Optimizer. `onnxruntime.training.api` imports torch in 1.19.2, and even a bare `import onnxruntime` imports
it when it is installed (onnxruntime_validation tries ORTModule). The compiled module `_pybind_state` has the
same classes; torch is kept out of the import by a None entry in sys.modules while onnxruntime loads (its
validation catches the ImportError).
"""

from __future__ import annotations

import base64
import functools
import sys
from pathlib import Path

import numpy as np

from . import RunnerError


def _import_capi():
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import onnxruntime
        import onnxruntime.capi._pybind_state as C
    finally:
        if blocked:
            del sys.modules["torch"]
    return onnxruntime, C


onnxruntime, C = _import_capi()


def session_options(threads: int | None, training: bool = False):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if training:
        # ORT's memory pattern pre-plans one arena block for the whole step; for a training graph, whose
        # stored tensors live across it, that block measured 1.7x the peak of planning off (mbv2 top-5,
        # batch 32: 453 vs 261 MiB), at no step-time cost.
        options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


NCHWC = "com.microsoft.nchwc"  # ORT's internal blocked-layout kernels (x86 builds only)


# A 147-byte ONNX model: one com.microsoft.nchwc ReorderInput of x float [1, 4, 1, 1] (opset 18, IR 9). Stored
# as bytes so the runner needs no onnx package; tests/test_portable.py rebuilds it with onnx.helper and compares.
NCHWC_PROBE = base64.b64decode(
    "CAk6cAo/CgF4EgF5IgxSZW9yZGVySW5wdXQqFAoNY2hhbm5lbHNfbGFzdBgAoAECOhNjb20ubWljcm9zb2Z0Lm5jaHdjEgVwcm9iZVob"
    "CgF4EhYKFAgBEhAKAggBCgIIBAoCCAEKAggBYgkKAXkSBAoCCAFCBAoAEBJCFwoTY29tLm1pY3Jvc29mdC5uY2h3YxAB")


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int:
    """Channel block size B of this ONNX Runtime's NCHWc kernels (16 with AVX-512, 8 with AVX2), 0 without
    them. ReorderInput pads channels up to a multiple of B, so reordering a 4-channel tensor (it needs a multiple
    of 4) reveals B."""
    options = session_options(1)
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(NCHWC_PROBE, options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the kernel is not registered (non-x86 build)
        return 0
    return int(session.run(None, {"x": np.ones((1, 4, 1, 1), np.float32)})[0].shape[1])


def has_training_api() -> bool:
    """Is this onnxruntime-training (CheckpointState, Module, Optimizer available)?"""
    return hasattr(C, "Module") and hasattr(C, "load_checkpoint")


def nchwc_mismatch(block: int) -> str | None:
    """None if this ONNX Runtime runs graphs built for NCHWc block size `block` (0: no NCHWc), else why not."""
    here = nchwc_block_size()
    if block == 0 or block == here:
        return None
    have = f"block size {here}" if here else "no NCHWc kernels (not an x86 build)"
    return f"the graphs use NCHWc block size {block} and this machine's onnxruntime has {have}"


class OrtTrainingTrainer:
    """`--backend ort-training`: CheckpointState + Module + Optimizer over the ORT-training artifacts.

    Same interface as portable.PortableTrainer: step(), eval_step(), save(), parameters()."""

    CHECKPOINT = "ort_checkpoint"

    def __init__(self, folder: Path, manifest: dict, checkpoint: Path | None = None, threads: int | None = None):
        if not has_training_api():
            raise RunnerError(f"--backend ort-training needs onnxruntime-training; this is onnxruntime "
                              f"{onnxruntime.__version__} (use the default portable backend)")
        files = manifest["files"]
        self.trainable = list(manifest["trainable"])
        self.device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
        options = session_options(threads, training=True)
        self.state = C.load_checkpoint(str(checkpoint or folder / files["checkpoint"]))
        self.module = C.Module(str(folder / files["training_model"]), self.state, str(folder / files["eval_model"]),
                               self.device, options)
        self.optimizer = C.Optimizer(str(folder / files["optimizer_model"]), self.state, self.device, options)

    def step(self, features: np.ndarray, labels: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        """Gradients, then AdamW/SGD at `lr`; no update when the loss is not finite."""
        out = C.OrtValueVector()
        self.module.lazy_reset_grad()
        self.module.train_step([features, labels], out)
        loss, logits = float(out[0].numpy()), out[1].numpy()
        if np.isfinite(loss):
            self.optimizer.set_learning_rate(lr)
            self.optimizer.optimizer_step()
        return loss, logits

    def eval_step(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        out = C.OrtValueVector()
        self.module.eval_step([features, labels], out)
        return float(out[0].numpy()), out[1].numpy()

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: self.state.get_parameter(k).data.numpy() for k in self.trainable}

    def save(self, path: Path) -> None:
        C.save_checkpoint(self.state, str(path), True)


class Inference:
    """A plain inference session (backbone, or the joined model)."""

    def __init__(self, path, threads: int | None = None):
        self.session = onnxruntime.InferenceSession(str(path), session_options(threads),
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]
