"""A thin, incrementally maintained view over one ONNX graph (or function body) for rewriting.

The view indexes producers and consumers once, answers "is this tensor a constant, and what is
its value" (initializers, Constant nodes and constant sub-expressions, evaluated on demand), and
applies edits to the protobuf in place: untouched nodes and weights are never decoded or copied.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .io import tensor_values


log = logging.getLogger("onnx_fuse")

DEFAULT_DOMAINS = ("", "ai.onnx")
CACHED_CONSTANT_BYTES = 1 << 20  # larger constants are decoded again when needed, not kept

# Side-effect-free ops whose value is a constant when all their inputs are; evaluated on demand
# and removed once nothing reads them.
CONSTANT_FOLDABLE_OPS = frozenset(
    {"Constant", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose",
     "ConstantOfShape", "Mul", "Add", "Sub", "Div", "Sqrt"}
)


def is_default_domain(node) -> bool:
    return node.domain in DEFAULT_DOMAINS


def subgraphs_of(node):
    """The GraphProto attributes of a node (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def free_names(graph) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    defined |= {vi.name for vi in graph.input}
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in subgraphs_of(node):
            used |= free_names(sub)
        defined.update(node.output)
    used.update(vi.name for vi in graph.output)
    return used - defined


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name in the model, its subgraphs and its functions."""
    names: set[str] = set()

    def visit_nodes(nodes):
        for node in nodes:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
            for sub in subgraphs_of(node):
                visit_graph(sub)

    def visit_graph(graph):
        names.update(t.name for t in graph.initializer)
        names.update(vi.name for vi in graph.input)
        names.update(vi.name for vi in graph.output)
        visit_nodes(graph.node)

    visit_graph(model.graph)
    for function in model.functions:
        names.update(function.input)
        names.update(function.output)
        visit_nodes(function.node)
    return names


class NameScope:
    """Fresh, deterministic names that collide with nothing in the model."""

    def __init__(self, taken: set[str]):
        self.taken = taken

    def fresh(self, hint: str) -> str:
        name, n = hint, 0
        while name in self.taken:
            n += 1
            name = f"{hint}_{n}"
        self.taken.add(name)
        return name


def constant_node_value(node) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.ref_attr_name:
            return None
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


class GraphView:
    """Producer/consumer index and constant lookup over one graph or function body.

    `container` is a GraphProto or a FunctionProto. `parent` is the view of the enclosing graph,
    consulted for names a subgraph reads from outside.
    """

    def __init__(self, container, *, opset: int, ir_version: int, names: NameScope,
                 parent: "GraphView | None" = None, fold_overridable: bool = False,
                 external=None):
        self.container = container
        self.is_function = isinstance(container, onnx.FunctionProto)
        self.opset = opset
        self.ir_version = ir_version
        self.names = names
        self.parent = parent
        self.fold_overridable = fold_overridable
        self.external = external  # io.ExternalData: where tensors left in files lie, where new ones go
        self.nodes = list(container.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        self.by_op: dict[str, list[int]] = defaultdict(list)  # default-domain nodes by op type
        for index, node in enumerate(self.nodes):
            self._index(index, node)
        if self.is_function:
            self.initializers = {}
            self.inputs = set(container.input)
            self.outputs = set(container.output)
        else:
            self.initializers = {t.name: t for t in container.initializer}
            self.inputs = {vi.name for vi in container.input}
            self.outputs = {vi.name for vi in container.output}
        # IR < 4 lists every initializer of the main graph among its inputs.
        self.initializers_are_inputs = not self.is_function and parent is None and ir_version < 4
        self.removed: set[int] = set()
        self.maybe_unused: set[str] = set()
        self.vanished: set[str] = set()
        self.new_initializers: list[str] = []
        self.new_constant_nodes: list[onnx.NodeProto] = []
        self.placed_after: dict[int, list[int]] = {}
        self.replaced: set[int] = set()
        self._to_release: list[str] = []
        self.changed = False
        self._constants: dict[str, np.ndarray | None] = {}
        self._value_info = None

    # ---- index -------------------------------------------------------------------------
    def _reads(self, node):
        names = [name for name in node.input if name]
        for sub in subgraphs_of(node):
            names.extend(sorted(free_names(sub)))
        return names

    def _index(self, index, node):
        if node.domain in DEFAULT_DOMAINS:
            self.by_op[node.op_type].append(index)
        for name in self._reads(node):
            self.consumers[name].append(index)
        for name in node.output:
            if name:
                self.producer[name] = index

    def _unindex(self, index, node):
        for name in self._reads(node):
            self.consumers[name].remove(index)
            self._became_unread(name)
        for name in node.output:
            if name and self.producer.get(name) == index:
                del self.producer[name]

    def indices_of(self, op_types) -> list[int]:
        """Indices of the default-domain nodes of these op types, in graph order (a node replaced
        since may be listed under its old type too: check its op_type)."""
        found = set()
        for op in op_types:
            found.update(self.by_op.get(op, ()))
        return sorted(found)

    def node(self, index: int):
        return self.nodes[index]

    def producer_of(self, name: str):
        """Index of the node that computes `name`, or None (input, initializer, outer scope)."""
        return self.producer.get(name)

    def consumer_count(self, name: str) -> int:
        """How many node inputs read `name`, counting a graph output as one more reader."""
        return len(self.consumers.get(name, ())) + (1 if name in self.outputs else 0)

    def sole_consumer(self, name: str):
        """The one node reading `name`, or None when it has several readers or is an output."""
        readers = self.consumers.get(name, ())
        if len(readers) == 1 and name not in self.outputs:
            return readers[0]
        return None

    # ---- constants ---------------------------------------------------------------------
    def is_overridable(self, name: str) -> bool:
        """An initializer listed as a graph input can be replaced at run time (IR version >= 4)."""
        return (name in self.inputs and name in self.initializers and not self.initializers_are_inputs
                and not self.fold_overridable)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is a constant of this scope, else None."""
        if not name:
            return None
        if name in self._constants:
            return self._constants[name]
        value = self._compute_constant(name)
        if value is None or value.nbytes <= CACHED_CONSTANT_BYTES:
            self._constants[name] = value
        return value

    def constant_type(self, name: str) -> tuple[tuple, np.dtype] | None:
        """(shape, dtype) of a constant, read from an initializer without decoding it."""
        if name in self.initializers and not self.is_overridable(name):
            tensor = self.initializers[name]
            return tuple(tensor.dims), helper.tensor_dtype_to_np_dtype(tensor.data_type)
        value = self.constant(name)
        return None if value is None else (value.shape, value.dtype)

    def is_constant(self, name: str) -> bool:
        """Whether `name` is a constant, without decoding large initializers."""
        if not name:
            return False
        if name in self._constants:
            return self._constants[name] is not None
        if name in self.initializers:
            return not self.is_overridable(name)
        index = self.producer.get(name)
        if index is None and (name in self.inputs or self.parent is None):
            return False
        return self.constant(name) is not None

    def _compute_constant(self, name):
        if name in self.initializers:
            if self.is_overridable(name):
                return None
            tensor = self.initializers[name]
            return self.external.read(tensor) if self.external is not None else tensor_values(tensor)
        index = self.producer.get(name)
        if index is None:
            if name in self.inputs or self.parent is None:
                return None
            return self.parent.constant(name)
        node = self.nodes[index]
        if not is_default_domain(node) or node.op_type not in CONSTANT_FOLDABLE_OPS:
            return None
        if node.op_type == "Constant":
            return constant_node_value(node)
        values = []
        for input_name in node.input:
            value = self.constant(input_name) if input_name else None
            if input_name and value is None:
                return None
            values.append(value)
        return self._evaluate(node, values, name)

    def _evaluate(self, node, values, name):
        """Evaluate one pure node on constant inputs with onnx's reference implementation."""
        from onnx.reference import ReferenceEvaluator

        if any(attr.ref_attr_name for attr in node.attribute):
            return None
        feeds = {n: v for n, v in zip(node.input, values) if n}
        # a one-node model, so that the reference picks the operator version of our opset
        graph = helper.make_graph([node], "constant", [helper.make_tensor_value_info(n, 0, None) for n in feeds],
                                  [helper.make_tensor_value_info(n, 0, None) for n in node.output if n])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception as error:  # a malformed constant expression is simply not a constant
            log.debug("could not evaluate %s %s: %s", node.op_type, node.name, error)
            return None
        return np.asarray(results[[n for n in node.output if n].index(name)])

    # ---- shapes ------------------------------------------------------------------------
    def shape(self, name: str) -> list | None:
        """The shape the model records for `name` (None for unknown dimensions), if it does."""
        if self._value_info is None:
            self._value_info = {}
            if not self.is_function:
                for vi in list(self.container.input) + list(self.container.output) + list(self.container.value_info):
                    if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                        self._value_info[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                                     for d in vi.type.tensor_type.shape.dim]
        return self._value_info.get(name)

    def rank(self, name: str) -> int | None:
        """The rank of `name` where the model records it, or where its producer fixes it."""
        shape = self.shape(name)
        if shape is not None:
            return len(shape)
        value = self.constant(name)
        if value is not None:
            return value.ndim
        index = self.producer.get(name)
        if index is not None:
            node = self.nodes[index]
            if is_default_domain(node) and node.op_type in ("Gemm", "Flatten"):
                return 2
            if is_default_domain(node) and node.op_type == "Reshape":
                shape = self.constant(node.input[1])
                return None if shape is None else int(shape.size)
        return None

    # ---- edits -------------------------------------------------------------------------
    def add_constant(self, values: np.ndarray, hint: str) -> str:
        """A new constant tensor with a fresh name: an initializer, or a Constant node in a function."""
        name = self.names.fresh(hint)
        values = np.asarray(values)
        if self.is_function:
            tensor = numpy_helper.from_array(values, name)
            self.new_constant_nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                                            name=self.names.fresh(name + "_const")))
        else:
            # written straight into the graph: no intermediate TensorProto to copy
            tensor = self.container.initializer.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
            tensor.dims.extend(values.shape)
            if self.external is not None and self.external.takes(values.nbytes, main_graph=self.parent is None):
                self.external.store(tensor, values)
            else:
                tensor.raw_data = (values.byteswap() if sys.byteorder == "big" else values).tobytes()
            self.initializers[name] = tensor
            self.new_initializers.append(name)
        if values.nbytes <= CACHED_CONSTANT_BYTES:
            self._constants[name] = values
        self.changed = True
        return name

    def set_input(self, index: int, slot: int, name: str):
        node = self.nodes[index]
        while len(node.input) <= slot:
            node.input.append("")
        old = node.input[slot]
        if old:
            self.consumers[old].remove(index)
            self._became_unread(old)
        node.input[slot] = name
        if name:
            self.consumers[name].append(index)
        self.changed = True

    def remove_node(self, index: int):
        node = self.nodes[index]
        self._unindex(index, node)
        self.vanished.update(name for name in node.output if name)
        self.removed.add(index)
        self.changed = True

    def replace_node(self, index: int, new_node):
        """Put `new_node` where node `index` stands (same position, so order stays topological)."""
        old = self.nodes[index]
        self._unindex(index, old)
        self.vanished.update(name for name in old.output if name)
        self.nodes[index] = new_node
        self.replaced.add(index)
        self._index(index, new_node)
        self.vanished.difference_update(new_node.output)
        self.changed = True

    def replace_with_nodes(self, index: int, new_nodes: list):
        """Put several nodes, in order, where node `index` stands."""
        self.replace_node(index, new_nodes[0])
        for node in new_nodes[1:]:
            self.nodes.append(node)
            self._index(len(self.nodes) - 1, node)
            self.vanished.difference_update(node.output)
            self.placed_after.setdefault(index, []).append(len(self.nodes) - 1)

    def add_tensor(self, tensor):
        """Add an existing TensorProto (its name already unique in the model) as a constant."""
        if self.is_function:
            self.new_constant_nodes.append(helper.make_node("Constant", [], [tensor.name], value=tensor,
                                                            name=self.names.fresh(tensor.name + "_const")))
        else:
            self.container.initializer.add().CopyFrom(tensor)
            self.initializers[tensor.name] = self.container.initializer[-1]
            self.new_initializers.append(tensor.name)
        self.changed = True

    @property
    def placed_by_insert(self) -> set:
        return {i for placed in self.placed_after.values() for i in placed}

    def take_output(self, index: int, name: str):
        """Make node `index` compute `name` (whose producer was just removed) as its output 0."""
        node = self.nodes[index]
        old = node.output[0]
        del self.producer[old]
        self.vanished.add(old)
        node.output[0] = name
        self.producer[name] = index
        self.vanished.discard(name)
        self.changed = True

    def sweep(self):
        """Mark every initializer for the unused check at the next commit (after subgraph edits)."""
        self.maybe_unused.update(self.initializers)
        self.changed = True

    def _removable_initializer(self, name: str) -> bool:
        return (name in self.initializers and self._unused(name)
                and (name not in self.inputs or self.initializers_are_inputs))

    def _became_unread(self, name: str):
        self.maybe_unused.add(name)
        self._to_release.append(name)

    def release_unused(self):
        """Free the data of initializers nothing reads any more (they go at the next commit), so
        that a large model does not hold old and folded weights at once."""
        for name in self._to_release:
            if self._removable_initializer(name) and self.producer.get(name) is None:
                self.initializers[name].ClearField("raw_data")
        self._to_release.clear()

    def sweep(self):
        """Mark every initializer for the unused check at the next commit (after subgraph edits)."""
        self.maybe_unused.update(self.initializers)
        self.changed = True

    # ---- commit ------------------------------------------------------------------------
    def _unused(self, name: str) -> bool:
        return not self.consumers.get(name) and name not in self.outputs

    def commit(self) -> bool:
        """Write the edits back: drop what became unused, rebuild the node list. True if changed."""
        if not self.changed:
            return False
        dead = set()
        pending = list(self.maybe_unused) + list(self.new_initializers)
        while pending:
            name = pending.pop()
            if not self._unused(name):
                continue
            index = self.producer.get(name)
            if index is not None:
                node = self.nodes[index]
                if (index not in self.removed and is_default_domain(node)
                        and node.op_type in CONSTANT_FOLDABLE_OPS
                        and all(self._unused(out) for out in node.output if out)):
                    self.remove_node(index)
                    pending.extend(n for n in node.input if n)
            elif self._removable_initializer(name):
                dead.add(name)
        # constants made in this round and already replaced by a later fold
        self.new_constant_nodes = [n for n in self.new_constant_nodes if not self._unused(n.output[0])]
        self._write_nodes()
        if self.is_function:
            return True
        graph = self.container
        if dead:
            prune(graph.initializer, lambda t: t.name not in dead)
        if self.initializers_are_inputs:
            listed_inputs = [vi for vi in graph.input if vi.name not in dead]
            listed_inputs += [helper.make_tensor_value_info(n, self.initializers[n].data_type,
                                                            list(self.initializers[n].dims))
                              for n in self.new_initializers if n not in dead]
            del graph.input[:]
            graph.input.extend(listed_inputs)
        vanished = self.vanished - set(self.producer)
        if vanished:
            prune(graph.value_info, lambda vi: vi.name not in vanished)
        return True

    def _write_nodes(self):
        nodes = self.container.node
        if self.placed_after or self.new_constant_nodes:
            order = []
            for i in range(len(self.nodes)):
                if i in self.placed_by_insert:
                    continue
                order.append(i)
                order.extend(self.placed_after.get(i, ()))
            kept = self.new_constant_nodes + [self.nodes[i] for i in order if i not in self.removed]
            del nodes[:]
            nodes.extend(kept)
            return
        # same positions: copy in the replaced nodes, then drop the removed ones
        for i in self.replaced - self.removed:
            nodes[i].CopyFrom(self.nodes[i])
        removed = self.removed
        prune(nodes, lambda _node, i: i not in removed, with_index=True)


def prune(repeated, keep, with_index: bool = False):
    """Delete the items of a repeated protobuf field that `keep` rejects, without copying the rest
    when only a few go (each deletion shifts pointers; many deletions rebuild the field)."""
    doomed = [i for i, item in enumerate(repeated) if not (keep(item, i) if with_index else keep(item))]
    if not doomed:
        return
    if len(doomed) * len(repeated) <= 4_000_000:
        for i in reversed(doomed):
            del repeated[i]
        return
    doomed_set = set(doomed)
    kept = [item for i, item in enumerate(repeated) if i not in doomed_set]
    del repeated[:]
    repeated.extend(kept)
