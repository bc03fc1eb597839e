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
            from .verify import verdict_line

            lines.append("  " + verdict_line(self.verification))
        lines.append(f"  time: {self.seconds:.3f} s")
        return "\n".join(lines)


# ---- the --report document and the table of a run over several models ------------------------

SCHEMA = 1  # the --report document's version: raised only when a field changes meaning or goes


def _version(*distributions) -> str | None:
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def model_record(source, destination, report: Report | None, exit_code: int, error: str | None) -> dict:
    """One model's entry in the --report document (see the README's "The report file")."""
    def ops(stats):
        return None if stats is None else dict(sorted(stats.ops.items()))

    before = report.before if report else None
    after = report.after if report else None
    return {
        "input": str(source),
        "output": str(destination) if exit_code == 0 else None,
        "exit_code": exit_code,
        "error": error,
        "nodes_before": before.nodes if before else None,
        "nodes_after": after.nodes if after else None,
        "parameters_before": before.parameters if before else None,
        "parameters_after": after.parameters if after else None,
        "ops_before": ops(before),
        "ops_after": ops(after),
        "rewrites": {p.name: p.rewrites for p in report.passes.values()} if report else {},
        "pass_seconds": {p.name: round(p.seconds, 6) for p in report.passes.values()} if report else {},
        "refusals": [{"pass": r.pass_name, "where": r.where, "node": r.node, "reason": r.reason}
                     for r in report.refused] if report else [],
        "undone": [{"pass": p, "where": w, "node": n} for p, w, n in report.undone] if report else [],
        "seconds": round(report.seconds, 6) if report else None,
        "verify": dict(report.verification) if report and report.verification else None,
    }


def report_document(records: list) -> dict:
    """The --report document: schema version, tool versions, and one record per model."""
    from . import __version__

    return {"schema": SCHEMA, "onnx_fuse": __version__, "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                                    "onnxruntime-directml"),
            "models": records}


class RunTable:
    """The table printed for a run over several models: a row per model as it finishes, then
    a roll-up line."""

    COLUMNS = f"  {'model':32} {'nodes before':>12} {'after':>7} {'rewrites':>9} {'time':>9}  verify"

    def __init__(self, stream):
        self.stream = stream

    def start(self, count: int, output):
        print(f"onnx-fuse: {count} models -> {output}", file=self.stream)
        print(self.COLUMNS, file=self.stream)

    def row(self, record: dict):
        name = record["input"].replace("\\", "/").rsplit("/", 1)[-1]
        if len(name) > 32:
            name = name[:31] + "~"

        def number(value):
            return "-" if value is None else f"{value:,}"

        seconds = "-" if record["seconds"] is None else f"{record['seconds']:.2f} s"
        verify = record["verify"]["verdict"] if record["verify"] else "-"
        if record["exit_code"] not in (0, 3):
            verify = f"error (exit {record['exit_code']})"
        rewrites = sum(record["rewrites"].values()) if record["nodes_before"] is not None else None
        print(f"  {name:32} {number(record['nodes_before']):>12} {number(record['nodes_after']):>7} "
              f"{number(rewrites):>9} {seconds:>9}  {verify}", file=self.stream, flush=True)

    def finish(self, records: list, output):
        written = [r for r in records if r["exit_code"] == 0]
        line = f"onnx-fuse: {len(written)} of {len(records)} models written to {output}"
        failed = len(records) - len(written)
        if failed:
            line += f", {failed} failed"
        if written:
            before = sum(r["nodes_before"] for r in written)
            after = sum(r["nodes_after"] for r in written)
            line += f"; nodes {before:,} -> {after:,}"
        line += f"; {sum(r['seconds'] or 0 for r in records):.2f} s"
        verdicts = [r["verify"]["verdict"] for r in records if r["verify"]]
        if verdicts:
            line += f"; verify: {verdicts.count('PASSED')} PASSED, {verdicts.count('FAILED')} FAILED"
        print(line, file=self.stream)
