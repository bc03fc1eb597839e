"""pad_conv: a Pad by zeros before Conv or AveragePool goes into their own pads (Keras'
ZeroPadding2D, tf2onnx's explicit Pad before a strided Conv), so that the branches behind it
merge and a fold before it sees an unpadded input. Refuses a Pad that is not constant zeros,
pads the batch or channel axes, crops, or has a reader that cannot take the padding (MaxPool,
auto_pad SAME, AveragePool that excludes its padding from the count or whose pads would reach
its kernel size: onnxruntime refuses pads >= kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from onnx_fuse.graph import Graph
from onnx_fuse.match import attributes, auto_pad, has_attribute_refs, is_op
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass
class PadIntoReaders(Plan):
    """The Pad at `index` goes; each reader (number, new pads) reads `source` with more padding."""

    index: int
    source: str
    readers: list

    def takes(self) -> tuple[int, ...]:
        return (self.index,) + tuple(reader for reader, _ in self.readers)


def zero_pads(graph: Graph, node) -> list | Refusal:
    """The pads (all begins, then all ends) of a Pad by constant zeros, or why it is not one."""
    attrs = attributes(node)
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return Refusal(f"Pad mode is {mode!r}, not constant")
    if graph.opset < 11:
        pads, value = attrs.get("pads"), np.array(attrs.get("value", 0.0))
    else:
        pads = graph.constant(node.input[1]) if len(node.input) > 1 else None
        value = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
        if len(node.input) > 3 and node.input[3]:
            return Refusal("Pad names its axes")
    if pads is None:
        return Refusal("Pad pads are not a constant")
    if value is None or np.any(value != 0):
        return Refusal("Pad pads with a value that is not zero")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(pads) // 2
    if any(p < 0 for p in pads):
        return Refusal("Pad crops (negative pads)")
    if rank < 3 or any(pads[:2]) or any(pads[rank:rank + 2]):
        return Refusal("Pad pads the batch or channel axis")
    return pads[2:rank] + pads[rank + 2:]


def reader_pads(node, added: list) -> list | Refusal:
    """The pads of a Conv or AveragePool that reads a tensor padded by `added` from its input."""
    if has_attribute_refs(node):
        return Refusal(f"{node.op_type} attributes refer to function attributes")
    attrs = attributes(node)
    padding = auto_pad(node)
    if padding not in ("NOTSET", "VALID"):
        return Refusal(f"{node.op_type} has auto_pad {padding}")
    own = [0] * len(added) if padding == "VALID" else list(attrs.get("pads", [0] * len(added)))
    if len(own) != len(added):
        return Refusal(f"{node.op_type} pads a different number of axes")
    if node.op_type == "AveragePool":
        if attrs.get("ceil_mode", 0):
            return Refusal("AveragePool with ceil_mode=1")
        if any(own) and not attrs.get("count_include_pad", 0):
            return Refusal("AveragePool excludes its own padding from the count (count_include_pad=0)")
    pads = [a + b for a, b in zip(own, added)]
    if node.op_type == "AveragePool":
        kernel = list(attrs.get("kernel_shape", ()))
        rank = len(pads) // 2
        if len(kernel) != rank or any(p >= kernel[i % rank] for i, p in enumerate(pads)):
            return Refusal("AveragePool would pad by its kernel size or more, which onnxruntime refuses")
    return pads


class FoldZeroPad(Pass):
    name = "pad_conv"
    summary = "Pad by zeros -> Conv/AveragePool: the padding goes into their pads"
    anchors = ("Pad",)

    def match(self, graph: Graph, index: int):
        readers = graph.readers(graph.node(index).output[0])
        return index if readers and all(is_op(graph.node(r), "Conv", "AveragePool") for r in readers) else None

    def check(self, graph: Graph, index: int) -> PadIntoReaders | Refusal:
        node = graph.node(index)
        if has_attribute_refs(node):
            return Refusal("Pad attributes refer to function attributes")
        output = node.output[0]
        if output in graph.outputs:
            return Refusal(f"Pad output '{output}' is a graph output")
        added = zero_pads(graph, node)
        if isinstance(added, Refusal):
            return added
        readers = []
        for reader in dict.fromkeys(graph.readers(output)):
            if list(graph.node(reader).input).index(output) != 0 or list(graph.node(reader).input).count(output) != 1:
                return Refusal(f"{graph.node(reader).op_type} reads the padded tensor as a weight")
            pads = reader_pads(graph.node(reader), added)
            if isinstance(pads, Refusal):
                return pads
            readers.append((reader, pads))
        return PadIntoReaders(index, node.input[0], readers)

    def rewrite(self, graph: Graph, index: int, plan: PadIntoReaders):
        for reader, pads in plan.readers:
            old = graph.node(reader)
            keep = [a for a in old.attribute if a.name not in ("pads", "auto_pad", "count_include_pad")]
            node = helper.make_node(old.op_type, [plan.source] + list(old.input[1:]), list(old.output),
                                    name=old.name, domain=old.domain, pads=pads)
            node.attribute.extend(keep)
            if old.op_type == "AveragePool":  # the zeros the Pad added were counted
                node.attribute.append(helper.make_attribute("count_include_pad", 1))
            node.doc_string = old.doc_string
            graph.replace_node(reader, node)
        graph.remove_node(index)
