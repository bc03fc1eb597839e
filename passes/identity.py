"""identity: an Identity node goes; its readers read its input instead (paddle2onnx writes one after
every elementwise op, and it hides folds from the passes after it). An Identity whose output is a
graph output stays unless its input's producer can compute that name itself; one whose output a
subgraph reads stays too, and so does one between two Casts whose second a subgraph reads
(onnxruntime would drop that Cast pair and lose the subgraph's input).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_fuse.graph import Graph
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass
class Bypass(Plan):
    """Remove the Identity at `index`: its readers read `source`; or, where its output is a graph
    output, the node `producer` computes that output in its slot `slot` instead of `source`."""

    index: int
    source: str
    producer: int | None = None
    slot: int = 0

    def takes(self) -> tuple[int, ...]:
        return (self.index,) if self.producer is None else (self.index, self.producer)


class RemoveIdentity(Pass):
    name = "identity"
    summary = "Identity: removed, its readers read its input (graph outputs keep their names)"
    anchors = ("Identity",)

    def match(self, graph: Graph, index: int):
        node = graph.node(index)
        return index if len(node.input) == 1 and node.input[0] and len(node.output) == 1 else None

    def check(self, graph: Graph, index: int) -> Bypass | Refusal:
        node = graph.node(index)
        source, output = node.input[0], node.output[0]
        if graph.read_by_subgraph(output):
            return Refusal(f"a subgraph reads '{output}'")
        if self._joins_casts_a_subgraph_reads(graph, source, output):
            return Refusal("it parts two Casts and a subgraph reads the second: onnxruntime drops an "
                           "exact Cast pair and then loses the tensor the subgraph reads")
        if output not in graph.outputs:
            return Bypass(index, source)
        producer = graph.producer_of(source)
        if producer is None or graph.consumer_count(source) != 1:
            return Refusal(f"'{output}' is a graph output and '{source}' cannot take its name")
        slot = list(graph.node(producer).output).index(source)
        return Bypass(index, source, producer, slot)

    @staticmethod
    def _joins_casts_a_subgraph_reads(graph: Graph, source: str, output: str) -> bool:
        """Whether removing the Identity makes a Cast read a Cast whose output a subgraph reads.
        onnxruntime (1.32, even with ORT_DISABLE_ALL) removes a Cast pair that round-trips exactly
        and then fails the model with "Missing Input" where an If branch or a Loop body reads the
        second Cast's output (seen when the first Cast reads a graph input). The Identity between
        them is what keeps such a model running. Coarse on purpose (any two Casts): the cost is
        one Identity kept, in a rare graph."""
        producer = graph.producer_of(source)
        if producer is None or graph.node(producer).op_type != "Cast":
            return False
        return any(graph.node(r).op_type == "Cast" and graph.read_by_subgraph(graph.node(r).output[0])
                   for r in set(graph.readers(output)))

    def rewrite(self, graph: Graph, index: int, plan: Bypass):
        output = graph.node(index).output[0]
        graph.remove_node(index)
        if plan.producer is not None:  # the producer computes the graph output itself
            graph.take_output(plan.producer, output, plan.slot)
        else:
            graph.redirect_reads(output, plan.source)
