"""The files people really have: class folders, phone photos, every Pillow mode, bad and huge files, resumed runs.

Each test builds its inputs (small synthetic images) and checks the runner's behaviour against values computed
here independently (numpy / Pillow), or its one-line refusal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import export_randomized
from PIL import Image

from device_runner import RunnerError
from device_runner.cli import main
from device_runner.data import assign_classes, decode, load_dataset

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return export_randomized(tmp_path_factory.mktemp("real") / "mbv3s-3", 3)


def folder(root: Path, classes=CLASSES, per_class=8, seed=0, suffix=".png") -> Path:
    """Class = brightness band (learnable); sizes vary."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        level = 30 + 90 * CLASSES.index(name) if name in CLASSES else 200
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(16, 48, 2))
            a = np.clip(level + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i:02d}{suffix}")
    return root


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args + ["--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("mobiletl-train: error:"), err
    return lines[0]


# -- 1-3: classes ------------------------------------------------------------------------------------------------
def test_hidden_folders_and_files_are_not_data(tmp_path):
    data = folder(tmp_path / "d")
    (data / ".ipynb_checkpoints").mkdir()
    shutil.copy(next((data / "dog").iterdir()), data / ".ipynb_checkpoints" / "x-checkpoint.png")
    shutil.copy(next((data / "cat").iterdir()), data / "cat" / ".hidden.png")
    d = load_dataset(str(data), 3)
    assert d.classes == CLASSES
    assert np.bincount(d.labels).tolist() == [8, 8, 8]


def test_val_labels_follow_class_names_not_positions(tmp_path):
    train = load_dataset(str(folder(tmp_path / "t")), 3)
    val = load_dataset(str(folder(tmp_path / "v", classes=["cat", "fox"], per_class=2)), 3)
    assert val.labels.tolist() == [0, 0, 1, 1]  # positions in the val folder
    assign_classes(train, val, 3, False, "t")
    assert val.labels.tolist() == [0, 0, 2, 2] and val.classes == CLASSES  # fox is class 2 of training
    wolf = load_dataset(str(folder(tmp_path / "w", classes=["cat", "wolf"], per_class=1)), 3)
    with pytest.raises(RunnerError, match="--val has class that --data lacks: wolf"):
        assign_classes(train, wolf, 3, False, "t")


def test_val_subset_scores_a_perfect_model_perfectly(artifacts, tmp_path, capsys):
    """End to end: val 'fox' is scored as fox (val 0.5 when labels went by position); names in the model."""
    import onnxruntime as ort

    train, val = folder(tmp_path / "t", per_class=10), folder(tmp_path / "v", classes=["cat", "fox"], per_class=4,
                                                               seed=1)
    code, out, err = run(["--artifacts", str(artifacts), "--data", str(train), "--val", str(val), "--epochs", "6",
                          "--lr", "3e-3", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classes"] == CLASSES and summary["val_acc"] == 1.0, summary
    meta = ort.InferenceSession(str(tmp_path / "r" / "model.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == CLASSES
    assert json.loads((tmp_path / "r" / "run.json").read_text())["class_names"] == CLASSES


@pytest.mark.parametrize("case", ["fewer", "more", "empty", "only-other-files"])
def test_class_count_against_the_export(case, artifacts, tmp_path, capsys):
    data = folder(tmp_path / "d", classes=CLASSES[:2] if case == "fewer" else CLASSES)
    if case == "more":
        folder(data, classes=["owl"], per_class=2)
    elif case == "empty":
        (data / "emu").mkdir()
    elif case == "only-other-files":
        (data / "emu").mkdir()
        (data / "emu" / "notes.txt").write_text("not an image")
    args = ["--artifacts", str(artifacts), "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r")]
    line = one_line_error(*run(args, capsys)[::2])
    expect = {"fewer": "has 2 classes (cat, dog) but the export has 3 outputs",
              "more": "has 4 classes (cat, dog, fox, owl) but the export has 3 outputs",
              "empty": f"class folder {data / 'emu'} has no images",
              "only-other-files": "has no images (1 other file)"}[case]
    assert expect in line, line
    assert not (tmp_path / "r").exists()
    if case == "fewer":
        code, out, err = run(args + ["--allow-unused-outputs"], capsys)
        assert code == 0, err
        assert json.loads(out)["classes"] == ["cat", "dog", "2"]


# -- 4-5: decoding -----------------------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = 255  # a white band on the left of the stored (landscape) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display" (a phone held upright)
    Image.fromarray(a).save(tmp_path / "p.jpg", exif=exif, quality=95)
    Image.fromarray(a).save(tmp_path / "plain.jpg", quality=95)
    shown, plain = decode(tmp_path / "p.jpg"), decode(tmp_path / "plain.jpg")
    assert plain.shape == (20, 40, 3) and shown.shape == (40, 20, 3)
    np.testing.assert_array_equal(shown, np.rot90(plain, k=-1))  # 90 degrees clockwise: the band is now on top
    assert shown[:8].mean() > 200 and shown[-20:].mean() < 30


def _expected_modes() -> dict:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    alpha = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    bits = grey > 127
    v16 = rng.integers(0, 65536, (12, 10)).astype(np.uint16)
    fl = rng.random((12, 10)).astype(np.float32)
    pal = Image.fromarray(rgb).quantize(16)
    return {  # mode -> (image, expected uint8 H x W x C computed here)
        "1": (Image.fromarray(bits), np.where(bits, 255, 0).astype(np.uint8)[..., None]),
        "L": (Image.fromarray(grey), grey[..., None]),
        "LA": (Image.fromarray(np.dstack([grey, alpha])), grey[..., None]),
        "P": (pal, np.asarray(pal.convert("RGB"))),
        "RGB": (Image.fromarray(rgb), rgb),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha])), rgb),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))),
        "I;16": (Image.fromarray(v16), np.rint(v16 / 257.0).astype(np.uint8)[..., None]),
        "I": (Image.fromarray(v16.astype(np.int32)), np.rint(v16 / 257.0).astype(np.uint8)[..., None]),
        "F": (Image.fromarray(fl), np.rint(fl * 255.0).astype(np.uint8)[..., None]),
    }


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_pillow_mode_decodes_by_its_meaning(mode, tmp_path):
    image, expected = _expected_modes()[mode]
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I", "F") else "x.png")
    image.save(path)
    with Image.open(path) as im:
        assert im.mode == mode or (mode == "I;16" and im.mode.startswith("I"))
    np.testing.assert_array_equal(decode(path), expected)


