"""What a run did: rewrites and time per pass, node and parameter counts, and refusals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from .graph import subgraphs_of


def _size(dims) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count


@dataclass
class PassStats:
    name: str
    rewrites: int = 0
    seconds: float = 0.0


@dataclass
class RefusedMatch:
    pass_name: str
    where: str
    node: str
    reason: str


@dataclass
class ModelStats:
    nodes: int
    parameters: int
    ops: Counter

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "ModelStats":
        ops: Counter = Counter()
        parameters = 0

        def visit(graph):
            nonlocal parameters
            parameters += sum(_size(tensor.dims) for tensor in graph.initializer)
            for node in graph.node:
                ops[node.op_type] += 1
                if node.op_type == "Constant":
                    parameters += sum(_size(a.t.dims) for a in node.attribute if a.name == "value")
                for sub in subgraphs_of(node):
                    visit(sub)

        visit(model.graph)
        for function in model.functions:
            for node in function.node:
                ops[node.op_type] += 1
        return cls(sum(ops.values()), parameters, ops)


@dataclass
class Report:
    passes: dict[str, PassStats] = field(default_factory=dict)
    refused: list[RefusedMatch] = field(default_factory=list)
    rewritten: list[tuple] = field(default_factory=list)  # (pass, where, node), in order
    undone: list[tuple] = field(default_factory=list)  # rewrites --verify=bisect took back
    before: ModelStats | None = None
    after: ModelStats | None = None
    seconds: float = 0.0
    verification: dict | None = None

    def _stats(self, name: str) -> PassStats:
        return self.passes.setdefault(name, PassStats(name))

    def count(self, name: str):
        self._stats(name).rewrites += 1

    def add_time(self, name: str, seconds: float):
        self._stats(name).seconds += seconds

    def refuse(self, pass_name: str, where: str, node: str, reason: str):
        self.refused.append(RefusedMatch(pass_name, where, node, reason))

    @property
    def rewrites(self) -> int:
        return sum(p.rewrites for p in self.passes.values())

    def to_dict(self) -> dict:
        def stats(s: ModelStats | None):
            return None if s is None else {"nodes": s.nodes, "parameters": s.parameters, "ops": dict(sorted(s.ops.items()))}

        return {
            "seconds": round(self.seconds, 6),
            "rewrites": self.rewrites,
            "passes": [{"name": p.name, "rewrites": p.rewrites, "seconds": round(p.seconds, 6)}
                       for p in self.passes.values()],
            "before": stats(self.before),
            "after": stats(self.after),
            "refused": [vars(r) for r in self.refused],
            "undone": [{"pass": p, "where": w, "node": n} for p, w, n in self.undone],
            "verification": self.verification,
        }

    def summary(self) -> str:
        """A short table: the op counts that changed, nodes, parameters, rewrites per pass."""
        lines = []
        if self.before and self.after:
            changed = sorted(op for op in set(self.before.ops) | set(self.after.ops)
                             if self.before.ops[op] != self.after.ops[op])
            rows = [(op, self.before.ops[op], self.after.ops[op]) for op in changed]
            rows.append(("nodes", self.before.nodes, self.after.nodes))
            rows.append(("parameters", self.before.parameters, self.after.parameters))
            width = max(len(r[0]) for r in rows)
            lines.append(f"  {'':{width}}  {'before':>12}  {'after':>12}")
            lines += [f"  {name:{width}}  {b:>12,}  {a:>12,}" for name, b, a in rows]
        done = [p for p in self.passes.values() if p.rewrites]
        if done:
            lines.append("  rewrites: " + ", ".join(f"{p.name} {p.rewrites}" for p in done))
        else:
            lines.append("  rewrites: none")
        if self.refused:
            lines.append(f"  refused: {len(self.refused)} matches (-v lists them with reasons)")
        for pass_name, where, node in self.undone:
            lines.append(f"  undone: {pass_name} at {node} ({where}) changed the outputs; left as it was")
        if self.verification:
            v = self.verification
            lines.append(f"  verified: max abs error {v['max_abs_error']:.3g}, max rel error {v['max_rel_error']:.3g}")
        lines.append(f"  time: {self.seconds:.3f} s")
        return "\n".join(lines)
