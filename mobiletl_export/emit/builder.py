"""GraphBuilder: collects ONNX nodes, inputs, outputs and constants with unique names and static shapes.

Nodes are named `<phase>/<layer>/<op>`; the phase (`fwd`, `bwd`, `acc`) is how the analysis and the tests
tell the forward part of a training graph from its backward part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # BitwiseAnd (mask unpacking) needs 18; ORT 1.19.2 supports it
IR_VERSION = 9  # ORT 1.19.2 loads IR <= 10; 9 is what onnx 1.16/1.17 write for opset 18-20
MS_DOMAIN = "com.microsoft"
DOMAIN = "mobiletl"


@dataclass
class GraphBuilder:
    name: str
    phase: str = "fwd"
    nchwc_block: int = 0  # > 0: depthwise convs run on ORT's NCHWc kernels with this block size (emit/nchwc.py)
    portable: bool = False  # backward from standard ai.onnx ops only (no com.microsoft training kernels)
    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    _used: set = field(default_factory=set)
    _consts: dict = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}~{i}"
        self._used.add(name)
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, *, layer: str = "",
             domain: str = "", **attrs) -> list[str]:
        """Append a node; `outputs` is a count (fresh names from the layer) or explicit names."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{layer}/{op}" if layer else op) for _ in range(outputs)]
        else:
            self._used.update(o for o in outputs if o)
        node_name = self.fresh(f"{self.phase}/{layer}/{op}" if layer else f"{self.phase}/{op}")
        self.nodes.append(helper.make_node(op, inputs, outputs, name=node_name, domain=domain, **attrs))
        return outputs

    def op(self, op: str, *inputs: str, layer: str = "", domain: str = "", **attrs) -> str:
        """Single-output node."""
        return self.node(op, list(inputs), 1, layer=layer, domain=domain, **attrs)[0]

    def const(self, value, dtype=np.float32) -> str:
        """A Constant node, shared by every user of the same value (constants are not parameters)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(f"const/{array.dtype.name}{list(array.shape)}")
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh(f"{self.phase}/const"),
                                               value=numpy_helper.from_array(array, name)))
            self._consts[key] = name
        return self._consts[key]

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        self._used.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def model(self, functions=(), extra_opsets: dict | None = None) -> onnx.ModelProto:
        opsets = {"": OPSET, MS_DOMAIN: 1, **(extra_opsets or {})}
        opsets.update({n.domain: 1 for n in self.nodes if n.domain not in opsets})
        if functions:
            opsets[DOMAIN] = 1
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                                  functions=list(functions), ir_version=IR_VERSION,
                                  producer_name="mobiletl-export")
        return model


FLOAT, INT64, BOOL, UINT8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL, TensorProto.UINT8
