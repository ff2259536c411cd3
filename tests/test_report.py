"""Memory / FLOPs analysis of the emitted graphs, cross-checked by hand; the memory-budget choice of k."""

import json
import math

import pytest
from conftest import ALL_MODELS

from mobiletl_export.analyze.report import analyze_folder
from mobiletl_export.cli import main, report_main
from mobiletl_export.export import ExportConfig, export
from mobiletl_export.plan import METHODS


def folder(tmp_path, model, method, k, res=224, hardswish_backward=None):
    out = tmp_path / f"{model}-{method}-{k}-{res}-{hardswish_backward}"
    if not out.exists():
        export(ExportConfig(model=model, top_k=k, method=method, resolution=res, weights="random", out=str(out),
                            hardswish_backward=hardswish_backward))
    return out


@pytest.mark.parametrize("batch", [1, 8])
def test_one_irb_stored_bytes_by_hand(tmp_path, batch):
    """mbv2 features.16 (160 -> 960 -> 160, 7 x 7 at 224 px, residual) under mobiletl stores: its input (expand
    conv's dW), the depthwise conv's input, the project conv's input, the project BN's input (gamma trains),
    and two masks of one bit per expanded element."""
    r = analyze_folder(folder(tmp_path, "mbv2", "mobiletl", 5), batch)
    block = next(b for b in r.blocks if b["name"] == "features.16")
    f32 = 4
    x = batch * 160 * 7 * 7 * f32
    expanded = batch * 960 * 7 * 7 * f32
    mask = math.ceil(batch * 960 * 7 * 7 / 8)
    assert block["stored_bytes"] == x + expanded + expanded + x + 2 * mask
    # vanilla adds the BN inputs (conv outputs) and the activation inputs of both internal stages
    v = next(b for b in analyze_folder(folder(tmp_path, "mbv2", "vanilla", 5), batch).blocks
             if b["name"] == "features.16")
    assert v["stored_bytes"] == x + 3 * expanded + 3 * expanded + x


def test_flops_of_the_tail_conv_by_hand(tmp_path):
    r = analyze_folder(folder(tmp_path, "mbv2", "mobiletl", 0), 8)
    tail = next(b for b in r.blocks if b["name"] == "tail")
    fwd = 2 * 8 * 1280 * 7 * 7 * 320  # 1x1 conv 320 -> 1280 at 7 x 7
    assert tail["fwd_flops"] == fwd
    assert tail["bwd_flops"] == fwd  # dW only: the features input needs no gradient


@pytest.mark.parametrize("model", ALL_MODELS)
def test_report_on_every_method(model, tmp_path):
    reports = {m: analyze_folder(folder(tmp_path, model, m, 3, res=64), 4) for m in METHODS}
    for r in reports.values():
        assert r.stored_bytes == sum(b["stored_bytes"] for b in r.blocks)
        assert r.peak_live_bytes >= r.stored_bytes  # everything stored is alive when the backward starts
        assert r.training_bytes == r.param_bytes + r.grad_bytes + r.optimizer_bytes + r.peak_live_bytes
        assert r.optimizer_bytes == 2 * r.grad_bytes  # AdamW: two moments
    assert reports["mobiletl"].stored_bytes < reports["vanilla"].stored_bytes
    assert reports["mobiletl"].fwd_flops == reports["vanilla"].fwd_flops
    last = reports["last-layer"]
    assert last.bwd_flops == 2 * 4 * last.blocks[-1]["trainable_params"] - 2 * 4 * 10  # dW of the classifier
    assert reports["mobiletl"].trainable_params < reports["vanilla"].trainable_params


@pytest.mark.parametrize("model", ALL_MODELS)
def test_exact_hardswish_stores_the_float_inputs_of_hardswish_only(model, tmp_path):
    """--hardswish-backward exact keeps mobiletl's masks for ReLU/ReLU6/Hard-Sigmoid and stores each Hard-Swish's
    float32 input: between mobiletl and vanilla where the region has Hard-Swish (MobileNetV3), mobiletl's
    bytes exactly where it has none (MobileNetV2, EfficientNet-Lite0)."""
    sign, exact, vanilla = (analyze_folder(folder(tmp_path, model, m, 3, res=64, hardswish_backward=h), 4)
                            for m, h in (("mobiletl", None), ("mobiletl", "exact"), ("vanilla", None)))
    assert (sign.hardswish_backward, exact.hardswish_backward, vanilla.hardswish_backward) == ("sign", "exact", "exact")
    assert exact.trainable_params == sign.trainable_params
    if model.startswith("mbv3"):
        assert sign.stored_bytes < exact.stored_bytes < vanilla.stored_bytes
        assert sign.portable_stored_bytes < exact.portable_stored_bytes < vanilla.portable_stored_bytes
    else:
        assert exact.stored_bytes == sign.stored_bytes < vanilla.stored_bytes
    manifest = json.loads((folder(tmp_path, model, "mobiletl", 3, 64, "exact") / "manifest.json").read_text())
    assert manifest["hardswish_backward"] == "exact"
    assert manifest["masked_activations"] == ["hardsigmoid", "relu", "relu6"]


def test_report_commands(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["--model", "mbv3-small", "--top-k", "2", "--resolution", "64", "--out", str(out), "--report"]) == 0
    assert "training memory" in capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert report_main([str(out), "--batch", "8"]) == 0
    assert json.loads((out / "report.json").read_text())["stored_bytes"] == saved["stored_bytes"]
    png = tmp_path / "c.png"
    assert report_main(["--compare", "--model", "mbv3-small", "--top-k", "2", "--resolution", "64",
                        "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert all(f"| {m} |" in text for m in METHODS)
    assert "| mobiletl (exact Hard-Swish backward) |" in text  # MobileNetV3: the sign approximation's price
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report_main([str(tmp_path / "nope")]) == 2


def test_memory_budget_picks_the_largest_k_that_fits(tmp_path, capsys):
    needs = [analyze_folder(folder(tmp_path, "mbv3-small", "mobiletl", k, res=64), 8).training_bytes
             for k in range(12)]
    assert needs == sorted(needs)
    budget = (needs[6] + needs[7]) // 2  # between k=6 and k=7
    out = tmp_path / "b"
    code = main(["--model", "mbv3-small", "--memory-budget", f"{budget}B", "--resolution", "64", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "chose top-k 6" in stdout
    assert json.loads((out / "manifest.json").read_text())["top_k"] == 6
    code = main(["--model", "mbv3-small", "--memory-budget", "1KB", "--resolution", "64",
                 "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "too small" in err and not (tmp_path / "c").exists()
    assert main(["--model", "mbv3-small", "--memory-budget", "lots", "--out", str(tmp_path / "d")]) == 2
    assert main(["--model", "mbv3-small", "--out", str(tmp_path / "d")]) == 2  # neither k nor budget
