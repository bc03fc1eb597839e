"""The manager's side of a graph: fresh names for the whole model, and a GraphScope that adds to
the pass-facing Graph what only the manager does: list the anchors of a pass, drop what became
unused between rounds, and write the edits back to the protobuf once at the end.
"""

from __future__ import annotations

from array import array

import numpy as np
import onnx
from onnx import helper

from .graph import CONSTANT_FOLDABLE_OPS, Graph, is_default_domain, subgraphs_of


def name_hashes(model: onnx.ModelProto) -> np.ndarray:
    """The hashes of every tensor and node name in the model, its subgraphs and its functions,
    sorted."""
    hashes = array("q")

    def add(names):
        hashes.extend(map(hash, names))

    def visit_nodes(nodes):
        for node in nodes:
            add(node.input)
            add(node.output)
            hashes.append(hash(node.name))
            for sub in subgraphs_of(node):
                visit_graph(sub)

    def visit_graph(graph):
        for field in (graph.initializer, graph.input, graph.output, graph.value_info):
            add(item.name for item in field)
        add(sparse.values.name for sparse in graph.sparse_initializer)
        visit_nodes(graph.node)

    visit_graph(model.graph)
    for function in model.functions:
        add(function.input)
        add(function.output)
        visit_nodes(function.node)
    values = np.frombuffer(hashes, dtype=np.int64)
    values.sort()  # in place, in the array's own buffer
    return values


class NameScope:
    """Fresh, deterministic names that collide with nothing in the model.

    The model's names are held as a sorted array of their hashes, not as strings (a large graph
    has hundreds of thousands): a name whose hash is there counts as taken, so a hash collision
    only skips a candidate, never reuses a name.
    """

    def __init__(self, hashes: np.ndarray):
        self.hashes = hashes  # sorted
        self.added: set[str] = set()

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "NameScope":
        return cls(name_hashes(model))

    def taken(self, name: str) -> bool:
        if name in self.added:
            return True
        key = hash(name)
        at = int(np.searchsorted(self.hashes, key))
        return at < len(self.hashes) and int(self.hashes[at]) == key

    def fresh(self, hint: str) -> str:
        name, n = hint, 0
        while self.taken(name):
            n += 1
            name = f"{hint}_{n}"
        self.added.add(name)
        return name



class GraphScope(Graph):
    """A Graph with the manager's bookkeeping: anchors, collection of dead nodes, commit."""

    def indices_of(self, op_types) -> list[int]:
        """Numbers of the default-domain nodes of these op types, in order (a node replaced since
        may be listed under its old type too: check its op_type)."""
        found = set()
        for op in op_types:
            found.update(self.by_op.get(op, ()))
        return sorted(found - self.removed)

    def sweep(self):
        """Mark every initializer for the unused check at the next commit (after subgraph edits)."""
        self.maybe_unused.extend(name for name, at in self.defs.items() if at < 0)
        self.changed = True

    def _removable_initializer(self, name: str) -> bool:
        return (self.is_initializer(name) and self._unused(name)
                and (name not in self.inputs or self.initializers_are_inputs))

    def release_unused(self):
        """Free the data of initializers nothing reads any more (they go at the next commit), so
        that a large model does not hold old and folded weights at once."""
        for name in self._to_release:
            if self._removable_initializer(name):
                self.tensor(name).ClearField("raw_data")
                if self.external is not None:
                    self.external.held.pop(name, None)
        self._to_release.clear()

    def collect(self):
        """Remove the pure nodes whose outputs nothing reads any more (between rounds: a dead
        reader must not count as a consumer), and note the initializers that may have gone.
        Ends a round of the manager."""
        if self.changed:
            self.generation += 1
        pending = self.maybe_unused + self.new_initializers
        self.maybe_unused = []
        while pending:
            name = pending.pop()
            if not self._unused(name):
                continue
            index = self.producer_of(name)
            if index is not None:
                node = self.node(index)
                if (index not in self.removed and is_default_domain(node)
                        and node.op_type in CONSTANT_FOLDABLE_OPS
                        and all(self._unused(out) for out in node.output if out)):
                    self.remove_node(index)
                    pending.extend(n for n in node.input if n)
            elif self.is_initializer(name):
                self.unused_candidates.append(name)

    def commit(self) -> bool:
        """Write the edits back: drop what became unused, rebuild the node list. True if changed.
        The view is spent afterwards: its indexes are freed before the writing starts."""
        if not self.changed:
            return False
        self.collect()
        dead = {-1 - self.defs[name] for name in self.unused_candidates if self._removable_initializer(name)}
        # constants made in functions and already replaced by a later fold
        self.new_constant_nodes = [n for n in self.new_constant_nodes if not self._unused(n.output[0])]
        vanished = {name for name in self.vanished if name not in self.defs}
        self.changed = False
        new_initializers = [(n, self.tensor(n)) for n in self.new_initializers] if self.initializers_are_inputs else []
        self.consumers = self.defs = self.by_op = self._constants = None  # memory for the write
        self._write_nodes()
        if self.is_function:
            return True
        graph = self.container
        if self.initializers_are_inputs:
            dead_names = {graph.initializer[i].name for i in dead}
            listed_inputs = [vi for vi in graph.input if vi.name not in dead_names]
            listed_inputs += [helper.make_tensor_value_info(n, t.data_type, list(t.dims))
                              for n, t in new_initializers if n not in dead_names]
            del graph.input[:]
            graph.input.extend(listed_inputs)
        if dead:
            doomed = [False] * len(graph.initializer)
            for i in dead:
                doomed[i] = True
            sort_and_cut(graph.initializer, doomed, len(doomed) - len(dead))
        if vanished:
            prune(graph.value_info, lambda vi: vi.name not in vanished)
        return True

    def _write_nodes(self):
        """Put the edits into the container's node list. Kept nodes are moved, never copied: the
        added ones are appended, then a stable sort puts every node in its final place and the
        removed ones at the end, where they are cut off."""
        nodes = self.container.node
        count = len(nodes)
        for i, node in self.edited.items():
            if i < count and i not in self.removed:
                nodes[i].CopyFrom(node)
        for i in range(count, self.size):  # appended in number order: position == number
            nodes.add().CopyFrom(self.edited[i])
        for node in self.new_constant_nodes:
            nodes.add().CopyFrom(node)
        if not (self.removed or self.placed_after or self.new_constant_nodes):
            return
        order = list(range(self.size, len(nodes)))  # new Constant nodes first
        order += [i for i in self._order() if i not in self.removed]
        rank = [len(nodes)] * len(nodes)
        for position, i in enumerate(order):
            rank[i] = position
        sort_and_cut(nodes, rank, len(order))

def sort_and_cut(repeated, keys: list, kept: int):
    """Stable-sort the items of a repeated protobuf field by `keys` (one per item, in item order)
    and keep the first `kept`. Items are moved, never copied (protobuf does not free a message
    that is copied over)."""
    order = iter(keys)
    repeated.sort(key=lambda _item: next(order))  # list.sort computes the keys in item order
    del repeated[kept:]


def prune(repeated, keep):
    """Delete the items of a repeated protobuf field that `keep` rejects."""
    doomed = [not keep(item) for item in repeated]
    count = doomed.count(True)
    if count:
        sort_and_cut(repeated, doomed, len(doomed) - count)
