"""The portable step (train_step.onnx, eval_step.onnx, inference.onnx) on plain onnxruntime equals PyTorch.

The exports and the PyTorch reference run here (torch, onnxruntime-training); the portable models run in the
runner environments that scripts/setup.sh builds — `.venv-runner` (newest onnxruntime on PyPI) and
`.venv-runner-min` (1.17, the oldest supported) — with no torch and no onnx, through tests/portable_worker.py,
in one process per environment. Same batches and tolerances as test_parity.py: loss rtol 1e-4, gradients
rtol 1e-3 / atol 1e-5, logits 1e-4, parameters after 5 optimizer steps atol 1e-4 (Adam's noise-level
elements bounded by the steps' length). The 5-step runs are also compared with the ORT-training artifacts'
own step (Module + Optimizer), which must agree with the portable step to the same tolerance.
"""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from ort_harness import EXACT_HS, OrtTraining, build, clean_batch

from device_runner.inference import initializer_chunk
from device_runner.ort import NCHWC, NCHWC_PROBE, nchwc_block_size
from mobiletl_export.analyze.memory import measure_stored
from mobiletl_export.package import portable
from mobiletl_export.reference import ReferenceTrainer

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = {"newest": ROOT / ".venv-runner", "oldest": ROOT / ".venv-runner-min"}
MODELS = ["mbv2", "mbv3-large", "mbv3-small", "efficientnet-lite0"]
RES, BATCH, CLASSES, LR = 64, 4, 10, 1e-3
HOST = ["host"] if nchwc_block_size() else []
GRAD_CASES = [(m, method, k, "generic") for m in MODELS for method in ("mobiletl", "vanilla") for k in (1, 3, 5)]
GRAD_CASES += [("mbv3-small", method, 11, "generic") for method in ("mobiletl", "vanilla")]  # every IRB
GRAD_CASES += [(m, "mobiletl", 5, t) for m in MODELS for t in HOST]
GRAD_CASES += [(m, EXACT_HS, 3, "generic") for m in ("mbv3-large", "mbv3-small")]  # exact Hard-Swish backward
# AdamW at k = 3, SGD at k = 5: as in test_parity.py, Adam turns float noise in gradients that shrink towards
# zero over the steps into 2e-4 parameter differences at k = 5, for every implementation pair. Lite0 finds no
# batch clear of activation kinks for six SGD passes at 48 px at some k (vanilla 3 and 5, mobiletl 4 and 5), so
# its SGD cases use k = 3 (mobiletl) and 4 (vanilla).
SGD_K = {"efficientnet-lite0": {"mobiletl": 3, "vanilla": 4}}
STEP_CASES = [(m, method, opt, k if opt == "adamw" else SGD_K.get(m, {}).get(method, 5), "generic")
              for m in MODELS for method in ("mobiletl", "vanilla") for opt, k in (("adamw", 3), ("sgd", 5))]
STEP_CASES += [(m, "mobiletl", opt, 3, t) for m in ("mbv2", "efficientnet-lite0") for opt in ("adamw", "sgd")
               for t in HOST]
STEP_CASES += [("mbv3-large", EXACT_HS, "adamw", 3, "generic"), ("mbv3-small", EXACT_HS, "sgd", 5, "generic")]
ORDER_CASES = [(m, method) for m in MODELS for method in ("mobiletl", "vanilla")]
INFERENCE_CASES = [("mbv2", "mobiletl", 5), ("mbv3-large", "mobiletl", 5), ("efficientnet-lite0", "vanilla", 3),
                   ("mbv3-small", "mobiletl", 11)]
worst = {"loss": 0.0, "grad": 0.0, "param": 0.0, "param_vs_ort_training": 0.0, "logits": 0.0}


def _id(*case) -> str:
    return "-".join(str(c) for c in case)


def _with_gradient_outputs(path: Path, keys, out: Path) -> Path:
    """train_step.onnx with each `<key>_grad` also a graph output (the values are in the graph already)."""
    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_empty_tensor_value_info(f"{k}_grad") for k in keys)
    onnx.save(model, str(out))
    return out


