"""The contract of a pass: match (structure only), check (every precondition), rewrite.

A pass is stateless and has a `name` (what --passes and --skip take), a one-line `summary`, and
`anchors`, the op types of the node each match starts from. For every anchor node the manager calls

    match(graph, index)        -> a value describing the matched nodes, or None (not this shape)
    check(graph, match)        -> a Plan (the rewrite is exact: everything `rewrite` needs,
                                  computed once) or a Refusal (falsy, with the reason a user reads)
    rewrite(graph, match, plan)   edits the graph; it cannot refuse any more

and accepts nothing else from `check`: a check that returns False, None or a tuple by mistake is
an error of the pass (ContractError), never a rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph


@dataclass(frozen=True)
class Refusal:
    """Why a structurally matching rewrite was not made. Falsy, so `if not plan:` reads naturally."""

    reason: str

    def __bool__(self) -> bool:
        return False


class Plan:
    """What a check found, for its rewrite: each pass has its own dataclass deriving from this.

    `takes()` names the nodes (by number) the rewrite removes or changes, so that the manager can
    keep every rewrite out of the idioms a runtime fuses into one kernel (see onnx_fuse.idioms).
    """

    def takes(self) -> tuple[int, ...]:
        raise NotImplementedError


class ContractError(TypeError):
    """A pass broke the contract above (a bug in that pass, not in the model)."""


class Pass:
    name: str = ""
    summary: str = ""
    anchors: tuple[str, ...] = ()

    def match(self, graph: Graph, index: int):
        raise NotImplementedError

    def check(self, graph: Graph, match) -> Plan | Refusal:
        raise NotImplementedError

    def rewrite(self, graph: Graph, match, plan: Plan) -> None:
        raise NotImplementedError

    def __repr__(self):
        return f"<pass {self.name}>"
