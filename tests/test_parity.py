"""Parity: the exported ORT training equals the PyTorch reference of the same method.

Same weights, same batch, dropout 0. Tolerances from the compiler issue: loss rtol 1e-4; gradients rtol 1e-3,
atol 1e-5; parameters after 5 optimizer steps atol 1e-4; eval and inference logits match.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from ort_harness import EXACT_HS, OrtTraining, build, clean_batch

from device_runner.ort import NCHWC, nchwc_block_size

from mobiletl_export.reference import ReferenceTrainer

MODELS = ["mbv2", "mbv3-large", "mbv3-small", "efficientnet-lite0"]
CASES = [(m, method, k) for m in MODELS for method in ("mobiletl", "vanilla") for k in (1, 3, 5)]
CASES += [("mbv3-small", "mobiletl", 11), ("mbv3-small", "vanilla", 11)]  # every IRB of one model
CASES += [(m, method, 3) for m in MODELS for method in ("bias-only", "last-layer")]  # the baselines
CASES += [(m, EXACT_HS, 3) for m in ("mbv3-large", "mbv3-small")]  # mobiletl, exact Hard-Swish backward
CASES = [(*case, "generic") for case in CASES]
RES, BATCH, CLASSES = 64, 4, 10
worst = {"loss": 0.0, "grad": 0.0, "param": 0.0, "logits": 0.0}


def _record(key, value):
    worst[key] = max(worst[key], float(value))


def assert_grads_close(got: dict, want: dict):
    assert set(got) == set(want)
    for k, w in want.items():
        w = w.detach().numpy() if isinstance(w, torch.Tensor) else w
        np.testing.assert_allclose(got[k], w, rtol=1e-3, atol=1e-5, err_msg=k)
        _record("grad", np.abs(got[k] - w).max())


def run_steps(name, method, k, tmp_path, optimizer, lr, res=48, batch=2, target="generic"):
    """Smaller batches here: the batch must stay clear of kinks along all six forward passes."""
    net, result = build(name, method, k, tmp_path, res=res, optimizer=optimizer, target=target)
    images, labels, features = clean_batch(net, res, batch, CLASSES, steps=5, optimizer=optimizer, lr=lr)
    ort_run = OrtTraining(result.out)
    trainer = ReferenceTrainer(net, optimizer=optimizer, lr=lr)
    _, first = trainer.gradients(features, labels)
    for _ in range(5):
        ort_run.step(features.numpy(), labels.numpy(), lr)
        trainer.step(features, labels)
    for key, p in trainer.params.items():
        got, want = ort_run.parameter(key), p.detach().numpy()
        # Adam's first step is lr * g / (|g| + eps): where |g| is down at eps (1e-8), float32 noise decides
        # its sign, so those elements may differ by up to the steps' total length, 5 * lr, and no more.
        noisy = np.abs(first[key].numpy()) < 1e-6 if optimizer == "adamw" else np.zeros(got.shape, bool)
        np.testing.assert_allclose(got[~noisy], want[~noisy], rtol=0, atol=1e-4, err_msg=key)
        assert np.all(np.abs(got[noisy] - want[noisy]) <= 2 * 5 * lr + 1e-6), key
        _record("param", np.abs(got[~noisy] - want[~noisy]).max(initial=0.0))


def _nchwc_nodes(result) -> int:
    import onnx

    return sum(n.domain == NCHWC for n in onnx.load(result.files["training_model"]).graph.node)


@pytest.mark.parametrize("name, method, k, target", CASES + [(m, "mobiletl", 5, "host") for m in MODELS]
                         + [("mbv2", "vanilla", 5, "host"), ("mbv3-small", "mobiletl", 11, "host")])
def test_gradients_and_logits_match_reference(name, method, k, target, tmp_path):
    """target "host": depthwise convs on ORT's x86 NCHWc kernels (emit/nchwc.py)."""
    if target == "host" and not nchwc_block_size():
        pytest.skip("this ONNX Runtime has no NCHWc kernels (not x86)")
    net, result = build(name, method, k, tmp_path, res=RES, target=target)
    if target == "host":
        assert _nchwc_nodes(result) > 0
    else:
        assert _nchwc_nodes(result) == 0
    images, labels, features = clean_batch(net, RES, BATCH, CLASSES)
    ort_run = OrtTraining(result.out)
    loss, logits, grads = ort_run.gradients(features.numpy(), labels.numpy(), net.plan.trainable)
    ref_loss, ref_grads = ReferenceTrainer(net).gradients(features, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    _record("loss", abs(loss - ref_loss) / abs(ref_loss))
    assert_grads_close(grads, ref_grads)
    with torch.no_grad():
        ref_logits = net.top(features).numpy()
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ort_run.eval_logits(features.numpy(), labels.numpy()), ref_logits, rtol=1e-4,
                               atol=1e-4)
    if net.plan.hardswish_backward == "exact":  # exact backward: also against plain autograd of the nn.Module
        # itself (for mobiletl with --hardswish-backward exact, every mask left is the exact derivative, so only
        # the trainable set differs from autograd's, and requires_grad follows the plan)
        model = net.model
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        params = dict(model.named_parameters())
        assert_grads_close(grads, {key: params[key].grad for key in net.plan.trainable})