def _step_feeds(result, features, labels) -> dict:
    manifest = json.loads((result.out / "manifest.json").read_text())
    spec = manifest["portable"]
    from safetensors.numpy import load_file

    tensors = load_file(str(result.files["parameters"]))
    params = portable.flatten(tensors, spec["parameters"])
    feeds = {"features": features, "labels": labels, "params": params, "lr": np.float32(0.0), **tensors}
    if spec["optimizer"]["name"] == "adamw":
        feeds.update(exp_avg=np.zeros_like(params), exp_avg_sq=np.zeros_like(params), step=np.int64(0))
    return feeds


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Export every case, compute the references here, run all portable models once per runtime."""
    root = tmp_path_factory.mktemp("portable")
    jobs, expected = [], {}

    def add_job(job_id, kind, arrays, **job):
        np.savez(root / f"{job_id}.in.npz", **arrays)
        jobs.append({"id": job_id, "kind": kind, "inputs": str(root / f"{job_id}.in.npz"), **job})

    for name, method, k, target in GRAD_CASES:
        job_id = _id("grad", name, method, k, target)
        net, result = build(name, method, k, root / job_id, res=RES, target=target)
        _, labels, features = clean_batch(net, RES, BATCH, CLASSES)
        loss, grads = ReferenceTrainer(net).gradients(features, labels)
        with torch.no_grad():
            logits = net.top(features).numpy()
        expected[job_id] = {"loss": loss, "grads": {k_: g.numpy() for k_, g in grads.items()}, "logits": logits}
        model = _with_gradient_outputs(result.files["train_step"], net.plan.trainable, root / f"{job_id}.onnx")
        feeds = _step_feeds(result, features.numpy(), labels.numpy())
        add_job(job_id, "run", feeds, model=str(model), feeds=list(feeds),
                outputs=["loss", "logits"] + [f"{k_}_grad" for k_ in net.plan.trainable])

    for name, method, optimizer, k, target in STEP_CASES:
        job_id = _id("steps", name, method, optimizer, k, target)
        net, result = build(name, method, k, root / job_id, res=48, optimizer=optimizer, lr=LR, target=target)
        _, labels, features = clean_batch(net, 48, 2, CLASSES, steps=5, optimizer=optimizer, lr=LR)
        with torch.no_grad():
            eval_logits = net.top(features).numpy()
        trainer = ReferenceTrainer(net, optimizer=optimizer, lr=LR)
        _, first = trainer.gradients(features, labels)
        ort_run = OrtTraining(result.out)
        losses = [(trainer.step(features, labels), ort_run.step(features.numpy(), labels.numpy(), LR))
                  for _ in range(5)]
        expected[job_id] = {
            "optimizer": optimizer, "losses": np.asarray(losses), "eval_logits": eval_logits,
            "first": {k_: g.numpy() for k_, g in first.items()},
            "params": {k_: p.detach().numpy().copy() for k_, p in trainer.params.items()},
            "ort_training": {k_: ort_run.parameter(k_) for k_ in net.plan.trainable}}
        add_job(job_id, "train", {"features": features.numpy(), "labels": labels.numpy()},
                folder=str(result.out), steps=5, lr=LR)

    for name, method, k in INFERENCE_CASES:
        job_id = _id("inference", name, method, k)
        net, result = build(name, method, k, root / job_id, res=RES)
        images, _, _ = clean_batch(net, RES, BATCH, CLASSES)
        with torch.no_grad():
            expected[job_id] = {"logits": net.model(images).numpy()}
        add_job(job_id, "run", {"image": images.numpy()}, model=str(result.files["inference"]), feeds=["image"],
                outputs=["logits"])

    for name, method in ORDER_CASES:
        job_id = _id("order", name, method)
        net, result = build(name, method, 5, root / job_id, res=RES)
        add_job(job_id, "order", {"features": net.backbone(torch.zeros(2, 3, RES, RES)).numpy(),
                                  "labels": np.zeros(2, np.int64)}, folder=str(result.out))

    (root / "jobs.json").write_text(json.dumps(jobs))
    results, versions = {}, {}
    for runtime, venv in RUNTIMES.items():
        out = root / runtime
        out.mkdir()
        proc = subprocess.run([str(venv / "bin" / "python"), str(ROOT / "tests" / "portable_worker.py"),
                               str(root / "jobs.json"), str(out)], capture_output=True, text=True, cwd=ROOT,
                              env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        versions[runtime] = json.loads(proc.stdout.strip().splitlines()[-1])["onnxruntime"]
        results[runtime] = {job["id"]: dict(np.load(out / f"{job['id']}.npz")) for job in jobs}
    return expected, results, versions


def test_runtimes_are_plain_onnxruntime(suite):
    """The worker ran on plain onnxruntime builds (no training API), newest and oldest supported."""
    _, _, versions = suite
    assert versions["oldest"].startswith("1.17.")
    assert tuple(int(x) for x in versions["newest"].split(".")[:2]) >= (1, 20)
    for venv in RUNTIMES.values():
        probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import onnxruntime.capi._pybind_state as C; assert not hasattr(C, 'Module')"])
        assert probe.returncode == 0


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("name, method, k, target", GRAD_CASES)
def test_gradients_loss_logits_match_reference(suite, runtime, name, method, k, target):
    expected, results, _ = suite
    job_id = _id("grad", name, method, k, target)
    want, got = expected[job_id], results[runtime][job_id]
    assert float(got["loss"]) == pytest.approx(want["loss"], rel=1e-4)
    worst["loss"] = max(worst["loss"], abs(float(got["loss"]) - want["loss"]) / abs(want["loss"]))
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
    for key, g in want["grads"].items():
        np.testing.assert_allclose(got[f"{key}_grad"], g, rtol=1e-3, atol=1e-5, err_msg=key)
        worst["grad"] = max(worst["grad"], float(np.abs(got[f"{key}_grad"] - g).max()))


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("name, method, optimizer, k, target", STEP_CASES)
def test_five_steps_match_reference_and_ort_training(suite, runtime, name, method, optimizer, k, target):
    expected, results, _ = suite
    job_id = _id("steps", name, method, optimizer, k, target)
    want, got = expected[job_id], results[runtime][job_id]
    np.testing.assert_allclose(got["eval_logits"], want["eval_logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["losses"], want["losses"][:, 0], rtol=1e-4, atol=1e-6)  # vs PyTorch
    np.testing.assert_allclose(got["losses"], want["losses"][:, 1], rtol=1e-4, atol=1e-6)  # vs ORT training
    for key, p in want["params"].items():
        mine = got[f"param/{key}"]
        # Adam's first step is lr * g / (|g| + eps): where |g| is at float32 noise, the noise decides its sign
        noisy = np.abs(want["first"][key]) < 1e-6 if optimizer == "adamw" else np.zeros(p.shape, bool)
        # vs ORT training: two float32 implementations, each within atol 1e-4 of PyTorch, differ by up to twice
        # that on O(1) weights (seen: 1.1e-4 on a weight of 1.18 after 5 SGD steps), hence rtol 1e-4 there too
        for other, label, rtol in ((p, "param", 0.0), (want["ort_training"][key], "param_vs_ort_training", 1e-4)):
            np.testing.assert_allclose(mine[~noisy], other[~noisy], rtol=rtol, atol=1e-4, err_msg=f"{key} ({label})")
            assert np.all(np.abs(mine[noisy] - other[noisy]) <= 2 * 5 * LR + 1e-6), key
            worst[label] = max(worst[label], float(np.abs(mine[~noisy] - other[~noisy]).max(initial=0.0)))


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("name, method, k", INFERENCE_CASES)
def test_inference_model_equals_pytorch_model(suite, runtime, name, method, k):
    """inference.onnx (image -> logits, backbone + region, trainable tensors in the trailing chunk)."""
    expected, results, _ = suite
    job_id = _id("inference", name, method, k)
    got, want = results[runtime][job_id]["logits"], expected[job_id]["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    worst["logits"] = max(worst["logits"], float(np.abs(got - want).max()))


# Where the gradient flow is: the conv/linear input-gradient ops of a block run only once the gradient has
# reached it (other backward nodes, such as an exact activation's derivative mask from x, may legitimately run
# early, when ORT likes)
FLOW_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def _block(layer: str) -> str:
    """features.13.conv.0.0 -> features.13 (IRB), _blocks.7._expand_conv -> _blocks.7; tail/head layers as is."""
    match = re.match(r"(features\.\d+|_blocks\.\d+)", layer)
    return match.group(1) if match else layer


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("name, method", ORDER_CASES)
def test_ort_runs_the_backward_block_by_block(suite, runtime, name, method):
    """In the order ORT actually runs the portable step (its profiler, after its graph optimizations), the
    backward walks the blocks top-down: no backward node of a block runs after the backward of a block two
    or more below it has started (adjacent blocks may interleave). A deferred weight gradient keeps the
    activations it reads alive to the end of the step: onnxruntime 1.32's ReshapeFusion once moved every dW to
    the end and doubled the step's memory (mbv2 top-5 b32: 366 vs 175 MiB)."""
    _, results, _ = suite
    names = [str(n) for n in results[runtime][_id("order", name, method)]["order"]]
    parts = [n.split("/") for n in names]
    blocks = list(dict.fromkeys(_block(p[1]) for p in parts if p[0] == "fwd" and len(p) > 2))
    rank = {b: i for i, b in enumerate(blocks)}
    assert len(blocks) >= 7, blocks  # 5 IRBs, tail, head
    lowest, late = None, []
    for n, p in zip(names, parts):
        if p[0] != "bwd" or len(p) < 3 or _block(p[1]) not in rank:
            continue
        r = rank[_block(p[1])]
        if lowest is not None and r > lowest + 1:
            late.append(n)
        if p[2].split("~")[0] in FLOW_OPS:
            lowest = r if lowest is None else min(lowest, r)
    assert not late, f"{len(late)} backward nodes run late, e.g. {late[:3]}"
    if method == "mobiletl":  # the 1-bit masks are packed in the forward, unpacked in the backward
        first_bwd = next(i for i, p in enumerate(parts) if p[0] == "bwd")
        packs = [i for i, n in enumerate(names) if "Mask_" in n and "QLinearMatMul" in n]
        unpacks = [i for i, n in enumerate(names) if "MaskGrad" in n and "Gather" in n]
        assert packs and unpacks and max(packs) < first_bwd < min(unpacks)


