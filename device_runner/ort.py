"""ONNX Runtime's training classes without torch.

`onnxruntime.training.api` imports torch in 1.19.2, and even a bare `import onnxruntime` imports it when it
is installed (onnxruntime_validation tries ORTModule). The compiled module `_pybind_state` has the same
CheckpointState / Module / Optimizer; torch is kept out of the import by a None entry in sys.modules while
onnxruntime loads (its validation catches the ImportError).
"""

from __future__ import annotations

import functools
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


NCHWC = "com.microsoft.nchwc"  # ORT's internal blocked-layout kernels (x86 builds only)


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int:
    """Channel block size B of this ONNX Runtime's NCHWc kernels (16 with AVX-512, 8 with AVX2), 0 without
    them. ReorderInput pads channels up to a multiple of B, so reordering a 4-channel tensor (it needs a multiple
    of 4) reveals B."""
    from onnx import TensorProto, helper

    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC, channels_last=0)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(NCHWC, 1)],
                              ir_version=9)
    options = session_options(1)
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the kernel is not registered (non-x86 build)
        return 0
    return int(session.run(None, {"x": np.ones((1, 4, 1, 1), np.float32)})[0].shape[1])


def nchwc_mismatch(block: int) -> str | None:
    """None if this ONNX Runtime runs graphs built for NCHWc block size `block` (0: no NCHWc), else why not."""
    here = nchwc_block_size()
    if block == 0 or block == here:
        return None
    have = f"block size {here}" if here else "no NCHWc kernels (not an x86 build)"
    return f"the graphs use NCHWc block size {block} and this machine's onnxruntime has {have}"


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
