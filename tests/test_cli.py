"""The `mobiletl-export` command: outputs, bad input (one line, exit 2, nothing half-written), coverage of
every model x method x k."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mobiletl_export.cli import main
from mobiletl_export.export import ExportConfig, export
from mobiletl_export.models import create_model
from mobiletl_export.plan import METHODS

N_BLOCKS = {"mbv2": 17, "mbv3-large": 15, "mbv3-small": 11, "efficientnet-lite0": 16}


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_folder_and_summary(tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, err = run_cli(["--model", "mbv3-small", "--top-k", "2", "--resolution", "64", "--out", str(out)],
                                capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["backbone.onnx", "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint",
         "train_step.onnx", "eval_step.onnx", "inference.onnx", "parameters.safetensors", "manifest.json"])
    assert "trainable parameters:" in stdout and "KiB per sample" in stdout
    assert "seeded random init" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_classes"] == 10 and manifest["method"] == "mobiletl"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_default_weights_are_imagenet_for_efficientnet_lite0(tmp_path, capsys):
    code, stdout, _ = run_cli(["--model", "efficientnet-lite0", "--top-k", "1", "--resolution", "64",
                               "--out", str(tmp_path / "e")], capsys)
    assert code == 0 and "ImageNet weights" in stdout


def test_python_dash_m_works(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mobiletl_export", "--model", "mbv2", "--top-k", "1",
                           "--resolution", "32", "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "manifest.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50", "--top-k", "1"], "invalid choice: 'resnet50'"),
    (["--model", "mbv2", "--top-k", "1", "--method", "lora"], "invalid choice: 'lora'"),
    (["--model", "mbv2", "--top-k", "18"], "top-k must be an integer in [0, 17]"),
    (["--model", "mbv2", "--top-k", "-1"], "top-k must be an integer in [0, 17]"),
    (["--model", "mbv2", "--top-k", "1", "--num-classes", "1"], "--num-classes must be an integer >= 2"),
    (["--model", "mbv2", "--top-k", "1", "--weights", "/nonexistent.pth"], "weights file not found"),
    (["--model", "mbv3-small", "--top-k", "1", "--hardswish-backward", "foo"], "unknown --hardswish-backward 'foo'"),
    (["--model", "mbv3-small", "--top-k", "1", "--method", "vanilla", "--hardswish-backward", "sign"],
     "--hardswish-backward sign applies to --method mobiletl only"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "x"
    with pytest.raises(SystemExit) if "invalid choice" in message else _no_raise() as exc:
        code = main(args + ["--out", str(out)])
    code = exc.value.code if exc is not None and hasattr(exc, "value") else code
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err
    if "invalid choice" not in message:
        assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


class _no_raise:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_weights_for_another_architecture(tmp_path, capsys):
    path = tmp_path / "v3.pth"
    torch.save(create_model("mbv3-small").state_dict(), path)
    code, _, err = run_cli(["--model", "mbv2", "--top-k", "1", "--weights", str(path), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and "another architecture" in err and "missing keys ('features.1.conv.0.0.weight'" in err
    assert "unexpected keys ('features.1.block.0.0.weight'" in err and len(err.strip().splitlines()) == 1
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_existing_folder_needs_force_and_is_kept_intact(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "precious.txt").read_text() == "keep me"
    code, _, err = run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--out", str(out), "--force"],
                           capsys)  # not an export folder: --force does not touch it either
    assert code == 2 and (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()  # an empty folder may be written into with --force
    assert run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--out", str(out), "--force"],
                   capsys)[0] == 0
    (out / "stale.txt").write_text("from an earlier export")
    code, _, _ = run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--out", str(out), "--force"],
                         capsys)  # an export folder is replaced whole
    assert code == 0 and not (out / "stale.txt").exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--out",
                            str(blocker / "o")], capsys)
    assert code == 2 and "cannot write" in err
    assert len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    import mobiletl_export.export as ex

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ex, "sha256_file", boom)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        export(ExportConfig(model="mbv2", top_k=1, resolution=32, out=str(out)))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", list(N_BLOCKS))
@pytest.mark.parametrize("method", METHODS)
def test_every_k_exports_and_trains_one_step(name, method, tmp_path):
    """All four methods and k from 0 to the number of IRBs: ORT loads the artifacts and takes a step."""
    from ort_harness import OrtTraining

    model = create_model(name, num_classes=3)
    rng = np.random.default_rng(0)
    for k in range(N_BLOCKS[name] + 1):
        result = export(ExportConfig(model=name, top_k=k, method=method, num_classes=3, resolution=32,
                                     out=str(tmp_path / str(k))), model=model)
        shape = [2] + result.manifest["inputs"]["training"]["features"][1:]
        ort_run = OrtTraining(result.out)
        loss = ort_run.step(rng.standard_normal(shape).astype(np.float32), np.array([0, 2]), 1e-3)
        assert np.isfinite(loss), (k, loss)
        del ort_run
        shutil.rmtree(result.out)  # 200+ exports: keep the disk footprint of the suite small


def test_export_for_another_machines_kernels(tmp_path, capsys):
    """--target x86-* for a block size this machine lacks: the export works, analysing it (which runs the
    graph) is refused with one line, and the manifest records the block size for the runner's check."""
    from device_runner.ort import nchwc_block_size

    target, block = ("x86-avx2", 8) if nchwc_block_size() != 8 else ("x86-avx512", 16)
    args = ["--model", "mbv3-small", "--top-k", "3", "--resolution", "64", "--target", target]
    code, stdout, err = run_cli(args + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "stored activations: not measured" in stdout and f"block size {block}" in stdout
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["target"] == {"name": target,
                                                                                    "nchwc_block": block}
    code, _, err = run_cli(args + ["--out", str(tmp_path / "b"), "--report"], capsys)
    assert code == 2 and "--target generic" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    from mobiletl_export.cli import report_main

    assert report_main([str(tmp_path / "a")]) == 2
    assert "cannot analyse" in capsys.readouterr().err


def test_force_replaces_only_export_folders(tmp_path, capsys):
    victim = tmp_path / "mine"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    code, _, err = run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--out", str(victim), "--force"],
                           capsys)
    assert code == 2 and "not one (no manifest.json)" in err
    assert (victim / "notes.txt").read_text() == "precious"