def test_report_worst_errors(suite):
    """Prints the largest errors seen above (run with -s); always passes after them."""
    print("\nlargest portable-step errors:", {k: f"{v:.2e}" for k, v in worst.items()})


# ---- graph contract ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return {(name, method): build(name, method, 3, root, res=RES)[1] for name in MODELS
            for method in ("mobiletl", "vanilla", "bias-only", "last-layer")}


def _domains(model: onnx.ModelProto) -> set:
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return {n.domain for n in nodes}


@pytest.mark.parametrize("name", MODELS)
def test_portable_models_use_standard_ops_only(exports, name):
    for method in ("mobiletl", "vanilla", "bias-only", "last-layer"):
        result = exports[(name, method)]
        for key in ("train_step", "eval_step", "inference"):
            model = onnx.load(str(result.files[key]))
            assert _domains(model) <= {"", "mobiletl"}, (method, key, _domains(model))
            for f in model.functions:
                assert {n.domain for n in f.node} == {""}
            onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("name", MODELS)
def test_portable_step_stores_what_the_ort_training_graph_stores(exports, name):
    """MobileTL's memory profile holds in the portable step: same stored tensors, same bytes (packed masks)."""
    for method in ("mobiletl", "vanilla"):
        result = exports[(name, method)]
        a = measure_stored(onnx.load(str(result.files["training_model"])), batch=2)
        b = measure_stored(onnx.load(str(result.files["train_step"])), batch=2)
        assert sorted((t.name, t.dtype, t.shape) for t in a) == sorted((t.name, t.dtype, t.shape) for t in b)
        if method == "mobiletl":
            assert any(t.dtype == "uint8" for t in b), "packed 1-bit masks are stored"


