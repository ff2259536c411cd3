"""ONNX Runtime's training classes without torch.

`onnxruntime.training.api` imports torch in 1.19.2, and even a bare `import onnxruntime` imports it when it
is installed (onnxruntime_validation tries ORTModule). The compiled module `_pybind_state` has the same
CheckpointState / Module / Optimizer; torch is kept out of the import by a None entry in sys.modules while
onnxruntime loads (its validation catches the ImportError).
"""

from __future__ import annotations

import sys

import numpy as np


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


class Trainer:
    """CheckpointState + Module + Optimizer over an artifact folder."""

    def __init__(self, folder, checkpoint: str, threads: int | None = None):
        self.device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
        options = session_options(threads, training=True)
        self.state = C.load_checkpoint(str(checkpoint))
        self.module = C.Module(str(folder / "training_model.onnx"), self.state, str(folder / "eval_model.onnx"),
                               self.device, options)
        self.optimizer = C.Optimizer(str(folder / "optimizer_model.onnx"), self.state, self.device, options)

    def train_step(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        out = C.OrtValueVector()
        self.module.lazy_reset_grad()
        self.module.train_step([features, labels], out)
        return float(out[0].numpy()), out[1].numpy()

    def optimizer_step(self, lr: float) -> None:
        self.optimizer.set_learning_rate(lr)
        self.optimizer.optimizer_step()

    def eval_step(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        out = C.OrtValueVector()
        self.module.eval_step([features, labels], out)
        return float(out[0].numpy()), out[1].numpy()

    def save(self, path: str) -> None:
        C.save_checkpoint(self.state, str(path), True)

    def export_top(self, path: str) -> None:
        self.module.export_model_for_inferencing(str(path), ["logits"])


class Inference:
    """A plain inference session (backbone, or the joined model)."""

    def __init__(self, path, threads: int | None = None):
        self.session = onnxruntime.InferenceSession(str(path), session_options(threads),
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]
