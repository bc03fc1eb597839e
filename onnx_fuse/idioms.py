"""Idioms a runtime runs as one kernel, found once per round so that no rewrite takes one apart.

onnxruntime (and OpenVINO and TensorRT) fuse written-out GELU, SiLU/Swish, HardSwish, Mish,
LayerNormalization and RMSNorm into single kernels. Folding a constant out of one (GELU's final
Mul(0.5) into the next Conv) is exact but breaks the fusion, and the model gets slower. Each such
idiom is a self-gated expression: a tensor x combined again with a nonlinear function of itself,

    x -> [elementwise steps] -> gate (Erf, Tanh, Sigmoid, HardSigmoid, Softplus, Clip, Relu,
         ReduceMean) -> [elementwise steps] -> closing op that reads x again -> [constant scale]

(GELU: x * (1 + erf(x / sqrt 2)) * 0.5; LayerNorm: (x - mean(x)) / sqrt(mean(d * d) + eps) * g + b).
The nodes from x (exclusive) to the closing op, and the constant Mul/Div/Add/Sub right after
it, are the idiom; the manager refuses any plan that takes one of them. Attention's scale, a Mul
or Div by a constant between MatMul(q, k) and Softmax, is kept the same way.
"""

from __future__ import annotations

from .graph import Graph, is_default_domain

GATES = {"Erf": "GELU", "Tanh": "GELU/Mish", "Sigmoid": "SiLU/Swish", "HardSigmoid": "HardSwish",
         "Softplus": "Mish", "Clip": "HardSwish", "Relu": "HardSwish", "ReduceMean": "LayerNorm/RMSNorm"}
# gates whose idiom ends in constants the fusion needs: GELU's 0.5, HardSwish's 1/6 (x * relu6(x + 3)
# / 6), LayerNorm's gamma and beta; SiLU and x * HardSigmoid(x) have none, and a scale after them
# is free to fold
TRAILING_CONSTANTS = frozenset({"Erf", "Tanh", "Clip", "Relu", "ReduceMean"})
# ops an idiom is written with between x, its gate and its closing op (Identity: exporter glue)
STEPS = frozenset(GATES) | {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Max", "Min", "Identity"}
CONSTANT_SCALES = ("Mul", "Div", "Add", "Sub")
REACH = 4  # steps searched on each side of a gate


def _step(graph: Graph, index: int | None) -> bool:
    return index is not None and is_default_domain(graph.node(index)) and graph.node(index).op_type in STEPS


def _variables(graph: Graph, node) -> list[str]:
    return [name for name in node.input if name and not graph.is_constant(name)]


def _constant_scale(graph: Graph, index: int | None) -> bool:
    """A Mul/Div/Add/Sub of one tensor by a constant."""
    if index is None:
        return False
    node = graph.node(index)
    return is_default_domain(node) and node.op_type in CONSTANT_SCALES and len(_variables(graph, node)) == 1


def _before(graph: Graph, gate: int) -> dict[str, set]:
    """Tensors the gate is computed from through idiom steps, each with the steps that read it on
    the way to the gate (None stands for the gate itself)."""
    reached: dict[str, set] = {}
    frontier = [(name, None) for name in _variables(graph, graph.node(gate))]
    for depth in range(REACH + 1):
        following = []
        for name, reader in frontier:
            seen = name in reached
            reached.setdefault(name, set()).add(reader)
            producer = graph.producer_of(name)
            if not seen and depth < REACH and _step(graph, producer):
                following += [(n, producer) for n in _variables(graph, graph.node(producer))]
        frontier = following
    return reached


def _between(graph: Graph, before: dict, x: str) -> set[int]:
    """The steps on the way from x to the gate: those reading x, or what such a step computes."""
    nodes, on_path, changed = set(), {x}, True
    while changed:
        changed = False
        for name, readers in before.items():
            if name not in on_path:
                continue
            for reader in readers - nodes - {None}:
                nodes.add(reader)
                on_path.update(graph.node(reader).output)
                changed = True
    return nodes


def _region(graph: Graph, gate: int) -> set[int]:
    before = None  # found when a step after the gate reads another tensor (most gates have none)
    region: set[int] = set()
    path = {gate: [gate]}
    frontier = [gate]
    for _ in range(REACH):
        following = []
        for index in frontier:
            output = graph.node(index).output[0]
            for reader in graph.readers(output):
                if reader in path or not _step(graph, reader):
                    continue
                path[reader] = path[index] + [reader]
                node = graph.node(reader)
                others = [n for n in _variables(graph, node) if n != output]
                if others and before is None:
                    before = _before(graph, gate)
                closing = [n for n in others if n in before]
                # x scaled first (0.5 * x) and closed with (1 + erf(...)): the scaling is the idiom's too
                scaled = [graph.producer_of(n) for n in others if n not in before]
                scaled = [p for p in scaled if _constant_scale(graph, p)
                          and _variables(graph, graph.node(p))[0] in before]
                if closing or scaled:
                    region.update(path[reader], scaled)
                    for x in closing + [_variables(graph, graph.node(p))[0] for p in scaled]:
                        region |= _between(graph, before, x)
                    if graph.node(gate).op_type in TRAILING_CONSTANTS:
                        region |= _trailing(graph, reader)
                following.append(reader)
        frontier = following
    return region


def _trailing(graph: Graph, closing: int) -> set[int]:
    """Up to two constant scales or shifts right after the closing op (GELU's 0.5, HardSwish's
    1/6, LayerNorm's gamma and beta)."""
    found, index, scales = set(), closing, 0
    while scales < 2:
        reader = graph.sole_consumer(graph.node(index).output[0])
        if reader is not None and is_default_domain(graph.node(reader)) and graph.node(reader).op_type == "Identity":
            found.add(reader)  # exporter glue between the idiom's ops
        elif _constant_scale(graph, reader):
            found.add(reader)
            scales += 1
        else:
            break
        index = reader
    return found


def _attention_scales(graph: Graph, softmax: int) -> set[int]:
    """Mul/Div by a constant (and a mask Add) between MatMul(q, k) and Softmax."""
    found, name = set(), graph.node(softmax).input[0]
    for _ in range(3):
        index = graph.producer_of(name)
        if index is None:
            return set()
        node = graph.node(index)
        if is_default_domain(node) and node.op_type == "MatMul":
            return found if len(_variables(graph, node)) == 2 else set()
        if not is_default_domain(node) or node.op_type not in CONSTANT_SCALES:
            return set()
        found.add(index)
        variables = _variables(graph, node)
        name = variables[0] if len(variables) == 1 else node.input[0]
    return set()


def find_idioms(graph: Graph, indices_of) -> dict[int, str]:
    """node number -> the idiom it belongs to, over the whole graph. `indices_of(op_types)` lists
    the nodes of those types."""
    idioms: dict[int, str] = {}
    for gate in indices_of(tuple(GATES)):
        name = GATES.get(graph.node(gate).op_type)  # a node replaced since is listed under its old type
        if name is None:
            continue
        for index in _region(graph, gate):
            idioms.setdefault(index, name)
    for softmax in indices_of(("Softmax",)):
        if graph.node(softmax).op_type != "Softmax":
            continue
        for index in _attention_scales(graph, softmax):
            idioms.setdefault(index, "attention scale")
    return idioms
