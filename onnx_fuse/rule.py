"""The contract of a pass: match (structure only), check (every precondition), rewrite.

A pass is stateless. `match` returns a value describing the matched nodes (or None); `check`
returns a `Refusal` with the reason a user reads at -v, or a plan (whatever `rewrite` needs,
computed once); `rewrite` edits the view and may raise FoldError before its first edit.
"""

from __future__ import annotations

from .graph import GraphView
from .match import Refusal


class Pass:
    name: str = ""
    summary: str = ""
    anchors: tuple[str, ...] = ()

    def match(self, view: GraphView, index: int):
        raise NotImplementedError

    def check(self, view: GraphView, match) -> Refusal | object:
        raise NotImplementedError

    def rewrite(self, view: GraphView, match, plan) -> None:
        raise NotImplementedError

    def __repr__(self):
        return f"<pass {self.name}>"