def test_sixteen_bit_png_is_scaled_by_its_depth(tmp_path):
    v = np.array([[0, 257 * 100, 65535, 32896] * 3] * 12, np.uint16)
    Image.fromarray(v).save(tmp_path / "d.png")
    assert decode(tmp_path / "d.png")[0, :4, 0].tolist() == [0, 100, 255, 128]


@pytest.mark.parametrize("suffix", [".webp", ".bmp", ".tif", ".gif", ".jpeg"])
def test_other_formats_are_images(suffix, tmp_path):
    data = folder(tmp_path / "d", suffix=suffix, per_class=3)
    (data / "cat" / "readme.txt").write_text("x")
    d = load_dataset(str(data), 3)
    assert len(d) == 9 and d.skipped == {"cat": {"not images": 1, "unreadable": []}}
    assert d.image(0).shape[2] in (1, 3)


# -- 7-8: bad and huge files -------------------------------------------------------------------------------------
def _damage(data: Path) -> list[Path]:
    jpg = data / "dog" / "t.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(jpg, quality=90)
    blob = jpg.read_bytes()
    jpg.write_bytes(blob[:len(blob) // 2])  # truncated mid-scan: header intact
    empty = data / "fox" / "zero.jpg"
    empty.write_bytes(b"")
    return [jpg, empty]


def test_bad_files_are_all_reported_before_training(artifacts, tmp_path, capsys):
    data = folder(tmp_path / "d")
    bad = _damage(data)
    args = ["--artifacts", str(artifacts), "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r")]
    line = one_line_error(*run(args, capsys)[::2])
    assert "2 image files" in line and all(str(b) in line for b in bad) and "--skip-bad-images" in line
    assert not (tmp_path / "r").exists()
    code, out, err = run(args + ["--skip-bad-images"], capsys)
    assert code == 0, err
    assert json.loads(out)["skipped"] == {"dog": {"not images": 0, "unreadable": 1},
                                          "fox": {"not images": 0, "unreadable": 1}}


def test_huge_photo_decodes_in_little_memory(tmp_path):
    """16000 x 12000 JPEG (192 MP; Pillow's DecompressionBombError by default): decoded drafted, in a fresh
    process whose peak RSS stays far below the 576 MB of the full image."""
    path = tmp_path / "pano.jpg"
    Image.new("RGB", (16000, 12000), (40, 120, 200)).save(path, quality=80)
    # VmHWM: this process's peak (getrusage's ru_maxrss would include the parent's, inherited at fork)
    code = ("import re; from pathlib import Path; from device_runner.data import decode; "
            f"a = decode(Path({str(path)!r}), 224); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024; "
            "print(a.shape, *a.reshape(-1, 3).mean(0).round().astype(int).tolist(), hwm)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    rss = int(done.stdout.split()[-1])
    assert "(1500, 2000, 3)" in done.stdout  # 1/8 DCT scale still >= 4 x 224 on the short side
    colour = [int(v) for v in done.stdout.split()[-4:-1]]
    assert np.abs(np.array(colour) - [40, 120, 200]).max() <= 2  # JPEG rounding
    assert rss < 250, f"peak RSS {rss} MiB"


# -- 12-13: resumed runs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["data-file-added", "data-file-changed", "artifacts", "class-renamed"])
def test_resume_refuses_another_data_or_export(change, artifacts, tmp_path, capsys):
    data, art = folder(tmp_path / "d"), tmp_path / "art"
    shutil.copytree(artifacts, art)
    args = ["--artifacts", str(art), "--data", str(data), "--epochs", "2", "--out", str(tmp_path / "r")]
    code, _, err = run(args + ["--max-steps", "3"], capsys)
    assert code == 0, err
    if change == "data-file-added":
        shutil.copy(data / "cat" / "00.png", data / "cat" / "99.png")
    elif change == "data-file-changed":
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "dog" / "00.png")
    elif change == "class-renamed":
        (data / "fox").rename(data / "vixen")
    else:  # the same --artifacts path, re-exported with other weights
        shutil.rmtree(art)
        export_randomized(art, 3, seed=9)
    line = one_line_error(*run(args + ["--resume"], capsys)[::2])
    expect = {"data-file-added": "files of --data changed", "data-file-changed": "files of --data changed",
              "class-renamed": "other classes (missing now: fox; new: vixen)",
              "artifacts": "not the ones run"}[change]
    assert expect in line, line


def _checkpoint_run(artifacts, data, out, capsys, *extra):
    return run(["--artifacts", str(artifacts), "--data", str(data), "--epochs", "3", "--batch-size", "4",
                "--checkpoint-every", "2", "--out", str(out), *extra], capsys)


@pytest.mark.parametrize("damage", ["parameters", "state", "cache-index", "both", "none-yet"])
def test_damaged_checkpoint_falls_back_and_resume_always_continues(damage, artifacts, tmp_path, capsys):
    data = folder(tmp_path / "d", per_class=4)
    whole = tmp_path / "whole"
    assert _checkpoint_run(artifacts, data, whole, capsys)[0] == 0
    out = tmp_path / "r"
    code, _, err = _checkpoint_run(artifacts, data, out, capsys, "--max-steps", "1" if damage == "none-yet" else "7")
    assert code == 0, err
    ckpt = out / "checkpoint"
    if damage == "none-yet":  # stopped before its first checkpoint (max-steps saves one: remove it)
        shutil.rmtree(ckpt)
        shutil.rmtree(out / "checkpoint.old", ignore_errors=True)
    targets = {"parameters": ["parameters.safetensors"], "state": ["state.json"],
               "cache-index": ["cache_index.npy"], "both": ["parameters.safetensors"]}.get(damage, [])
    for name in targets:
        blob = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(blob[:len(blob) // 2])
    if damage == "both":
        old = out / "checkpoint.old" / "parameters.safetensors"
        old.write_bytes(old.read_bytes()[:100])
    code, out_text, err = _checkpoint_run(artifacts, data, out, capsys, "--resume")
    assert code == 0, err
    if damage in ("parameters", "state", "cache-index"):
        assert "resuming from the previous checkpoint" in err
    elif damage == "both":
        assert "no intact checkpoint" in err and "starting the run again from step 0" in err
    else:
        assert "starting the run again from step 0" in err
    # it ends where the uninterrupted run ends (replayed steps are the same steps)
    a, b = ([json.loads(s) for s in (r / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in s][-1]
            for r in (out, whole))
    assert a["step"] == b["step"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


# -- found by a new user ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["memory-then-disk", "disk-file-lost"])
def test_resume_never_reads_features_a_recreated_disk_cache_lacks(how, artifacts, tmp_path, capsys):
    data = folder(tmp_path / "d", per_class=4)
    common = ["--artifacts", str(artifacts), "--data", str(data), "--epochs", "3", "--batch-size", "4",
              "--checkpoint-every", "2"]
    assert run(common + ["--out", str(tmp_path / "whole")], capsys)[0] == 0
    first = ["--cache-mb", "0"] if how == "disk-file-lost" else []
    assert run(common + first + ["--out", str(tmp_path / "r"), "--max-steps", "7"], capsys)[0] == 0
    if how == "disk-file-lost":
        (tmp_path / "r" / "features.cache").unlink()
    code, _, err = run(common + ["--cache-mb", "0", "--out", str(tmp_path / "r"), "--resume"], capsys)
    assert code == 0, err
    a, b = ([json.loads(s) for s in (r / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in s][-1]
            for r in (tmp_path / "r", tmp_path / "whole"))
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["train_acc"] == b["train_acc"]


def test_symlinked_class_folder_changes_are_seen_by_resume(artifacts, tmp_path, capsys):
    real = folder(tmp_path / "real")
    data = tmp_path / "d"
    data.mkdir()
    for c in CLASSES:
        (data / c).symlink_to(real / c, target_is_directory=True)
    (data / "cat" / "broken.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: not an image, no crash
    args = ["--artifacts", str(artifacts), "--data", str(data), "--epochs", "2", "--out", str(tmp_path / "r")]
    code, _, err = run(args + ["--max-steps", "2"], capsys)
    assert code == 0, err
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(real / "dog" / "00.png")
    assert "files of --data changed" in one_line_error(*run(args + ["--resume"], capsys)[::2])


@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".tif", ".webp", ".png"])
def test_truncated_files_of_every_format_are_found_up_front(suffix, tmp_path):
    data = folder(tmp_path / "d", per_class=2)
    f = data / "dog" / f"cut{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(f)
    blob = f.read_bytes()
    f.write_bytes(blob[:len(blob) * 6 // 10])
    with pytest.raises(RunnerError, match=rf"1 image file in .* cannot be decoded: .*cut\{suffix}"):
        load_dataset(str(data), 3)
    d = load_dataset(str(data), 3, skip_bad=True)
    assert len(d) == 6 and d.skipped["dog"]["unreadable"] == [str(f)]
    for i in range(len(d)):  # every image left decodes
        d.image(i)


def test_class_names_are_unicode_normalised(tmp_path):
    import unicodedata

    nfd, nfc = unicodedata.normalize("NFD", "Café crème"), "Café crème"
    train = load_dataset(str(folder(tmp_path / "t", classes=["cat", "dog"], per_class=1) ), 2)
    (tmp_path / "t" / "dog").rename(tmp_path / "t" / nfd)
    val_root = folder(tmp_path / "v", classes=["cat"], per_class=1)
    shutil.copytree(val_root / "cat", val_root / nfc)
    train, val = load_dataset(str(tmp_path / "t"), 2), load_dataset(str(val_root), 2)
    assign_classes(train, val, 2, False, "t")
    assert train.classes == ["Café crème", "cat"] and val.labels.tolist() == [0, 1]


def test_a_class_without_training_images_after_subsetting_is_refused(artifacts, tmp_path, capsys):
    data = folder(tmp_path / "d", per_class=1)
    args = ["--artifacts", str(artifacts), "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r"),
            "--max-samples", "2"]
    assert "no training images left for class" in one_line_error(*run(args, capsys)[::2])


def test_resume_refuses_an_edited_manifest(artifacts, tmp_path, capsys):
    data, art = folder(tmp_path / "d"), tmp_path / "art"
    shutil.copytree(artifacts, art)
    args = ["--artifacts", str(art), "--data", str(data), "--epochs", "2", "--out", str(tmp_path / "r")]
    assert run(args + ["--max-steps", "2"], capsys)[0] == 0
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["optimizer"]["lr"] = 0.01  # the default learning rate lives only in the manifest
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert "not the ones run" in one_line_error(*run(args + ["--resume"], capsys)[::2])


# -- issue 12, item 3: no silent training of a useless backbone ------------------------------------------------------
@pytest.fixture(scope="module")
def dead_export(tmp_path_factory):
    """mbv3-small as `mobiletl-export` writes it without weights: random init, default BN statistics."""
    out = tmp_path_factory.mktemp("dead") / "mbv3s"
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "mobiletl-export"), "--model", "mbv3-small", "--top-k", "2",
                           "--num-classes", "3", "--resolution", "32", "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done.stderr


def test_exporter_warns_about_untrained_frozen_layers(dead_export):
    _, err = dead_export
    assert "WARNING: the frozen layers of this export are untrained" in err and "--weights FILE" in err


@pytest.mark.parametrize("runner", ["python", "node"])
def test_runners_refuse_features_that_ignore_the_image(runner, dead_export, artifacts, tmp_path, capsys):
    data = folder(tmp_path / "d")
    args = ["--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r")]
    if runner == "python":
        line = one_line_error(*run(["--artifacts", str(dead_export[0])] + args, capsys)[::2])
        assert run(["--artifacts", str(artifacts)] + args[:-1] + [str(tmp_path / "ok")], capsys)[0] == 0  # alive
    else:
        done = subprocess.run(["node", str(ROOT / "device_runner" / "web" / "node" / "cli.mjs"), "--artifacts",
                               str(dead_export[0]), *args, "--no-progress"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip().splitlines()[-1]
    assert "same features for every image" in line and "--weights FILE" in line


# -- issue 12, item 4: the preprocessing the weights expect ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(427, 640), (640, 427), (300, 300)])
def test_crop_preserves_the_aspect_and_centres(shape):
    """A disk centred in a non-square photo stays a centred disk (squash makes it an ellipse); the kept region is
    the central R/0.875 x R/0.875 window of the shorter side, as torchvision's Resize + CenterCrop."""
    from device_runner.data import fit

    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    radius = 0.3 * min(h, w)
    im = np.where(((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < radius ** 2)[..., None], 255, 0).astype(np.uint8)
    R = 64
    crop = fit(im, R, {"resize": "shorter-side", "crop_fraction": 0.875})[..., 0] > 127
    rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
    assert crop.shape == (R, R)
    assert abs(len(rows) - len(cols)) <= 1  # round
    assert abs((rows[0] + rows[-1]) / 2 - (R - 1) / 2) <= 1 and abs((cols[0] + cols[-1]) / 2 - (R - 1) / 2) <= 1
    expected_diameter = 2 * radius * (R / 0.875) / min(h, w)  # scaled with the shorter side, not cropped away
    assert abs(len(rows) - expected_diameter) <= 2
    squash = fit(im, R, {"resize": "squash"})[..., 0] > 127
    if h != w:
        assert abs(np.flatnonzero(squash.any(1)).size - np.flatnonzero(squash.any(0)).size) > 3  # an ellipse


def test_new_exports_record_the_crop_and_old_ones_squash(artifacts):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["preprocess"] == {"resize": "shorter-side", "crop_fraction": 0.875}
    from device_runner.data import SQUASH, fit

    im = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit(im, 32), fit(im, 32, SQUASH))  # a manifest without the field
