"""The portable backend: train_step.onnx / eval_step.onnx on plain onnxruntime (InferenceSession only).

The runner holds the trainable tensors as one flat float32 vector `params` [P] and, for AdamW, the moments
`exp_avg`, `exp_avg_sq` [P] and the step count; one `run` of train_step.onnx (the per-key parameter inputs
bound to views of `params`) returns the loss, the logits and the updated vectors (manifest["portable"],
docs/MANIFEST.md). Checkpoints are safetensors files with each
tensor under its state_dict key and the moments under `exp_avg/<key>`, `exp_avg_sq/<key>` (torch's names),
so PyTorch, JavaScript or numpy read them without onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import RunnerError
from .ort import onnxruntime, session_options

CHECKPOINT_FORMAT = "mobiletl-portable/1"


def load_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; RunnerError when it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunnerError(f"cannot read {path}: {exc}") from None


class PortableTrainer:
    """Training state (flat parameters, optimizer state, step) and the two sessions of an export.

    Same interface as ort.OrtTrainingTrainer: step(), eval_step(), save(), parameters()."""

    CHECKPOINT = "parameters.safetensors"

    def __init__(self, folder: Path, manifest: dict, checkpoint: Path | None = None, threads: int | None = None,
                 profile: str | None = None):
        """`profile`: a file prefix; ORT's profiler records every train_step run (read it with profile_events)."""
        spec = manifest["portable"]
        self.entries = spec["parameters"]
        self.train_io, self.eval_io = spec["train_step"], spec["eval_step"]
        self.state_names = list(spec["optimizer"]["state"])
        self.size = spec["parameter_count"]  # P
        files = manifest["files"]
        options = session_options(threads, training=True)
        if profile:
            options.enable_profiling, options.profile_file_prefix = True, profile
        try:
            self.session = onnxruntime.InferenceSession(str(folder / files["train_step"]), options,
                                                        providers=["CPUExecutionProvider"])
            self.eval_session = onnxruntime.InferenceSession(str(folder / files["eval_step"]),
                                                             session_options(threads),
                                                             providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; report one line
            raise RunnerError(f"onnxruntime {onnxruntime.__version__} cannot load the portable step of {folder}: "
                              f"{str(exc).splitlines()[0]}") from None
        self.load(checkpoint or folder / files["parameters"])

    # -- state -------------------------------------------------------------------------------------------
    def load(self, path: Path) -> None:
        tensors, meta = load_tensors(path)
        self.params = self._flat(tensors, "", path)
        try:
            self.step_count = int(meta.get("step", 0))
        except ValueError:
            raise RunnerError(f"{path}: metadata step {meta.get('step')!r} is not an integer") from None
        self.state = {}
        for name in self.state_names:
            if self.step_count == 0 and not any(k.startswith(f"{name}/") for k in tensors):
                self.state[name] = np.zeros(self.size, np.float32)
            else:
                self.state[name] = self._flat(tensors, f"{name}/", path)

    def reset(self, parameters: dict[str, np.ndarray]) -> None:
        """Start again from `parameters` (state_dict key -> float32 array of the manifest's shape, every
        trainable key) with a fresh optimizer: zero moments, step 0 — a new local training from a global model
        (device_runner/federated). RunnerError naming the first missing or mis-shaped tensor."""
        self.params = self._flat(parameters, "", "the given parameters")
        self.state = {name: np.zeros(self.size, np.float32) for name in self.state_names}
        self.step_count = 0

    def _flat(self, tensors: dict, prefix: str, path: Path | str) -> np.ndarray:
        flat = np.empty(self.size, np.float32)
        for e in self.entries:
            t = tensors.get(prefix + e["name"])
            if t is None:
                raise RunnerError(f"{path} has no tensor {prefix + e['name']!r}: not a checkpoint of this export")
            if list(t.shape) != e["shape"] or t.dtype != np.float32:
                raise RunnerError(f"{path}: {prefix + e['name']} is {t.dtype} {list(t.shape)}, the export needs "
                                  f"float32 {e['shape']}")
            flat[e["offset"]:e["offset"] + e["size"]] = t.reshape(-1)
        return flat

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable tensors by state_dict key: views of the flat vector (they follow its in-place updates)."""
        return {e["name"]: self.params[e["offset"]:e["offset"] + e["size"]].reshape(e["shape"])
                for e in self.entries}

    def _bind_parameters(self, binding) -> None:
        """Each per-key input bound to its view of `params` (no copy)."""
        for name, view in self.parameters().items():
            binding.bind_ortvalue_input(name, onnxruntime.OrtValue.ortvalue_from_numpy(view))

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = dict(self.parameters())
        for name in self.state_names:
            tensors.update({f"{name}/{e['name']}": self.state[name][e["offset"]:e["offset"] + e["size"]]
                           .reshape(e["shape"]) for e in self.entries})
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
                  metadata={"format": CHECKPOINT_FORMAT, "step": str(self.step_count)})

    # -- steps -------------------------------------------------------------------------------------------
    def step(self, features: np.ndarray, labels: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        """One training step at learning rate `lr` (features float32 [N, C, H, W], labels int64 [N]) ->
        (loss, logits float32 [N, K]).

        The updated parameters and moments are written in place: each `*_out` output is bound (IOBinding) to
        the buffer of its input. Every node that reads an input runs before the node that writes its output
        (the update is the last node of each chain), so this equals the functional update (checked by the
        parity tests on onnxruntime 1.17 and the newest) and keeps the state once in memory instead of twice
        (for mbv2 top-5: 3 x 7.2 MB). If ORT ever returns a buffer of its own, it is copied back. After a
        non-finite loss the state is not usable: the runner stops without saving, its last checkpoint stands.
        """
        i, o = self.train_io["inputs"], self.train_io["outputs"]
        binding = self.session.io_binding()
        binding.bind_cpu_input(i["features"], np.ascontiguousarray(features, np.float32))
        binding.bind_cpu_input(i["labels"], np.ascontiguousarray(labels, np.int64))
        binding.bind_cpu_input(i["lr"], np.asarray(lr, np.float32))
        if "step" in i:
            binding.bind_cpu_input(i["step"], np.asarray(self.step_count, np.int64))
        self._bind_parameters(binding)
        state = {"params": self.params, **self.state}
        values = {role: onnxruntime.OrtValue.ortvalue_from_numpy(array) for role, array in state.items()}
        for role, value in values.items():
            binding.bind_ortvalue_input(i[role], value)
        binding.bind_output(o["loss"])
        binding.bind_output(o["logits"])
        for role, value in values.items():
            binding.bind_ortvalue_output(o[role], value)
        self.session.run_with_iobinding(binding)
        loss, logits, *updated = binding.get_outputs()
        for (role, array), value in zip(state.items(), updated):
            if value.data_ptr() != array.ctypes.data:
                array[:] = value.numpy()
        self.step_count += 1
        return float(loss.numpy()), logits.numpy()

    def profile_events(self) -> list[dict]:
        """Ends profiling (trainer made with `profile`) and returns ORT's trace events (Chrome trace JSON)."""
        import json

        return json.loads(Path(self.session.end_profiling()).read_text())

    def eval_step(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        i, o = self.eval_io["inputs"], self.eval_io["outputs"]
        binding = self.eval_session.io_binding()
        binding.bind_cpu_input(i["features"], np.ascontiguousarray(features, np.float32))
        binding.bind_cpu_input(i["labels"], np.ascontiguousarray(labels, np.int64))
        self._bind_parameters(binding)
        binding.bind_output(o["loss"])
        binding.bind_output(o["logits"])
        self.eval_session.run_with_iobinding(binding)
        loss, logits = binding.get_outputs()
        return float(loss.numpy()), logits.numpy()
