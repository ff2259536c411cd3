"""`mobiletl-export`: write ONNX Runtime on-device training artifacts for the top-k blocks of a MobileNet."""

from __future__ import annotations

import argparse
import sys

from .models import MODEL_NAMES
from .plan import METHODS
from .reference.trainer import OPTIMIZERS

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mobiletl-export",
        description="Compile MobileTL (or a baseline) fine-tuning of the top-k IRBs of a MobileNet into ONNX "
                    "Runtime on-device training artifacts, plus the frozen backbone as an inference model.")
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--top-k", type=int, required=True, help="number of top inverted residual blocks to fine-tune")
    p.add_argument("--method", default="mobiletl", choices=METHODS)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--weights", default="default",
                   help="state_dict file, 'random', or 'default' (ImageNet weights where the project has them "
                        "offline — efficientnet-lite0 — else seeded random init)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay")
    p.add_argument("--dropout", type=float, default=0.0, help="classifier dropout in the training graph")
    p.add_argument("--width-mult", type=float, default=None, help="MobileNet width multiplier (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default artifacts/<model>-top<K>-<method>/)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
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

    cfg = ExportConfig(model=args.model, top_k=args.top_k, method=args.method, num_classes=args.num_classes,
                       weights=args.weights, resolution=args.resolution, optimizer=args.optimizer, lr=args.lr,
                       weight_decay=args.weight_decay, dropout=args.dropout, seed=args.seed,
                       width_mult=args.width_mult, out=args.out, force=args.force)
    try:
        result = export(cfg)
    except (ValueError, WeightsError, OutputError) as exc:
        return _fail(str(exc).splitlines()[0])
    except OSError as exc:
        return _fail(f"cannot write {cfg.out_dir()}: {exc.strerror or exc}")
    m = result.manifest
    import onnx

    stored = measure_stored(onnx.load(result.files["training_model"]), batch=1)
    print(f"wrote {result.out}/ in {result.seconds:.1f} s")
    for name in list(m["files"].values()) + ["manifest.json"]:
        print(f"  {name}")
    print(f"model {m['model']}, {m['method']}, top-{m['top_k']} of {m['num_blocks']} IRBs, "
          f"{m['num_classes']} classes, {m['resolution']} px; {m['weights']}")
    print(f"trainable parameters: {m['trainable_parameter_count']:,} in {len(m['trainable'])} tensors; "
          f"frozen region tensors: {len(m['frozen'])}")
    print(f"stored activations of the training graph: {sum(t.nbytes for t in stored) / 1024:,.1f} KiB per sample "
          f"({len(stored)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
