"""The four methods side by side for one model and k (for MobileNetV3 also mobiletl with the exact Hard-Swish
backward): a table, and a per-block bar chart (matplotlib)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..plan import METHODS, variant_note
from .report import Report, analyze_folder, mib


def compare_methods(model: str, top_k: int, resolution: int = 224, batch: int = 8, seed: int = 0,
                    weights: str = "default") -> list[Report]:
    """Reports (batch `batch`, `resolution` px) of `model`'s top-`top_k` under each method, in METHODS order;
    MobileNetV3 (Hard-Swish) adds mobiletl with `--hardswish-backward exact` after mobiletl."""
    from ..export import ExportConfig, export

    variants = [(method, None) for method in METHODS]
    if model.startswith("mbv3"):
        variants.insert(1, ("mobiletl", "exact"))
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, hardswish_backward in variants:
            out = Path(tmp) / f"{method}-{hardswish_backward}"
            export(ExportConfig(model=model, top_k=top_k, method=method, resolution=resolution, seed=seed,
                                weights=weights, out=str(out), hardswish_backward=hardswish_backward))
            reports.append(analyze_folder(out, batch))
    return reports


def label(r: Report) -> str:
    """The method's name, with the exact Hard-Swish variant marked."""
    return f"{r.method}{variant_note(r.method, r.hardswish_backward)}"


def format_comparison(reports: list[Report]) -> str:
    r0 = reports[0]
    lines = [f"{r0.model} top-{r0.top_k}, batch {r0.batch}, {r0.resolution} px: the methods side by side",
             f"| method | stored MiB | peak live MiB | params+grads+optimizer MiB | training MiB | fwd GFLOPs | "
             f"bwd GFLOPs | trainable params |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        lines.append(f"| {label(r)} | {mib(r.stored_bytes)} | {mib(r.peak_live_bytes)} | "
                     f"{mib(r.param_bytes + r.grad_bytes + r.optimizer_bytes)} | {mib(r.training_bytes)} | "
                     f"{r.fwd_flops / 1e9:.2f} | {r.bwd_flops / 1e9:.2f} | {r.trainable_params:,} |")
    return "\n".join(lines)


def plot_comparison(reports: list[Report], path: Path) -> Path:
    """Grouped bars: stored MiB per block, one bar per method (needs the `plot` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the PNG chart needs matplotlib: pip install 'mobiletl-export[plot]'") from None
    names = [b["name"] for b in reports[0].blocks]
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    for i, r in enumerate(reports):
        values = [b["stored_bytes"] / 2**20 for b in r.blocks]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label(r))
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylabel("stored activations (MiB)")
    r0 = reports[0]
    ax.set_title(f"{r0.model} top-{r0.top_k}, batch {r0.batch}, {r0.resolution} px")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
