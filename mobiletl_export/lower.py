"""Lowering: a model's structure (models/spec.py) -> a flat tape of `Op`s with static shapes.

The backbone (stem + frozen IRBs) lowers from `image`; the trained region (top-k IRBs, tail, head) from
`features`. Squeeze-excite lowers to its pieces (pool, conv, act, conv, act, scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .models.spec import IRB, Activation, ConvBN, Dropout, Head, Linear, ModelStructure, Pool, conv_out_hw, conv_pads
from .rules import Op

ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid")


@dataclass
class Tape:
    input: str
    input_shape: tuple  # per-sample (C, H, W)
    ops: list[Op] = field(default_factory=list)
    shapes: dict = field(default_factory=dict)  # value -> per-sample shape
    output: str = ""

    def add(self, kind: str, layer: str, inputs: list[str], out_shape: tuple, params=None, **attrs) -> str:
        out = f"{layer}/{kind}"
        self.ops.append(Op(kind, layer, list(inputs), [out], dict(params or {}), attrs))
        self.shapes[out] = tuple(out_shape)
        return out

    # -- layers --------------------------------------------------------------------------------------------
    def conv(self, name: str, conv: nn.Conv2d, x: str) -> str:
        c, h, w = self.shapes[x]
        pads = conv_pads(conv, (h, w))
        oh, ow = conv_out_hw(conv, (h, w))
        output_padding = []  # what ConvTranspose needs to give back the input size
        for n, o, k, st, d, lo, hi in zip((h, w), (oh, ow), conv.kernel_size, conv.stride, conv.dilation,
                                          pads[:2], pads[2:]):
            output_padding.append(n - ((o - 1) * st - lo - hi + (k - 1) * d + 1))
        params = {"weight": f"{name}.weight"}
        if conv.bias is not None:
            params["bias"] = f"{name}.bias"
        kind = "dwconv" if conv.groups > 1 and conv.groups == conv.in_channels else "conv"
        return self.add(kind, name, [x], (conv.out_channels, oh, ow), params, kernel=conv.kernel_size,
                        stride=conv.stride, pads=(pads[0], pads[1], pads[2], pads[3]), dilation=conv.dilation,
                        group=conv.groups, in_hw=(h, w), out_hw=(oh, ow), in_channels=conv.in_channels,
                        output_padding=output_padding)

    def batchnorm(self, name: str, bn: nn.BatchNorm2d, x: str) -> str:
        params = {r: f"{name}.{k}" for r, k in (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"),
                                                 ("var", "running_var"))}
        return self.add("batchnorm", name, [x], self.shapes[x], params, eps=float(bn.eps))

    def act(self, kind: str | None, name: str, x: str) -> str:
        if kind is None:
            return x
        return self.add(kind, name, [x], self.shapes[x], shape=self.shapes[x])

    def conv_bn(self, cb: ConvBN, x: str) -> str:
        y = self.batchnorm(cb.bn_name, cb.bn, self.conv(cb.conv_name, cb.conv, x))
        return self.act(cb.act, f"{cb.bn_name}.act", y)

    def irb(self, block: IRB, x: str) -> str:
        y = x
        if block.expand is not None:
            y = self.conv_bn(block.expand, y)
        y = self.conv_bn(block.depthwise, y)
        if block.se is not None:
            se = block.se
            c, h, w = self.shapes[y]
            s = self.add("se_pool", f"{se.fc1_name.rsplit('.', 1)[0]}.pool", [y], (c, 1, 1), in_hw=(h, w))
            s = self.act(se.act, f"{se.fc1_name}.act", self.conv(se.fc1_name, se.fc1, s))
            s = self.act(se.gate, f"{se.fc2_name}.gate", self.conv(se.fc2_name, se.fc2, s))
            y = self.add("scale", f"{se.fc1_name.rsplit('.', 1)[0]}.scale", [y, s], self.shapes[y])
        y = self.conv_bn(block.project, y)
        return self.add("add", f"{block.name}.residual", [x, y], self.shapes[y]) if block.residual else y

    def head(self, head: Head, x: str) -> str:
        for i, layer in enumerate(head.layers):
            if isinstance(layer, Pool):
                c, h, w = self.shapes[x]
                last = self.ops[-1]  # an activation's backward broadcasts a [N, C, 1, 1] gradient (rules/pool.py)
                broadcast = last.outputs == [x] and last.kind in ACTIVATIONS and math.prod(last.attrs["shape"]) % 8 == 0
                x = self.add("pool", "head.pool", [x], (c,), in_hw=(h, w), broadcast_grad=broadcast)
            elif isinstance(layer, Linear):
                x = self.add("linear", layer.name, [x], (layer.module.out_features,),
                             {"weight": f"{layer.name}.weight", "bias": f"{layer.name}.bias"})
            elif isinstance(layer, Activation):
                x = self.act(layer.kind, f"head.{i}.{layer.kind}", x)
            elif isinstance(layer, Dropout):
                x = self.add("dropout", f"head.{i}.dropout", [x], self.shapes[x], p=float(layer.module.p))
            else:
                raise TypeError(f"unknown head layer {layer!r}")
        return x

    def finish(self, value: str, name: str) -> None:
        """Give the last op's output its public name (`features`, `logits`)."""
        last = self.ops[-1]
        assert last.outputs == [value], "the public output must be the last op's"
        last.outputs = [name]
        self.shapes[name] = self.shapes.pop(value)
        self.output = name


def lower_backbone(structure: ModelStructure, frozen: tuple[IRB, ...], resolution: int) -> Tape:
    tape = Tape("image", (3, resolution, resolution))
    tape.shapes["image"] = tape.input_shape
    x = tape.conv_bn(structure.stem, "image")
    for block in frozen:
        x = tape.irb(block, x)
    tape.finish(x, "features")
    return tape


def lower_region(structure: ModelStructure, trained: tuple[IRB, ...], features_shape: tuple) -> Tape:
    tape = Tape("features", tuple(features_shape))
    tape.shapes["features"] = tape.input_shape
    x = "features"
    for block in trained:
        x = tape.irb(block, x)
    x = tape.conv_bn(structure.tail, x)
    tape.finish(tape.head(structure.head, x), "logits")
    return tape
