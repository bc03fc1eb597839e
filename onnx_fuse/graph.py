"""The graph a pass sees: a thin, incrementally maintained view over one ONNX graph (or function
body). It indexes producers and readers once, answers "is this tensor a constant, and what is its
value" (initializers, Constant nodes and constant sub-expressions, evaluated on demand), and
applies edits in place: untouched nodes and weights are never decoded or copied. The manager's
bookkeeping (anchors, collection, commit) is in scope.py, apart from what a pass may call.
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
# integer initializers this small go into shape inference with their values (shapes, axes)
SHAPE_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
SHAPE_VALUES = 64

# Ops whose results shape_value follows, and the types its Cast may go through (float included:
# paddle2onnx takes a Max of two shapes in float32)
SHAPE_ARITHMETIC = frozenset({"Shape", "Identity", "Cast", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Slice",
                              "Gather", "Max", "Min", "Add", "Sub", "Mul"})
SHAPE_CAST_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT,
                              onnx.TensorProto.DOUBLE})

# Side-effect-free ops whose value is a constant when all their inputs are; evaluated on demand
# and removed once nothing reads them.
CONSTANT_FOLDABLE_OPS = frozenset(
    {"Constant", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose",
     "ConstantOfShape", "Mul", "Add", "Sub", "Div", "Sqrt"}
)


# elementwise ops: the result has the rank of the (broadcast) inputs
UNARY_OPS = frozenset({"Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Erf", "Tanh", "Gelu", "Softplus", "Neg",
                       "Abs", "Sqrt", "Exp", "Identity", "Cast", "Clip", "LeakyRelu", "Elu", "Selu", "Mish",
                       "BatchNormalization"})
RANK_KEEPING_OPS = UNARY_OPS | {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}


def is_default_domain(node) -> bool:
    return node.domain in DEFAULT_DOMAINS


# Default-domain ops that have graph attributes; no other default-domain op may carry one.
OPS_WITH_SUBGRAPHS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def subgraphs_of(node):
    """The GraphProto attributes of a node (If branches, Loop and Scan bodies)."""
    if node.domain in DEFAULT_DOMAINS and node.op_type not in OPS_WITH_SUBGRAPHS:
        return
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def free_names(graph) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    defined |= {vi.name for vi in graph.input}
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in subgraphs_of(node):
            used |= free_names(sub)
        defined.update(node.output)
    used.update(vi.name for vi in graph.output)
    return used - defined

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


def recorded_shapes(value_infos) -> dict[str, list]:
    """name -> shape (None for unknown dimensions) of the tensors these ValueInfos give one for."""
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in value_infos if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}


class Graph:
    """One graph or function body, as a pass sees it. What a pass may use, and nothing else:

    reading        node(i)  nodes()  producer_of(name)  readers(name)  sole_consumer(name)  consumer_count(name)
                   read_by_subgraph(name)  declared_names()  inputs  outputs  opset  original_size
    constants      is_constant(name)  constant(name)  constant_type(name)  is_initializer(name)
    shapes         shape(name)  inferred_shape(name)  known_shape(name)  rank(name)  shape_value(name)
    editing        add_constant(values, hint)  set_constant_input(i, slot, values, hint, freed)
                   set_input(i, slot, name)  redirect_reads(name, to)  remove_node(i)  replace_node(i, node)
                   replace_with_nodes(i, nodes)  add_tensor(tensor)  take_output(i, name)
                   fresh_name(hint)

    `container` is a GraphProto or a FunctionProto. `parent` is the graph enclosing a subgraph,
    consulted for names it reads from outside. Nodes are numbered by their position in the
    container; nodes added by a rewrite get the numbers after the last. Edits go to the indexes at
    once and to the container when the manager commits. The indexes hold names and numbers, no
    per-node objects, so that a graph of 100,000s of nodes stays small in memory.
    """

    def __init__(self, container, *, opset: int, ir_version: int, names,
                 parent: "Graph | None" = None, fold_overridable: bool = False,
                 external=None, input_shapes: dict | None = None):
        self.container = container
        self.is_function = isinstance(container, onnx.FunctionProto)
        self.opset = opset
        self.ir_version = ir_version
        self.names = names
        self.parent = parent
        self.fold_overridable = fold_overridable
        self.external = external  # io.ExternalData: where tensors left in files lie, where new ones go
        self.input_shapes = input_shapes or {}  # the sizes the caller gives the graph's inputs
        self.original_size = len(container.node)
        self.size = self.original_size  # node numbers in use
        self.edited: dict[int, onnx.NodeProto] = {}  # nodes that replaced one, or were added
        # name -> the number of the node computing it, or -1 - its position in container.initializer
        # (one dict for both: a large graph has 100,000s of names)
        self.defs: dict[str, int] = {}
        self.consumers: dict[str, int | list[int]] = {}  # one reader's number, or a list of several
        self.by_op: dict[str, list[int]] = defaultdict(list)  # default-domain nodes by op type
        for index, node in enumerate(container.node):
            self._index(index, node)
        if self.is_function:
            self.inputs = set(container.input)
            self.outputs = set(container.output)
        else:
            for position, tensor in enumerate(container.initializer):  # new ones are appended
                self.defs[tensor.name] = -1 - position
            self.inputs = {vi.name for vi in container.input}
            self.outputs = {vi.name for vi in container.output}
        # IR < 4 lists every initializer of the main graph among its inputs.
        self.initializers_are_inputs = not self.is_function and parent is None and ir_version < 4
        # where new constants are Constant nodes: a function, and a subgraph before IR 4 (whose
        # initializers would have to be among its inputs, which an If or Loop fixes)
        self.constants_as_nodes = self.is_function or (parent is not None and ir_version < 4)
        self.removed: set[int] = set()
        self.maybe_unused: list[str] = []  # names that lost a reader (may repeat)
        self.unused_candidates: list[str] = []  # initializers to check at commit (may repeat)
        self.vanished: set[str] = set()
        self.new_initializers: list[str] = []
        self.new_constant_nodes: list[onnx.NodeProto] = []
        self.placed_after: dict[int, list[int]] = {}
        self._to_release: list[str] = []
        self.changed = False
        self._constants: dict[str, np.ndarray | None] = {}
        self._value_info = None
        self._ranks: dict[str, int | None] = {}
        self._inferred = None
        self.generation = 0  # the manager's round: shape inference is redone for a later one
        self._inferred_at = -1

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
            self._add_read(name, index)
        for name in node.output:
            if name:
                self.defs[name] = index

    def _add_read(self, name: str, index: int):
        readers = self.consumers.get(name)
        if readers is None:
            self.consumers[name] = index
        elif isinstance(readers, int):
            self.consumers[name] = [readers, index]
        else:
            readers.append(index)

    def _drop_read(self, name: str, index: int):
        readers = self.consumers[name]
        if isinstance(readers, int):
            del self.consumers[name]
        else:
            readers.remove(index)
            if len(readers) == 1:
                self.consumers[name] = readers[0]
        self._became_unread(name)

    def _unindex(self, index, node):
        for name in self._reads(node):
            self._drop_read(name, index)
        for name in node.output:
            if name and self.defs.get(name) == index:
                del self.defs[name]

    def readers(self, name: str) -> list[int]:
        """The numbers of the nodes reading `name` (a node reading it twice is listed twice)."""
        readers = self.consumers.get(name)
        if readers is None:
            return []
        return [readers] if isinstance(readers, int) else list(readers)

    def read_by_subgraph(self, name: str) -> bool:
        """Whether a subgraph (an If branch, a Loop body) reads `name` from this scope by name."""
        readers = self.readers(name)  # one entry per read, through subgraphs too
        return len(readers) != sum(list(self.node(r).input).count(name) for r in set(readers))

    def declared_names(self) -> set:
        """The names the graph declares apart from its nodes: inputs, outputs, initializers (sparse
        ones too) and the tensors it records a type for (value_info)."""
        names = set(self.inputs) | set(self.outputs)
        if not self.is_function:
            names.update(t.name for t in self.container.initializer)
            names.update(t.values.name for t in self.container.sparse_initializer)
            names.update(vi.name for vi in self.container.value_info)
        return names

    def nodes(self):
        """Every node now in the graph, by number (removed ones left out)."""
        for index in range(self.size):
            if index not in self.removed:
                yield self.node(index)

    def node(self, index: int):
        node = self.edited.get(index)
        return node if node is not None else self.container.node[index]

    def fresh_name(self, hint: str) -> str:
        """A name no tensor or node of the model has."""
        return self.names.fresh(hint)

    def tensor(self, name: str):
        """The TensorProto of an initializer."""
        return self.container.initializer[-1 - self.defs[name]]

    def is_initializer(self, name: str) -> bool:
        return self.defs.get(name, 0) < 0

    def producer_of(self, name: str):
        """Index of the node that computes `name`, or None (input, initializer, outer scope)."""
        index = self.defs.get(name)
        return index if index is not None and index >= 0 else None

    def consumer_count(self, name: str) -> int:
        """How many node inputs read `name`, counting a graph output as one more reader."""
        readers = self.consumers.get(name)
        count = 0 if readers is None else 1 if isinstance(readers, int) else len(readers)
        return count + (1 if name in self.outputs else 0)

    def sole_consumer(self, name: str):
        """The one node reading `name`, or None when it has several readers or is an output."""
        readers = self.consumers.get(name)
        if isinstance(readers, int) and name not in self.outputs:
            return readers
        return None

    # ---- constants ---------------------------------------------------------------------

    def is_overridable(self, name: str) -> bool:
        """An initializer listed as a graph input can be replaced at run time (IR version >= 4)."""
        return (name in self.inputs and self.is_initializer(name) and not self.initializers_are_inputs
                and not self.fold_overridable)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is a constant of this scope, else None."""
        if not name:
            return None
        if name in self._constants:
            return self._constants[name]
        if self.is_initializer(name):  # read again when asked: cheap, and not kept in memory
            if self.is_overridable(name):
                return None
            tensor = self.tensor(name)
            return self.external.read(tensor) if self.external is not None else tensor_values(tensor)
        value = self._compute_constant(name)
        if value is None or value.nbytes <= CACHED_CONSTANT_BYTES:
            self._constants[name] = value
        return value

    def constant_type(self, name: str) -> tuple[tuple, np.dtype] | None:
        """(shape, dtype) of a constant, read from an initializer without decoding it."""
        if self.is_initializer(name) and not self.is_overridable(name):
            tensor = self.tensor(name)
            return tuple(tensor.dims), helper.tensor_dtype_to_np_dtype(tensor.data_type)
        value = self.constant(name)
        return None if value is None else (value.shape, value.dtype)

    def is_constant(self, name: str) -> bool:
        """Whether `name` is a constant, without decoding large initializers."""
        if not name:
            return False
        if name in self._constants:
            return self._constants[name] is not None
        if self.is_initializer(name):
            return not self.is_overridable(name)
        index = self.producer_of(name)
        if index is None and (name in self.inputs or self.parent is None):
            return False
        return self.constant(name) is not None

    def _compute_constant(self, name):
        index = self.producer_of(name)
        if index is None:
            if name in self.inputs or self.parent is None:
                return None
            return self.parent.constant(name)
        node = self.node(index)
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
            graph = self.container
            self._value_info = {} if self.is_function else recorded_shapes(
                list(graph.input) + list(graph.output) + list(graph.value_info))
            self._value_info.update((n, list(s)) for n, s in self.input_shapes.items() if n in self.inputs)
        return self._value_info.get(name)

    def inferred_shape(self, name: str) -> list | None:
        """The shape of `name` by onnx's shape inference over the main graph as it stands (None
        for unknown dimensions, or when inference cannot tell). The weights go in by their
        types (small integer ones with their values). Run when first asked, and again when
        asked in a later round of the manager for a tensor it did not cover or left some sizes
        of (a rewrite of an earlier round made it, or changed what computes it: a Reshape to a
        computed shape that became an Add): so the last round sees the graph as a second run
        would, and running twice gives what running once gives."""
        cached = self._inferred.get(name) if self._inferred is not None else None
        if self._inferred is None or ((cached is None or None in cached) and self._inference_is_stale()):
            self._inferred = {}
            if self.parent is None and not self.is_function:
                self._inferred = self._infer_shapes()
            self._inferred_at = self.generation
            self._ranks = {n: r for n, r in self._ranks.items() if r is not None}  # may be known now
        return self._inferred.get(name)

    def _inference_is_stale(self) -> bool:
        """Whether a round of the manager has changed the graph since shape inference last ran:
        what it left unknown (a shape, a size, a rank) may be known now."""
        return self._inferred_at != self.generation

    def known_shape(self, name: str) -> list | None:
        """The shape the model records for `name`, else what shape inference finds."""
        return self.shape(name) or self.inferred_shape(name)

    def _infer_shapes(self) -> dict:
        graph = self.container
        valued, typed = [], []  # initializers that go in with their values, and with their types only
        for tensor in graph.initializer:
            name = tensor.name
            if not self.is_initializer(name) or self.is_overridable(name) or name not in self.consumers:
                continue  # an initializer nothing reads any more may have given up its data already
            if tensor.data_type in SHAPE_TYPES and np.prod(tensor.dims) <= SHAPE_VALUES:
                # a Reshape's shape, a Squeeze's axes: inference needs the values, and they are small
                valued.append(numpy_helper.from_array(self.constant(name), name))
            else:
                typed.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
        known = {t.name for t in valued} | {vi.name for vi in typed}
        inputs = [helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, self.input_shapes[vi.name])
                  if vi.name in self.input_shapes and vi.type.HasField("tensor_type") else vi
                  for vi in graph.input if vi.name not in known]  # before IR 4 initializers are listed too
        skeleton = helper.make_graph([self.node(i) for i in self._order() if i not in self.removed], "shapes",
                                     inputs + typed, list(graph.output), valued)
        model = helper.make_model(skeleton, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = max(self.ir_version, 4)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception as error:  # inference is a help here, never a requirement
            log.debug("shape inference failed: %s", error)
            return {}
        return recorded_shapes(inferred.graph.value_info)

    def shape_value(self, name: str, depth: int = 24) -> tuple | None:
        """The entries of a small integer vector computed by shape arithmetic (Shape, Slice,
        Gather, Concat, Squeeze/Unsqueeze/Reshape, Cast, Max/Min/Add/Sub/Mul of such vectors and
        constants, looked for `depth` nodes back), with None for an entry that depends on a size the
        model does not record (a dynamic batch); None when `name` is not such a vector. Exporters
        size constants so: Expand(value, Concat(Shape(x)[0], C, 1, W)) is a border of width W."""
        if self.is_constant(name):
            type_ = self.constant_type(name)
            if type_ is None or len(type_[0]) > 1 or int(np.prod(type_[0])) > SHAPE_VALUES:
                return None
            value = self.constant(name)
            if value.dtype.kind not in "iuf" or not np.all(np.isfinite(value)) or np.any(value != np.round(value)):
                return None
            return tuple(int(v) for v in value.reshape(-1))
        index = self.producer_of(name)
        if index is None or depth == 0:
            return None
        node = self.node(index)
        if not is_default_domain(node) or node.op_type not in SHAPE_ARITHMETIC or any(
                a.ref_attr_name for a in node.attribute):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Shape":
            return self._shape_entries(node.input[0], attrs.get("start", 0), attrs.get("end"))
        if op == "Cast" and attrs.get("to") not in SHAPE_CAST_TYPES:
            return None
        if op in ("Slice", "Gather", "Reshape", "Unsqueeze", "Squeeze"):
            data = self.shape_value(node.input[0], depth - 1)
            if data is None:
                return None
            if op == "Slice":
                return self._slice_entries(node, attrs, data)
            if op == "Gather":
                indices = self.constant(node.input[1]) if self.is_constant(node.input[1]) else None
                if indices is None or attrs.get("axis", 0) != 0 or indices.dtype.kind not in "iu":
                    return None
                if np.any(indices < -len(data)) or np.any(indices >= len(data)):
                    return None
                return tuple(data[int(i)] for i in indices.reshape(-1))
            return data  # these keep the order of the entries, and shape arithmetic is flat
        entries = [self.shape_value(n, depth - 1) for n in node.input if n]
        if any(e is None for e in entries) or not entries:
            return None
        if op == "Cast" and attrs["to"] == onnx.TensorProto.FLOAT and any(
                v is not None and abs(v) > 1 << 24 for v in entries[0]):
            return None  # float32 would round it
        if op in ("Identity", "Cast"):
            return entries[0]
        if op == "Concat":
            return tuple(v for e in entries for v in e)
        length = max(len(e) for e in entries)
        if any(len(e) not in (1, length) for e in entries):
            return None
        combine = {"Max": max, "Min": min, "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b,
                   "Mul": lambda a, b: a * b}[op]
        result = []
        for position in range(length):
            values = [e[position if len(e) > 1 else 0] for e in entries]
            if any(v is None for v in values):
                result.append(None)
                continue
            total = values[0]
            for v in values[1:]:
                total = combine(total, v)
            result.append(total)
        return tuple(result)

    def _shape_entries(self, name: str, start: int, end: int | None) -> tuple | None:
        """Shape(name)[start:end], None where a dimension is not known."""
        type_ = self.constant_type(name) if self.is_constant(name) else None
        dims = list(type_[0]) if type_ is not None else self.known_shape(name)
        if dims is None:
            rank = self.rank(name)
            if rank is None:
                return None
            dims = [None] * rank
        dims = [d if isinstance(d, (int, np.integer)) and d >= 0 else None for d in dims]
        return tuple(int(d) if d is not None else None for d in dims[start:end])

    def _slice_entries(self, node, attrs, data: tuple) -> tuple | None:
        if self.opset < 10:
            starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes", [0]), [1]
        else:
            values = [self.constant(n) if n and self.is_constant(n) else None for n in node.input[1:5]]
            if any(n and v is None for n, v in zip(node.input[1:5], values)):
                return None
            starts, ends = values[0], values[1]
            axes = values[2] if len(values) > 2 and values[2] is not None else [0]
            steps = values[3] if len(values) > 3 and values[3] is not None else [1]
        if starts is None or ends is None or len(starts) != 1 or list(axes) not in ([0], [-1]) or list(steps) != [1]:
            return None
        return data[int(starts[0]):int(ends[0])]  # ONNX clamps as Python slicing does, for step 1

    def rank(self, name: str, depth: int = 32) -> int | None:
        """The rank of `name` where the model records it, shape inference finds it, or the nodes
        computing it fix it (looked for `depth` nodes back). Exact rewrites keep every tensor's
        rank, so what is found is kept; what is not found is looked for again in a later round of
        the manager (as inferred_shape does), when a rewrite may have made it known."""
        if name not in self._ranks or (self._ranks[name] is None and self._inference_is_stale()):
            self._ranks[name] = self._rank(name, depth)
        return self._ranks[name]

    def _rank(self, name: str, depth: int) -> int | None:
        shape = self.known_shape(name)
        if shape is not None:
            return len(shape)
        value = self.constant(name)
        if value is not None:
            return value.ndim
        index = self.producer_of(name)
        if index is None or depth == 0 or not is_default_domain(self.node(index)):
            return None
        node = self.node(index)
        if node.op_type in ("Gemm", "Flatten"):
            return 2
        if node.op_type == "Reshape":
            shape = self.constant(node.input[1])
            return None if shape is None else int(shape.size)
        if node.op_type == "Transpose" and not any(a.ref_attr_name for a in node.attribute):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            return len(perm) if perm else self.rank(node.input[0], depth - 1)
        if node.op_type == "MatMul":
            ranks = [self.rank(n, depth - 1) for n in node.input[:2]]
            return max(ranks) if None not in ranks and min(ranks) >= 2 else None
        if node.op_type in RANK_KEEPING_OPS:
            ranks = [self.rank(n, depth - 1) for n in node.input[:1 if node.op_type in UNARY_OPS else 2]]
            return max(ranks) if ranks and None not in ranks else None
        return None

    # ---- edits -------------------------------------------------------------------------

    def add_constant(self, values: np.ndarray, hint: str) -> str:
        """A new constant tensor with a fresh name: an initializer, or a Constant node in a function."""
        name = self.names.fresh(hint)
        values = np.asarray(values)
        if self.constants_as_nodes:
            tensor = numpy_helper.from_array(values, name)
            self.new_constant_nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                                            name=self.names.fresh(name + "_const")))
            if values.nbytes <= CACHED_CONSTANT_BYTES:
                self._constants[name] = values
        else:
            # written straight into the graph: no intermediate TensorProto to copy
            tensor = self.container.initializer.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
            tensor.dims.extend(values.shape)
            self._write_tensor(tensor, values)
            self.defs[name] = -len(self.container.initializer)
            self.new_initializers.append(name)
        self.changed = True
        return name

    def set_constant_input(self, index: int, slot: int, values: np.ndarray, hint: str, freed=()):
        """Make input `slot` of node `index` a constant with these values, written over an
        initializer where one is free to take them: the input's own, when only this node reads it,
        or one of `freed`, (name, node) pairs of initializers only that node reads and that the
        rewrite is about to remove. It must be of the same shape and dtype, and not a graph input.
        It keeps its name, and no tensor is added; otherwise a new constant is."""
        node = self.node(index)
        old = node.input[slot] if slot < len(node.input) else ""
        dtype = helper.np_dtype_to_tensor_dtype(values.dtype)
        for name, reader in [(old, index), *freed]:
            if not (self.is_initializer(name) and self.sole_consumer(name) == reader and name not in self.inputs
                    and list(self.node(reader).input).count(name) == 1):
                continue
            tensor = self.tensor(name)
            if tuple(tensor.dims) == values.shape and tensor.data_type == dtype:
                self._write_tensor(tensor, values)
                self._constants.pop(name, None)
                if name != old:
                    self.set_input(index, slot, name)
                self.changed = True
                return
        self.set_input(index, slot, self.add_constant(values, hint))

    def _write_tensor(self, tensor, values: np.ndarray):
        """Give an initializer (already named and typed) these values: in memory, or to the
        external store when it takes them."""
        if self.external is not None and self.external.takes(values.nbytes, main_graph=self.parent is None):
            self.external.store(tensor, values)
            return
        if self.external is not None:
            self.external.held.pop(tensor.name, None)
        for field in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                      "external_data"):
            tensor.ClearField(field)
        tensor.ClearField("data_location")
        tensor.raw_data = (values.byteswap() if sys.byteorder == "big" else values).tobytes()

    def set_input(self, index: int, slot: int, name: str):
        node = self.node(index)
        while len(node.input) <= slot:
            node.input.append("")
        old = node.input[slot]
        if old:
            self._drop_read(old, index)
        node.input[slot] = name
        if name:
            self._add_read(name, index)
        self.changed = True

    def redirect_reads(self, name: str, to: str):
        """Every node input that reads `name` reads `to` instead (not reads inside subgraphs)."""
        for reader in dict.fromkeys(self.readers(name)):
            for slot, read in enumerate(self.node(reader).input):
                if read == name:
                    self.set_input(reader, slot, to)

    def remove_node(self, index: int):
        node = self.node(index)
        self._unindex(index, node)
        self.vanished.update(name for name in node.output if name)
        self.removed.add(index)
        self.changed = True

    def replace_node(self, index: int, new_node):
        """Put `new_node` where node `index` stands (same position, so order stays topological)."""
        old = self.node(index)
        self._unindex(index, old)
        self.vanished.update(name for name in old.output if name)
        self.edited[index] = new_node
        self._index(index, new_node)
        self.vanished.difference_update(new_node.output)
        self.changed = True

    def replace_with_nodes(self, index: int, new_nodes: list):
        """Put several nodes, in order, where node `index` stands."""
        self.replace_node(index, new_nodes[0])
        for node in new_nodes[1:]:
            added = self.size
            self.size += 1
            self.edited[added] = node
            self._index(added, node)
            self.vanished.difference_update(node.output)
            self.placed_after.setdefault(index, []).append(added)

    def add_tensor(self, tensor):
        """Add an existing TensorProto (its name already unique in the model) as a constant."""
        if self.constants_as_nodes:
            self.new_constant_nodes.append(helper.make_node("Constant", [], [tensor.name], value=tensor,
                                                            name=self.names.fresh(tensor.name + "_const")))
        else:
            self.container.initializer.add().CopyFrom(tensor)
            self.defs[tensor.name] = -len(self.container.initializer)
            self.new_initializers.append(tensor.name)
        self.changed = True

    def take_output(self, index: int, name: str, slot: int = 0):
        """Make node `index` compute `name` (whose producer was just removed) as its output `slot`."""
        node = self.node(index)
        old = node.output[slot]
        del self.defs[old]
        self.vanished.add(old)
        node.output[slot] = name
        self.defs[name] = index
        self.vanished.discard(name)
        self.changed = True

    def _became_unread(self, name: str):
        self.maybe_unused.append(name)
        self._to_release.append(name)

    def _unused(self, name: str) -> bool:
        return name not in self.consumers and name not in self.outputs

    def _order(self) -> list[int]:
        """Node numbers in graph order: each node, then the nodes placed after it (and after those)."""
        order = []
        stack = list(range(self.original_size - 1, -1, -1))
        while stack:
            i = stack.pop()
            order.append(i)
            stack.extend(reversed(self.placed_after.get(i, ())))
        return order
