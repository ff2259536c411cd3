"""The emitted training graph: what crosses from forward to backward, the ORT contract, the mask functions."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ALL_MODELS

from mobiletl_export.analyze.memory import stored_tensor_names
from mobiletl_export.emit.functions import mobiletl_functions
from mobiletl_export.export import ExportConfig, export
from mobiletl_export.reference import pack_bits

ACTIVATION_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid", "ReLUMask", "ReLU6Mask", "HardSwishMask",
                  "HardSigmoidMask"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    cache = {}

    def get(name, method, k=5):
        if (name, method, k) not in cache:
            cfg = ExportConfig(model=name, top_k=k, method=method, resolution=64, weights="random",
                               out=str(root / f"{name}-{method}-{k}"))
            cache[(name, method, k)] = export(cfg)
        return cache[(name, method, k)]

    return get


def crossing(result):
    """Every forward tensor a backward node reads, with the forward nodes that read it and its producer."""
    model = onnx.load(result.files["training_model"])
    names = set(stored_tensor_names(model))
    producers = {o: n for n in model.graph.node for o in n.output}
    fwd_readers = {}
    for n in model.graph.node:
        if n.name.startswith("fwd/"):
            for i in n.input:
                fwd_readers.setdefault(i, []).append(n)
    return model, names, producers, fwd_readers


def forbidden_under_mobiletl(model, trainable, fwd_readers):
    """Inputs of activations and of BatchNorms with a frozen gamma: MobileTL never stores them."""
    bad = set()
    for value, readers in fwd_readers.items():
        for n in readers:
            if n.op_type in ACTIVATION_OPS:
                bad.add(value)
            if n.op_type == "BatchNormalization" and n.input[1] not in trainable:
                bad.add(value)
    return bad


@pytest.mark.parametrize("name", ALL_MODELS)
def test_mobiletl_stores_no_float_activation_or_internal_bn_input(name, exports):
    result = exports(name, "mobiletl")
    trainable = set(result.manifest["trainable"])
    model, stored, producers, fwd_readers = crossing(result)
    bad = forbidden_under_mobiletl(model, trainable, fwd_readers)
    assert not stored & bad, sorted(stored & bad)
    masks = [v for v in stored if v in producers and producers[v].domain == "mobiletl" and producers[v].output[1] == v]
    n_masked = sum(1 for n in model.graph.node if n.domain == "mobiletl" and n.op_type.endswith("Mask"))
    assert len(masks) == n_masked > 0  # every masked activation stores its bits, and only bits
    # the same detector finds what vanilla stores
    v_result = exports(name, "vanilla")
    v_model, v_stored, _, v_readers = crossing(v_result)
    assert v_stored & forbidden_under_mobiletl(v_model, set(v_result.manifest["trainable"]), v_readers)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_stored_tensors_are_inputs_of_weighted_ops_masks_or_loss(name, exports):
    """Under mobiletl every stored float tensor is read by the forward of a trained conv / linear / SE scale
    / gamma-training BN (what their weight gradients need), or is the loss's log-probabilities."""
    result = exports(name, "mobiletl")
    trainable = set(result.manifest["trainable"])
    model, stored, producers, fwd_readers = crossing(result)
    for value in stored:
        if value in producers and producers[value].domain == "mobiletl" and producers[value].output[1] == value:
            continue  # a packed mask
        if value in ("labels",) or value.endswith("/log_prob"):
            continue
        needs = [n for n in fwd_readers.get(value, [])
                 if (n.op_type in ("Conv", "Gemm") and n.input[1] in trainable)
                 or (n.op_type == "BatchNormalization" and n.input[1] in trainable)
                 or n.op_type == "Mul" and "scale" in n.name]
        assert needs, f"{value} is stored but no trained op needs it"


def test_training_graph_follows_ort_contract(exports):
    result = exports("mbv3-small", "mobiletl", 3)
    model = onnx.load(result.files["training_model"])
    onnx.checker.check_model(model)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    trainable = result.manifest["trainable"]
    assert inputs[:2] == ["features", "labels"] and inputs[-1] == "lazy_reset_grad"
    assert outputs[:2] == ["loss", "logits"]
    for key in trainable:
        assert f"{key}_grad.accumulation.buffer" in inputs and f"{key}_grad.accumulation.out" in outputs
    assert set(result.manifest["frozen"]) <= set(inputs)
    user = [n for n in inputs + outputs if n.endswith("_grad") and n != "lazy_reset_grad"]
    assert not user, "ORT treats names ending in _grad as gradients"
    assert {f.name for f in model.functions} >= {"ReLUMask", "HardSwishMask", "HardSigmoidMask", "MaskGrad"}


