"""One inference model `image -> logits`: the frozen backbone joined with the trained top."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def join_models(backbone_path: Path, top_path: Path, out: Path) -> None:
    """Backbone nodes, then the top's (its names prefixed so the two cannot collide), wired by `features`."""
    import onnx
    from onnx import compose, helper

    backbone, top = onnx.load(str(backbone_path)), onnx.load(str(top_path))
    top = compose.add_prefix(top, "top/")
    rename = {"top/features": "features"}
    for node in top.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    opsets = {o.domain: o.version for o in backbone.opset_import}
    for o in top.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    logits = top.graph.output[0]
    logits.name = "logits"
    for node in top.graph.node:
        node.output[:] = ["logits" if o == "top/logits" else o for o in node.output]
    graph = helper.make_graph(list(backbone.graph.node) + list(top.graph.node), "mobiletl_inference",
                              [backbone.graph.input[0]], [logits],
                              list(backbone.graph.initializer) + list(top.graph.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              functions=list(top.functions), ir_version=backbone.ir_version,
                              producer_name="mobiletl-train")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
