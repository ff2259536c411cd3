"""PyTorch MobileTL reference: exactness where the method is exact, its formulas where it approximates,
and what it saves for the backward pass (measured with saved_tensors_hooks)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_MODELS, randomize
from torch.autograd.graph import saved_tensors_hooks

from mobiletl_export.models import create_model
from mobiletl_export.models import functional as exact
from mobiletl_export.plan import METHODS, make_plan
from mobiletl_export.reference import (FrozenScaleBatchNorm, ReferenceNet, ReferenceTrainer, masked_activation,
                                       pack_bits, unpack_bits)
from mobiletl_export.reference.executor import _irb


def make_net(name, method, k, classes=10, res=64, batch=4, seed=0):
    model = randomize(create_model(name, num_classes=classes, dropout=0.0, seed=seed), seed)
    net = ReferenceNet(model, make_plan(model, method, k))
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, res, res, generator=g)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return net, images, labels


def with_boundaries(x):
    """Random values plus the points where the masks switch."""
    edges = torch.tensor([-3.0, 0.0, 3.0, 6.0, -0.0, 1e-7, -1e-7, 5.9999995])
    return torch.cat([x.flatten(), edges])


@pytest.mark.parametrize("size", [1, 7, 8, 9, 64, 1001])
def test_pack_bits_is_numpy_little_endian_packbits(size, rng):
    mask = torch.rand(size, generator=rng) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.numpy(), bitorder="little"))
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


@pytest.mark.parametrize("kind", ["relu", "relu6", "hardsigmoid"])
def test_exact_masked_activations_equal_autograd(kind, rng):
    x = with_boundaries(torch.randn(4000, generator=rng) * 5)
    dy = torch.randn(x.shape, generator=rng)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = masked_activation(kind, a), exact.activation(kind, b)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_hardswish_approximation_is_the_papers_formula(rng):
    x = with_boundaries(torch.randn(4000, generator=rng) * 5).requires_grad_()
    dy = torch.randn(x.shape, generator=rng)
    y = masked_activation("hardswish", x)
    y.backward(dy)
    torch.testing.assert_close(y, F.hardswish(x.detach()), rtol=0, atol=1e-6)
    expected = torch.where(x.detach() >= 0, dy, torch.zeros_like(dy))  # dX = dY * 1{x >= 0}
    assert torch.equal(x.grad, expected)
    exact_grad = torch.autograd.grad(F.hardswish(x), x, dy)[0]
    assert not torch.allclose(x.grad, exact_grad), "the approximation differs from the exact derivative"


def test_shift_only_batchnorm_gradients(rng):
    c = 6
    x = torch.randn(3, c, 5, 5, generator=rng, requires_grad=True)
    gamma = torch.rand(c, generator=rng) + 0.5
    beta = torch.randn(c, generator=rng, requires_grad=True)
    mean, var = torch.randn(c, generator=rng), torch.rand(c, generator=rng) + 0.5
    y = FrozenScaleBatchNorm.apply(x, gamma, beta, mean, var, 1e-3)
    torch.testing.assert_close(y, F.batch_norm(x.detach(), mean, var, gamma, beta.detach(), False, 0.0, 1e-3))
    dy = torch.randn(y.shape, generator=rng)
    y.backward(dy)
    torch.testing.assert_close(beta.grad, dy.sum((0, 2, 3)))
    torch.testing.assert_close(x.grad, dy * (gamma / torch.sqrt(var + 1e-3)).view(1, c, 1, 1))
    assert gamma.grad is None


@pytest.mark.parametrize("name", ALL_MODELS)
def test_vanilla_equals_plain_autograd(name):
    """ReferenceNet under vanilla == the model's own nn.Module forward differentiated by autograd."""
    net, images, labels = make_net(name, "vanilla", 3)
    trainer = ReferenceTrainer(net)
    loss, grads = trainer.gradients(net.backbone(images), labels)
    model = net.model
    model.zero_grad(set_to_none=True)
    plain = F.cross_entropy(model(images), labels)
    plain.backward()
    assert loss == pytest.approx(plain.item(), rel=1e-6)
    params = dict(model.named_parameters())
    assert set(grads) == {k for k, p in params.items() if p.grad is not None}
    for k, g in grads.items():
        torch.testing.assert_close(g, params[k].grad, rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_reference_forward_equals_model_forward(name, method):
    net, images, _ = make_net(name, method, 2)
    with torch.no_grad():
        torch.testing.assert_close(net(images), net.model(images), rtol=1e-5, atol=1e-5)


def test_mobiletl_on_relu6_model_only_changes_nothing_but_saved_state():
    """MobileNetV2 has no Hard-Swish, so mobiletl's gradients equal vanilla's restricted to its parameters."""
    net_m, images, labels = make_net("mbv2", "mobiletl", 3)
    net_v, _, _ = make_net("mbv2", "vanilla", 3)
    _, gm = ReferenceTrainer(net_m).gradients(net_m.backbone(images), labels)
    _, gv = ReferenceTrainer(net_v).gradients(net_v.backbone(images), labels)
    assert set(gm) < set(gv)
    for k in gm:  # the frozen-scale BN rounds differently from F.batch_norm: float32 noise only
        torch.testing.assert_close(gm[k], gv[k], rtol=1e-4, atol=1e-5, msg=k)


def test_plan_trainable_sets():
    model = create_model("mbv3-large")
    top = model.structure().blocks[-1]  # features.15: expand, depthwise, SE, project
    p = {m: set(make_plan(model, m, 1).trainable) for m in METHODS}
    internal = [top.expand.bn_name, top.depthwise.bn_name]
    for bn in internal:
        assert f"{bn}.bias" in p["mobiletl"] and f"{bn}.weight" not in p["mobiletl"]
        assert f"{bn}.weight" in p["vanilla"]
    assert {"features.15.block.3.1.weight", "features.16.1.weight", "classifier.0.weight"} <= p["mobiletl"]
    assert p["mobiletl"] | {f"{bn}.weight" for bn in internal} == p["vanilla"]
    assert p["last-layer"] == {"classifier.3.weight", "classifier.3.bias"}
    # TinyTL's FT-Bias: every bias parameter of the region (BN betas, SE and head linears) + the final linear
    region_biases = {k for k, _ in model.named_parameters()
                     if k.endswith(".bias") and k.startswith(("features.15.", "features.16.", "classifier."))}
    assert "classifier.0.bias" in region_biases and "features.15.block.2.fc1.bias" in region_biases
    assert p["bias-only"] == region_biases | {"classifier.3.weight"}
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        make_plan(model, "lora", 1)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_trainer_reduces_loss(optimizer):
    net, images, labels = make_net("mbv3-small", "mobiletl", 2, batch=8)
    trainer = ReferenceTrainer(net, optimizer=optimizer, lr=1e-3 if optimizer == "adamw" else 0.01)
    features = net.backbone(images)
    losses = [trainer.step(features, labels) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


# ---- what an IRB saves for the backward pass -------------------------------------------------------------------

def saved_by_block(name, index, method, res=112, batch=2):
    """Run one IRB under `method`; return (saved non-parameter tensors, intermediates of an exact pass)."""
    net, images, _ = make_net(name, method, len(create_model(name).structure().blocks), res=res, batch=batch)
    block = net.plan.structure.blocks[index]
    with torch.no_grad():
        x = net.backbone(images)
        for b in net.plan.structure.blocks[:index]:
            x = _irb(b, x, masked=frozenset())
    x.requires_grad_(False)
    owned = {t.data_ptr() for t in list(net.model.parameters()) + list(net.model.buffers())}
    saved = {}

    def pack(t):
        if t.data_ptr() not in owned:
            saved[(t.data_ptr(), tuple(t.shape), t.dtype)] = t
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        _irb(block, x, net.plan.masked_activations)
    # the tensors a full-precision backward of the activations and internal BNs would need
    forbidden = []
    with torch.no_grad():
        y = x
        for cb in [c for c in (block.expand, block.depthwise) if c is not None]:
            conv_out = exact.conv2d(y, cb.conv, cb.conv.weight, None)
            bn_out = F.batch_norm(conv_out, cb.bn.running_mean, cb.bn.running_var, cb.bn.weight, cb.bn.bias,
                                  False, 0.0, cb.bn.eps)
            forbidden += [conv_out, bn_out]  # internal BN input, activation input
            y = exact.activation(cb.act, bn_out)
    return list(saved.values()), forbidden


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("name, index", [("mbv2", 16), ("mbv2", 1), ("mbv3-large", 13), ("mbv3-large", 8),
                                         ("mbv3-small", 10), ("efficientnet-lite0", 14)])
def test_mobiletl_block_saves_no_float_activation_or_internal_bn(name, index):
    saved_m, forbidden = saved_by_block(name, index, "mobiletl")
    saved_v, _ = saved_by_block(name, index, "vanilla")

    def hits(saved):
        return [f for f in forbidden if any(s.dtype == f.dtype and s.shape == f.shape and torch.allclose(s, f, rtol=1e-5, atol=1e-6)
                                            for s in saved)]

    assert hits(saved_v), "the detector must see vanilla saving activation / BN inputs"
    assert not hits(saved_m)
    masks = [t for t in saved_m if not t.is_floating_point()]
    assert masks and all(t.dtype == torch.uint8 for t in masks)  # packed bits, not bool


# Thresholds from the foundation issue: >= 40 % fewer saved bytes per IRB (MobileNetV3 blocks >= 50 %).
@pytest.mark.parametrize("name, index, min_saving", [
    ("mbv2", 16, 0.40), ("mbv2", 13, 0.40), ("mbv2", 1, 0.40), ("efficientnet-lite0", 14, 0.40),
    ("mbv3-large", 13, 0.50), ("mbv3-large", 7, 0.50), ("mbv3-small", 10, 0.50),
])
def test_mobiletl_saves_fewer_bytes_than_vanilla(name, index, min_saving):
    mobiletl = nbytes(saved_by_block(name, index, "mobiletl")[0])
    vanilla = nbytes(saved_by_block(name, index, "vanilla")[0])
    print(f"{name} block {index}: mobiletl {mobiletl} B, vanilla {vanilla} B, saving {1 - mobiletl / vanilla:.1%}")
    assert mobiletl <= (1 - min_saving) * vanilla
