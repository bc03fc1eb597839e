"""The pass contract: check returns a Plan or a Refusal, and the manager accepts nothing else."""

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from onnx import helper
from support import ModelBuilder, op_counts

import onnx_fuse
from onnx_fuse.rule import ContractError, Pass, Plan, Refusal


@dataclass
class ReluToSigmoid(Plan):
    index: int

    def takes(self):
        return (self.index,)


class SwapRelu(Pass):
    """Turns every Relu into a Sigmoid when its check says so: wrong on purpose, so that a rewrite
    that should not have happened shows in the op counts."""

    name = "swap_relu"
    anchors = ("Relu",)

    def __init__(self, verdict):
        self.verdict = verdict

    def match(self, graph, index):
        return index

    def check(self, graph, index):
        return self.verdict(index)

    def rewrite(self, graph, index, plan):
        node = graph.node(index)
        graph.replace_node(index, helper.make_node("Sigmoid", list(node.input), list(node.output), name=node.name))


def relu_model():
    b = ModelBuilder()
    b.output(b.node("Relu", [b.input([1, 4])]))
    return b.model()


def test_a_plan_rewrites():
    result = onnx_fuse.optimize(relu_model(), passes=[SwapRelu(ReluToSigmoid)])
    assert op_counts(result) == {"Sigmoid": 1}


def test_a_refusal_is_falsy_keeps_the_graph_and_is_reported():
    refusal = Refusal("no reason")
    assert not refusal and refusal.reason == "no reason"
    result, report = onnx_fuse.optimize_with_report(relu_model(), passes=[SwapRelu(lambda i: refusal)])
    assert op_counts(result) == {"Relu": 1}
    assert [r.reason for r in report.refused] == ["no reason"]


@pytest.mark.parametrize("verdict", [False, None, True, 0, (), ("plan",), "yes"])
def test_a_check_returning_anything_else_is_an_error_of_the_pass(verdict):
    """onnxscript's checks return False to refuse; here that must never rewrite."""
    with pytest.raises(ContractError, match="swap_relu: check\\(\\) returned .* must return a Plan"):
        onnx_fuse.optimize(relu_model(), passes=[SwapRelu(lambda i: verdict)])


def test_every_default_pass_has_a_name_a_summary_and_anchors():
    from onnx_fuse.passes import DEFAULT_PASSES

    names = [p.name for p in DEFAULT_PASSES]
    assert len(set(names)) == len(names)
    assert all(p.name and p.summary and p.anchors for p in DEFAULT_PASSES)


def _graph_api() -> set:
    """The names Graph's docstring lists as what a pass may use."""
    from onnx_fuse.graph import Graph
    names = set()
    for line in inspect.cleandoc(Graph.__doc__).split("\n\n")[1].splitlines():
        words = re.sub(r"\([^)]*\)", "", line).split()
        names.update(words if line.startswith(" ") else words[1:])  # a line's first word is its heading
    return names


def _graph_reads(path: Path):
    """(line, attribute) of every attribute a function reads of its parameter annotated Graph."""
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in function.args.args + function.args.kwonlyargs
                  if a.annotation is not None and ast.unparse(a.annotation).strip("'\"") in ("Graph", "Graph | None")}
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in params:
                yield node.lineno, node.attr


def test_passes_use_only_the_graph_api_it_documents():
    root = Path(__file__).resolve().parents[1]
    api = _graph_api()
    assert {"node", "readers", "shape_value", "fresh_name", "declared_names", "opset"} <= api
    assert not api & {"reading", "editing", "container", "i", "name"}
    files = sorted((root / "passes").glob("*.py")) + [root / "onnx_fuse" / m for m in ("linear.py", "match.py")]
    outside = [f"{path.relative_to(root)}:{line}: graph.{attr}"
               for path in files for line, attr in _graph_reads(path) if attr not in api]
    assert not outside, "not in Graph's documented API:\n" + "\n".join(outside)
