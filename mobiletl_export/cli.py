"""`mobiletl-export`: write ONNX Runtime on-device training artifacts for the top-k blocks of a MobileNet."""

from __future__ import annotations

import argparse
import sys

from .models import MODEL_NAMES
from .plan import METHODS, variant_note
from .reference.trainer import OPTIMIZERS

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mobiletl-export",
        description="Compile MobileTL (or a baseline) fine-tuning of the top-k IRBs of a MobileNet into ONNX "
                    "Runtime on-device training artifacts, plus the frozen backbone as an inference model.")
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--top-k", type=int, help="number of top inverted residual blocks to fine-tune")
    p.add_argument("--memory-budget", help="pick the largest k whose analysed training memory (parameters, "
                                           "gradients, optimizer state, peak live tensors) fits, e.g. 20MB, 1.5GB "
                                           "(MB = MiB); at --report-batch and --resolution")
    p.add_argument("--report", action="store_true", help="also analyse memory and FLOPs per block; prints it and "
                                                         "writes report.json into the folder")
    p.add_argument("--report-batch", type=int, default=8, help="batch size of --report and --memory-budget")
    p.add_argument("--method", default="mobiletl", choices=METHODS)
    p.add_argument("--hardswish-backward", metavar="{sign,exact}", default=None,
                   help="mobiletl's Hard-Swish backward: sign (default; the paper's 1{x >= 0} mask, 1 bit per "
                        "element) or exact (PyTorch's derivative; stores the float32 input, as vanilla does). Other "
                        "methods are exact already: exact is accepted, sign is an error")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--weights", default="default",
                   help="state_dict file, 'random', or 'default' (ImageNet weights where the project has them "
                        "offline — efficientnet-lite0 — else seeded random init)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--preprocess", choices=("crop", "squash"), default="crop",
                   help="how runners fit an image to R x R: crop (default; shorter side to R / 0.875, centre crop, "
                        "as the ImageNet weights were evaluated) or squash (resize to R x R, aspect ignored)")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW's decoupled weight decay (default 0.01); SGD exports have none")
    p.add_argument("--dropout", type=float, default=0.0, help="classifier dropout in the training graph")
    p.add_argument("--width-mult", type=float, default=None, help="MobileNet width multiplier (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default artifacts/<model>-top<K>-<method>/)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--target", default="generic", choices=("generic", "x86-avx2", "x86-avx512", "host"),
                   help="generic: runs on any ONNX Runtime (ARM included); x86-*: depthwise convs on ORT's "
                        "NCHWc kernels (several times faster, x86 only, block size baked in); host: this machine")
    p.add_argument("--ort-format", action="store_true",
                   help="also write .ort files of the ORT-training models (training, eval, optimizer), which ORT's "
                        "minimal mobile builds load, with their required-operator configs")
    return p