@pytest.mark.parametrize("name, method, k", [("mbv2", "mobiletl", 3), ("mbv3-large", "mobiletl", 3),
                                             ("mbv3-small", "vanilla", 5), ("efficientnet-lite0", "mobiletl", 3),
                                             ("mbv3-large", EXACT_HS, 3)])
@pytest.mark.parametrize("optimizer, lr", [("adamw", 1e-3), ("sgd", 1e-3)])
def test_parameters_after_five_steps_match(name, method, k, optimizer, lr, tmp_path):
    run_steps(name, method, k, tmp_path, optimizer, lr)


@pytest.mark.skipif(not nchwc_block_size(), reason="this ONNX Runtime has no NCHWc kernels (not x86)")
@pytest.mark.parametrize("name, optimizer, k", [("mbv2", "sgd", 5), ("mbv2", "adamw", 3),
                                                ("efficientnet-lite0", "sgd", 3), ("efficientnet-lite0", "adamw", 3)])
def test_parameters_after_five_steps_match_on_nchwc_kernels(name, optimizer, k, tmp_path):
    """AdamW at k = 3 like the generic test: at k = 5 both targets see gradients that shrink towards zero over
    the five steps, where Adam's normalisation turns float noise into 2e-4 parameter differences. (Lite0 at
    k = 5 finds no batch clear of activation kinks for six passes at 48 px.)"""
    run_steps(name, "mobiletl", k, tmp_path, optimizer, 1e-3, target="host")


@pytest.mark.parametrize("name, method, k", [("mbv2", "mobiletl", 5), ("mbv3-large", "mobiletl", 5),
                                             ("efficientnet-lite0", "vanilla", 3), ("mbv3-small", "mobiletl", 11)])
def test_backbone_plus_exported_top_equals_pytorch_model(name, method, k, tmp_path):
    """backbone.onnx -> Module.export_model_for_inferencing(...) reproduces the nn.Module's logits."""
    net, result = build(name, method, k, tmp_path, res=RES)
    images, _, _ = clean_batch(net, RES, BATCH, CLASSES)
    top_path = str(result.out / "top_inference.onnx")
    OrtTraining(result.out).module.export_model_for_inferencing(top_path, ["logits"])
    features = ort.InferenceSession(str(result.files["backbone"])).run(None, {"image": images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(features, net.backbone(images).numpy(), rtol=1e-4, atol=1e-4)
        expected = net.model(images).numpy()
    logits = ort.InferenceSession(top_path).run(["logits"], {"features": features})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    _record("logits", np.abs(logits - expected).max())


def test_report_worst_errors():
    """Prints the largest errors the parity tests above saw (run with -s); always passes after them."""
    print("\nlargest parity errors:", {k: f"{v:.2e}" for k, v in worst.items()})