def test_runner_encoder_reproduces_the_exporters_initializer_chunk(exports):
    """device_runner/inference.py (hand-written protobuf) == onnx's serializer, byte for byte."""
    from safetensors.numpy import load_file

    for result in exports.values():
        manifest = json.loads((result.out / "manifest.json").read_text())
        spec = manifest["portable"]
        tensors = load_file(str(result.files["parameters"]))
        data = result.files["inference"].read_bytes()
        chunk = initializer_chunk([(e["name"], tensors[e["name"]]) for e in spec["parameters"]])
        assert data[spec["inference"]["trainable_offset"]:] == chunk
        assert chunk == portable.append_initializers({e["name"]: tensors[e["name"]] for e in spec["parameters"]})
        model = onnx.load_from_string(data)
        names = {i.name for i in model.graph.initializer}
        assert {e["name"] for e in spec["parameters"]} <= names


def test_manifest_layout_is_contiguous_and_matches_parameters(exports):
    from safetensors.numpy import load_file

    for result in exports.values():
        manifest = json.loads((result.out / "manifest.json").read_text())
        spec = manifest["portable"]
        assert [e["name"] for e in spec["parameters"]] == manifest["trainable"]
        offset = 0
        tensors = load_file(str(result.files["parameters"]))
        for e in spec["parameters"]:
            assert e["offset"] == offset and e["size"] == int(np.prod(e["shape"]))
            assert list(tensors[e["name"]].shape) == e["shape"]
            offset += e["size"]
        assert offset == spec["parameter_count"] == manifest["trainable_parameter_count"]


