"""Runs passes to a fixed point over the main graph, every subgraph and every local function,
and records what each pass did and why it refused what it refused.
"""

from __future__ import annotations

import logging
import time

import onnx

from .graph import is_default_domain, subgraphs_of
from .idioms import find_idioms
from .report import Report
from .rule import ContractError, Plan, Refusal
from .scope import GraphScope, NameScope

log = logging.getLogger("onnx_fuse")

MAX_ROUNDS = 32


def default_opset(opset_imports) -> int:
    for entry in opset_imports:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


class PassManager:
    def __init__(self, passes, report: Report, fold_overridable: bool = False, deny=frozenset(),
                 external=None, record: bool = False, progress=None, input_shapes: dict | None = None):
        self.passes = list(passes)
        self.report = report
        self.fold_overridable = fold_overridable
        self.deny = deny  # (pass, where, node) of rewrites not to make
        self.external = external
        self.record = record  # list every rewrite in report.rewritten (for --verify=bisect)
        self.progress = progress  # called with a status line as the work goes on
        self.input_shapes = input_shapes  # sizes of the main graph's inputs, for merges that need them
        self.names: NameScope | None = None

    def run(self, model: onnx.ModelProto) -> bool:
        """Rewrite `model` in place. True if anything changed."""
        self.names = NameScope.of(model)
        opset = default_opset(model.opset_import)
        refused = []
        changed = self._scope(model.graph, opset, model.ir_version, None, "graph", refused)
        for function in model.functions:
            f_opset = default_opset(function.opset_import) or opset
            changed |= self._scope(function, f_opset, model.ir_version, None,
                                   f"function {function.domain}:{function.name}", refused)
        for entry in refused:
            self.report.refuse(*entry)
        return changed

    def _view(self, container, opset, ir_version, parent):
        main = parent is None and isinstance(container, onnx.GraphProto)
        return GraphScope(container, opset=opset, ir_version=ir_version, names=self.names,
                          parent=parent, fold_overridable=self.fold_overridable,
                          external=self.external, input_shapes=self.input_shapes if main else None)

    def _scope(self, container, opset, ir_version, parent, where, refused: list) -> bool:
        """Run the passes to a fixed point over `container` and, inside it, over every subgraph.

        A subgraph that changes may stop reading a name of `container` (an Identity a Loop body read,
        say), which lets the passes do more here; and what they do here may let a subgraph do more.
        So the two alternate until neither changes. What was refused is appended to `refused` as
        (pass, where, node, reason), from the last time each graph was looked at.
        """
        changed = False
        nested_refused: list = []
        descended = False
        for _ in range(MAX_ROUNDS):
            own_changed, own_refused = self._rounds(container, opset, ir_version, parent, where)
            changed |= own_changed
            if descended and not own_changed:
                break  # the subgraphs are at their fixed point and nothing around them changed
            descended = True
            nested_refused = []
            if not self._descend(container, opset, ir_version, parent, where, nested_refused):
                break
            changed = True
            # subgraphs may have stopped reading an outer initializer
            view = self._view(container, opset, ir_version, parent)
            view.sweep()
            view.commit()
        refused.extend(own_refused)
        refused.extend(nested_refused)
        return changed

    def _rounds(self, container, opset, ir_version, parent, where) -> tuple[bool, list]:
        """The passes over `container` alone, round after round until one changes nothing."""
        changed = False
        view = self._view(container, opset, ir_version, parent)
        for _ in range(MAX_ROUNDS):
            refusals = {}
            round_changed = False
            idioms = find_idioms(view, view.indices_of)
            for rule in self.passes:
                started = time.perf_counter()
                round_changed |= self._sweep(rule, view, refusals, where, idioms)
                self.report.add_time(rule.name, time.perf_counter() - started)
            view.collect()
            changed |= round_changed
            if not round_changed:
                break
        view.commit()
        return changed, [(pass_name, where, node_name, reason) for (pass_name, node_name), reason in refusals.items()]

    def _descend(self, container, opset, ir_version, parent, where, refused: list) -> bool:
        nested = False
        outer = None
        for node in container.node:
            for sub in subgraphs_of(node):
                if outer is None:
                    outer = self._view(container, opset, ir_version, parent)
                nested |= self._scope(sub, opset, ir_version, outer,
                                      f"{where} / {node.op_type} {node.name or node.output[0]}", refused)
        return nested

    def _sweep(self, rule, view: GraphScope, refusals: dict, where: str, idioms: dict) -> bool:
        changed = False
        for index in view.indices_of(rule.anchors):
            if index in view.removed:
                continue
            node = view.node(index)
            if node.op_type not in rule.anchors or not is_default_domain(node):
                continue
            match = rule.match(view, index)
            if match is None:
                continue
            label = node.name or node.output[0]
            key = (rule.name, where, label)
            if key in self.deny:
                refusals[(rule.name, label)] = "undone: this rewrite changed the outputs (--verify=bisect)"
                continue
            plan = rule.check(view, match)
            if isinstance(plan, Refusal):
                refusals[(rule.name, label)] = plan.reason
                continue
            if not isinstance(plan, Plan):
                raise ContractError(f"pass {rule.name}: check() returned {type(plan).__name__} {plan!r:.80}; "
                                    f"it must return a Plan (rewrite) or a Refusal (why not)")
            kept = next((i for i in plan.takes() if i in idioms), None)
            if kept is not None:  # exact, but the runtime would no longer fuse the idiom: slower
                step = view.node(kept)
                refusals[(rule.name, label)] = (f"{step.op_type} '{step.name or step.output[0]}' is part of a "
                                                f"{idioms[kept]}, which runtimes fuse into one kernel")
                continue
            rule.rewrite(view, match, plan)
            view.release_unused()
            self.report.count(rule.name)
            if self.record:
                self.report.rewritten.append(key)
            if self.progress is not None:
                self.progress(f"{rule.name}: {self.report.passes[rule.name].rewrites} rewrites ({where})")
            log.debug("%s: rewrote at %s (%s)", rule.name, label, where)
            changed = True
        return changed