def test_manifest_describes_the_folder(exports):
    import hashlib

    result = exports("mbv2", "mobiletl", 5)
    m = json.loads((result.out / "manifest.json").read_text())
    assert m["trained_blocks"] == [f"features.{i}" for i in range(13, 18)]
    for name, digest in m["sha256"].items():
        assert hashlib.sha256((result.out / name).read_bytes()).hexdigest() == digest
    assert m["inputs"]["training"]["features"] == ["N", 96, 4, 4]
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert "features.13.conv.0.1.weight" in m["frozen"] and "features.13.conv.0.1.bias" in m["trainable"]
    assert "features.13.conv.0.1.running_var" in m["frozen"]


@pytest.mark.parametrize("kind, fn", [("relu", "ReLUMask"), ("relu6", "ReLU6Mask"), ("hardswish", "HardSwishMask"),
                                      ("hardsigmoid", "HardSigmoidMask")])
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 8, 4, 4), (1,), (13,), (4, 6)])
def test_mask_functions_pack_like_the_reference(kind, fn, shape):
    from onnx import TensorProto, helper

    from mobiletl_export.models import functional as exact
    from mobiletl_export.reference.functions import mask_and_value

    node = helper.make_node(fn, ["x"], ["y", "mask"], domain="mobiletl")
    if int(np.prod(shape)) % 8 == 0:
        grad = helper.make_node("MaskGrad", ["dy", "mask", "shape"], ["dx"], domain="mobiletl")
    else:
        grad = helper.make_node("MaskGradPadded", ["dy", "mask"], ["dx"], domain="mobiletl")
    shape_const = helper.make_node("Constant", [], ["shape"], value=helper.make_tensor(
        "shape", TensorProto.INT64, [len(shape)], list(shape)))
    graph = helper.make_graph([node, shape_const, grad], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                                  helper.make_tensor_value_info("dy", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("y", TensorProto.FLOAT), ("mask", TensorProto.UINT8), ("dx", TensorProto.FLOAT))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mobiletl", 1)],
                              functions=mobiletl_functions(), ir_version=9)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    x.flat[0] = 0.0 if kind != "hardsigmoid" else 3.0  # a boundary value
    dy = rng.standard_normal(shape).astype(np.float32)
    y, mask, dx = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "dy": dy})
    np.testing.assert_allclose(y, exact.activation(kind, torch.from_numpy(x)).numpy(), atol=1e-6)
    _, ref_mask, _ = mask_and_value(kind, torch.from_numpy(x))
    np.testing.assert_array_equal(mask, pack_bits(ref_mask).numpy())
    np.testing.assert_array_equal(mask, np.packbits(ref_mask.numpy().ravel(), bitorder="little"))
    np.testing.assert_array_equal(dx, dy * ref_mask.numpy())


def ort_execution_order(folder, features, labels) -> list[str]:
    """Node names in the order ORT's training session ran them (from its profiler), for one train step."""
    import glob

    from device_runner.ort import C, session_options

    options = session_options(1, training=True)
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "order")
    device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
    state = C.load_checkpoint(str(folder / "checkpoint"))
    module = C.Module(str(folder / "training_model.onnx"), state, str(folder / "eval_model.onnx"), device, options)
    module.lazy_reset_grad()
    module.train_step([features, labels], C.OrtValueVector())
    del module  # writes the profile
    # Module's training and eval sessions each write a profile, named by the second they started: one file when
    # both start within a second, two on a slow machine. The training step's run is the one with nodes.
    runs = []
    for path in glob.glob(str(folder / "order*.json")):
        events = json.loads(open(path).read())
        runs.append([e["name"][: -len("_kernel_time")] for e in events
                     if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")])
    (order,) = [names for names in runs if names]
    return order


@pytest.mark.parametrize("name", ["mbv2", "mbv3-small"])
def test_ort_packs_every_mask_in_the_forward_pass(name, exports):
    """The memory saving only exists if ORT packs each mask before the backward starts: ORT inlines the mask
    functions and, left free, scheduled the packing just before the backward read it, keeping x alive."""
    result = exports(name, "mobiletl", 3)
    shape = result.manifest["inputs"]["training"]["features"][1:]
    features = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    order = ort_execution_order(result.out, features,
                                np.array([1, 2], dtype=np.int64))
    loss = order.index("fwd/loss/SoftmaxCrossEntropyLoss")
    packing = [i for i, n in enumerate(order) if n.startswith("_inlfunc_") and "Mask_" in n and "MaskGrad" not in n]
    unpacking = [i for i, n in enumerate(order) if n.startswith("_inlfunc_MaskGrad")]
    assert packing and unpacking
    assert max(packing) < loss, f"packing after the loss: {order[max(packing)]}"
    assert loss < min(unpacking), f"unpacking before the loss: {order[min(unpacking)]}"