def test_sgd_with_weight_decay_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["--model", "mbv2", "--top-k", "1", "--resolution", "32", "--optimizer", "sgd",
                            "--weight-decay", "0.1", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "no weight decay" in err and not (tmp_path / "s").exists()


def test_hardswish_backward_option(tmp_path, capsys, monkeypatch):
    """--hardswish-backward exact: mobiletl without HardSwishMask (the other masks stay), recorded in the manifest
    and the default folder name; with the other methods it is accepted and changes nothing (already exact)."""
    import onnx

    monkeypatch.chdir(tmp_path)
    args = ["--model", "mbv3-small", "--top-k", "2", "--resolution", "32"]
    code, stdout, err = run_cli(args + ["--hardswish-backward", "exact"], capsys)
    assert code == 0, err
    assert "mobiletl (exact Hard-Swish backward), top-2" in stdout and "has no Hard-Swish" not in stdout
    code, mbv2_out, err = run_cli(["--model", "mbv2", "--top-k", "2", "--resolution", "32", "--hardswish-backward",
                                   "exact"], capsys)
    assert code == 0 and "the top-2 region of mbv2 has no Hard-Swish" in mbv2_out, err
    out = tmp_path / "artifacts" / "mbv3-small-top2-mobiletl-hardswish-exact"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hardswish_backward"] == "exact" and "hardswish" not in manifest["masked_activations"]
    for name in ("training_model.onnx", "train_step.onnx"):
        calls = {n.op_type for n in onnx.load(str(out / name)).graph.node if n.domain == "mobiletl"}
        assert "HardSwishMask" not in calls and {"ReLUMask", "HardSigmoidMask", "MaskGrad"} <= calls
    assert run_cli(args + ["--method", "vanilla", "--hardswish-backward", "exact"], capsys)[0] == 0
    manifest = json.loads((tmp_path / "artifacts" / "mbv3-small-top2-vanilla" / "manifest.json").read_text())
    assert manifest["hardswish_backward"] == "exact" and manifest["masked_activations"] == []
