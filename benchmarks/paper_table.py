"""Reproduce MobileTL's accounting from our own graphs (TinyTL accounting: batch 8, 224 px, fp32 activations,
masks 1 bit): stored activations per IRB of the top 5 blocks, mobiletl vs vanilla, for MobileNetV2 and
MobileNetV3-large; and MobileNetV3-large FLOPs of fine-tuning 5 blocks vs all of them.

usage: python benchmarks/paper_table.py     (prints markdown; MB = 10^6 bytes, as the paper's tables)
Paper: MBV2 block 4.02 -> 2.16 MB (-46.3 %), MBV3 block 6.67 -> 3.11 MB (-53.3 %);
MBV3 fine-tune 5 vs all: 975.0 + 902.7 vs 1000.6 + 1934.9 MFLOPs (fwd + bwd), -36 %.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mobiletl_export.analyze.report import analyze_folder
from mobiletl_export.export import ExportConfig, export


_done: dict = {}


def run(model: str, method: str, k: int, tmp: Path, batch: int = 8):
    key = (model, method, k)
    if key not in _done:
        out = tmp / f"{model}-{method}-{k}"
        export(ExportConfig(model=model, top_k=k, method=method, weights="random", out=str(out)))
        _done[key] = analyze_folder(out, batch)
    return _done[key]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("| model | block | vanilla MB | mobiletl MB | saving |")
        print("|---|---|---:|---:|---:|")
        for model in ("mbv2", "mbv3-large"):
            v, m = run(model, "vanilla", 5, tmp), run(model, "mobiletl", 5, tmp)
            for bv, bm in zip(v.blocks, m.blocks):
                if bv["name"] in ("tail", "head"):
                    continue
                sv, sm = bv["stored_bytes"] / 1e6, bm["stored_bytes"] / 1e6
                print(f"| {model} | {bv['name']} | {sv:.2f} | {sm:.2f} | {1 - sm / sv:.1%} |")
            print(f"| {model} | top-5 + tail + head | {v.stored_bytes / 1e6:.2f} | {m.stored_bytes / 1e6:.2f} | "
                  f"{1 - m.stored_bytes / v.stored_bytes:.1%} |")
        print()
        five, every = run("mbv3-large", "mobiletl", 5, tmp), run("mbv3-large", "mobiletl", 15, tmp)
        print("| MobileNetV3-large, batch 8 | fwd MFLOPs | bwd MFLOPs | total | stored MB |")
        print("|---|---:|---:|---:|---:|")
        totals = []
        for name, r in (("fine-tune 5 blocks", five), ("fine-tune all 15 blocks", every)):
            fwd = (r.fwd_flops + r.backbone_fwd_flops) / 1e6
            bwd = r.bwd_flops / 1e6
            totals.append(fwd + bwd)
            print(f"| {name} | {fwd:,.1f} | {bwd:,.1f} | {fwd + bwd:,.1f} | {r.stored_bytes / 1e6:.1f} |")
        print(f"\nfine-tuning 5 blocks instead of all: {1 - totals[0] / totals[1]:.1%} FLOPs (paper: -36 %)")


if __name__ == "__main__":
    main()