def test_nchwc_probe_bytes_are_the_model_onnx_builds():
    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC, channels_last=0)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(NCHWC, 1)],
                              ir_version=9)
    assert model.SerializeToString() == NCHWC_PROBE


def test_ort_format_artifacts_train_like_the_onnx_ones(tmp_path):
    """--ort-format: training/eval/optimizer models as .ort load in ORT's training API and take the same step."""
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    net, result = build("mbv3-small", "mobiletl", 2, tmp_path, res=RES)
    ort_dir = tmp_path / "ort-format"
    from mobiletl_export.export import ExportConfig, export

    export(ExportConfig(model="mbv3-small", top_k=2, resolution=RES, out=str(ort_dir), ort_format=True),
           model=net.model)
    manifest = json.loads((ort_dir / "manifest.json").read_text())
    for role in ("training_model", "eval_model", "optimizer_model"):
        assert manifest["files"][f"{role}_ort"] in manifest["sha256"]
    _, labels, features = clean_batch(net, RES, BATCH, CLASSES)
    losses, params = [], []
    for suffix in (".onnx", ".ort"):
        state = CheckpointState.load_checkpoint(str(ort_dir / "checkpoint"))
        module = Module(str(ort_dir / f"training_model{suffix}"), state, str(ort_dir / f"eval_model{suffix}"))
        optimizer = Optimizer(str(ort_dir / f"optimizer_model{suffix}"), module)
        module.train()
        step_losses = []
        for _ in range(2):
            module.lazy_reset_grad()
            step_losses.append(float(module(features.numpy(), labels.numpy())[0]))
            optimizer.step()
        losses.append(step_losses)
        params.append(np.array(state.parameters[net.plan.trainable[0]].data))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    np.testing.assert_allclose(params[0], params[1], rtol=1e-5, atol=1e-6)