def _fail(message: str) -> int:
    print(f"mobiletl-export: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .analyze.memory import measure_stored
    from .export import ExportConfig, export
    from .models.zoo import WeightsError
    from .package.folder import OutputError

    if (args.top_k is None) == (args.memory_budget is None):
        return _fail("give exactly one of --top-k and --memory-budget")
    if args.report_batch < 1:
        return _fail("--report-batch must be >= 1")
    if args.optimizer == "sgd" and args.weight_decay:
        return _fail("--optimizer sgd has no weight decay (plain SGD, as ORT's SGD optimizer); drop --weight-decay "
                     "or use adamw")
    if args.weight_decay is None:
        args.weight_decay = 0.01
    cfg = ExportConfig(model=args.model, top_k=args.top_k if args.top_k is not None else 0, method=args.method, num_classes=args.num_classes,
                       weights=args.weights, resolution=args.resolution, preprocess=args.preprocess, optimizer=args.optimizer, lr=args.lr,
                       weight_decay=args.weight_decay, dropout=args.dropout, seed=args.seed,
                       width_mult=args.width_mult, out=args.out, force=args.force, target=args.target,
                       ort_format=args.ort_format, hardswish_backward=args.hardswish_backward)
    try:
        from device_runner.ort import nchwc_mismatch

        from .emit.nchwc import target_block

        foreign = nchwc_mismatch(target_block(args.target))
        if foreign and (args.report or args.memory_budget is not None):
            return _fail(f"--report and --memory-budget run the training graph, but {foreign}; analyse a "
                         "--target generic export (the sizes are the same)")
        if args.memory_budget is not None:
            from .budget import choose_top_k, parse_bytes

            cfg.top_k, reason = choose_top_k(cfg, parse_bytes(args.memory_budget), args.report_batch)
            print(reason)
        result = export(cfg)
    except (ValueError, WeightsError, OutputError) as exc:
        return _fail(str(exc).splitlines()[0])
    except OSError as exc:
        return _fail(f"cannot write {cfg.out_dir()}: {exc.strerror or exc}")
    m = result.manifest
    import onnx

    training = onnx.load(result.files["training_model"])
    stored = None if foreign else measure_stored(training, batch=1)
    print(f"wrote {result.out}/ in {result.seconds:.1f} s")
    for name in list(m["files"].values()) + ["manifest.json"]:
        print(f"  {name}")
    variant = variant_note(m["method"], m["hardswish_backward"])
    print(f"model {m['model']}, {m['method']}{variant}, top-{m['top_k']} of {m['num_blocks']} IRBs, "
          f"{m['num_classes']} classes, {m['resolution']} px; {m['weights']}")
    if "random init" in m["weights"]:
        print(f"mobiletl-export: WARNING: the frozen layers of this export are untrained ({m['weights']}): every "
              "image gives nearly the same features, so training will not learn (mobiletl-train refuses such "
              "features). For real use pass --weights FILE, a trained state_dict of the model.", file=sys.stderr)
    if variant and not any(n.op_type == "HardSwish" for n in training.graph.node):
        print(f"note: the top-{m['top_k']} region of {m['model']} has no Hard-Swish, so --hardswish-backward exact "
              "changes nothing (the graphs equal the default export's)")
    print(f"trainable parameters: {m['trainable_parameter_count']:,} in {len(m['trainable'])} tensors; "
          f"frozen region tensors: {len(m['frozen'])}")
    if stored is None:
        print(f"stored activations: not measured ({foreign})")
    else:
        print(f"stored activations of the training graph: {sum(t.nbytes for t in stored) / 1024:,.1f} KiB per "
              f"sample ({len(stored)} tensors)")
    if args.report:
        from .analyze.report import analyze_folder, format_report, write_report

        report = analyze_folder(result.out, args.report_batch)
        print(format_report(report))
        print(f"wrote {write_report(result.out, report)}")
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """`mobiletl-report DIR` or `mobiletl-report --compare --model M --top-k K`."""
    p = argparse.ArgumentParser(prog="mobiletl-report", description="Memory and FLOPs of exported training graphs.")
    p.add_argument("folder", nargs="?", help="artifact folder written by mobiletl-export")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compare", action="store_true", help="export and compare the methods for --model/--top-k "
                   "(MobileNetV3: also the exact Hard-Swish backward)")
    p.add_argument("--model", choices=MODEL_NAMES)
    p.add_argument("--top-k", type=int)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--png", help="with --compare: write the per-block bar chart here")
    args = p.parse_args(argv)
    from .analyze.compare import compare_methods, format_comparison, plot_comparison
    from .analyze.report import analyze_folder, format_report, write_report

    try:
        if args.compare:
            if args.model is None or args.top_k is None:
                return _fail("--compare needs --model and --top-k")
            reports = compare_methods(args.model, args.top_k, args.resolution, args.batch)
            for r in reports:
                print(format_report(r), end="\n\n")
            print(format_comparison(reports))
            if args.png:
                print(f"wrote {plot_comparison(reports, args.png)}")
            return 0
        if not args.folder:
            return _fail("give an artifact folder, or --compare --model M --top-k K")
        from pathlib import Path

        if not (Path(args.folder) / "manifest.json").is_file():
            return _fail(f"{args.folder} is not an artifact folder (no manifest.json)")
        report = analyze_folder(args.folder, args.batch)
    except ValueError as exc:
        return _fail(str(exc).splitlines()[0])
    print(format_report(report))
    print(f"wrote {write_report(args.folder, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
