"""Runs inside a runner environment (plain onnxruntime, no torch, no onnx) for tests/test_portable.py.

    python tests/portable_worker.py JOBS.json OUT_DIR

Each job reads its inputs from an .npz and writes `<id>.npz` into OUT_DIR:
  train  PortableTrainer on an export folder: `steps` steps on one batch at `lr`; losses, logits of the first
         step, parameters after the steps, eval_step logits before training
  run    one InferenceSession run of `model` on the named feeds, returning the named outputs
  order  one training step with ORT's profiler on; `order` = the node names in the order ORT ran them
Prints {"onnxruntime": version} last, so the test can say which runtime it compared.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime

from device_runner.portable import PortableTrainer


def train(job: dict, data) -> dict:
    folder = Path(job["folder"])
    trainer = PortableTrainer(folder, json.loads((folder / "manifest.json").read_text()))
    out = {"eval_logits": trainer.eval_step(data["features"], data["labels"])[1]}
    losses = []
    for i in range(job["steps"]):
        loss, logits = trainer.step(data["features"], data["labels"], job["lr"])
        losses.append(loss)
        if i == 0:
            out["logits"] = logits
    out["losses"] = np.asarray(losses)
    out.update({f"param/{k}": v for k, v in trainer.parameters().items()})
    return out


def run(job: dict, data) -> dict:
    session = onnxruntime.InferenceSession(job["model"], providers=["CPUExecutionProvider"])
    values = session.run(job["outputs"], {k: data[k] for k in job["feeds"]})
    return dict(zip(job["outputs"], values))


def order(job: dict, data) -> dict:
    import tempfile

    folder = Path(job["folder"])
    with tempfile.TemporaryDirectory() as tmp:  # ORT's profile file: read, then removed with the folder
        trainer = PortableTrainer(folder, json.loads((folder / "manifest.json").read_text()), profile=f"{tmp}/order")
        trainer.step(data["features"], data["labels"], 1e-3)
        names = [e["name"][:-len("_kernel_time")] for e in trainer.profile_events()
                 if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return {"order": np.asarray(names)}


def main(jobs_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    for job in json.loads(Path(jobs_path).read_text()):
        with np.load(job["inputs"]) as data:
            result = {"train": train, "run": run, "order": order}[job["kind"]](job, data)
        np.savez(out / f"{job['id']}.npz", **result)
    assert "torch" not in sys.modules and "onnx" not in sys.modules, "the runner must not import torch or onnx"
    print(json.dumps({"onnxruntime": onnxruntime.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:])
