"""Which spellings of each idiom the installed onnxruntime fuses, and what a fold would cost.

    python benchmarks/idiom_probe.py

Builds one tiny graph per variant (an idiom as exporters write it, and as it looks after a fold
has taken a constant out of it), lets onnxruntime optimize it (CPU EP, ORT_ENABLE_EXTENDED: the
fusions; ORT_ENABLE_ALL: also the NCHWc layout pass, between two 1x1 Convs) and prints the ops of
the optimized graph. The facts in IDIOMS.md were read off this output (onnxruntime 1.32.0);
run it again on another version before relying on them there.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter

import onnx
import onnx.parser
import onnxruntime as ort

EXTENDED = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def optimized_ops(text: str, level) -> str:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    return ", ".join(f"{op} {n}" if n > 1 else op for op, n in Counter(n.op_type for n in nodes).items())


def graph(body: str, inits: str = "", opset: int = 17, shape: str = "[1,16,8,8]", convs: bool = False) -> str:
    """`body` maps x to y; with `convs`, x comes from a 1x1 Conv and y feeds another."""
    if convs:
        weights = ", ".join(f"float[16,16,1,1] w{i} = {{{','.join(['0.05'] * 256)}}}" for i in (1, 2))
        inits = ", ".join(filter(None, [inits, weights]))
        body = "x = Conv(inp, w1)\n" + body.replace("y =", "z =") + "\ny = Conv(z, w2)"
    header = f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
    inputs = f"float{shape} {'inp' if convs else 'x'}"
    return header + f"g ({inputs}) => (float{shape} y) " + (f"<{inits}>" if inits else "") + "{\n" + body + "\n}"


GELU = "a = Div(x, s2)\nb = Erf(a)\nc = Add(b, one)\nd = Mul(x, c)\ny = Mul(d, half)"
GELU_CONSTS = "float s2 = {1.4142135}, float one = {1.0}, float half = {0.5}"
GELU_WITHOUT_HALF = GELU.replace("d = Mul(x, c)\ny = Mul(d, half)", "y = Mul(x, c)")
HARD_SWISH = "s = HardSigmoid<alpha=0.16666667, beta=0.5>(x)\ny = Mul(x, s)"
C8 = ",".join(["1.5"] * 8)
B8 = ",".join(["0.1"] * 8)


def layer_norm(square="Pow(c, two)", tail="t = Mul(n, w)\ny = Add(t, b)", shape="[8]", opset=17):
    reduce = "ReduceMean<axes=[-1]>({})" if opset < 18 else "ReduceMean({}, ax)"
    body = (f"m = {reduce.format('x')}\nc = Sub(x, m)\np = {square}\nv = {reduce.format('p')}\n"
            f"e = Add(v, eps)\ns = Sqrt(e)\nn = Div(c, s)\n{tail}")
    inits = f"float two = {{2.0}}, float eps = {{1e-5}}, float{shape} w = {{{C8}}}, float{shape} b = {{{B8}}}"
    if opset >= 18:
        inits += ", int64[1] ax = {-1}"
    return graph(body, inits, opset, shape="[1,196,8]")


ATTENTION = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,49,16] q, float[1,4,49,16] k) => (float[1,4,49,49] y) <float sc = {0.25}> {
kt = Transpose<perm=[0,1,3,2]>(k)
BODY
y = Softmax<axis=-1>(s)
}"""

CASES = [
    ("GELU erf, torch: Div(x,sqrt2) Erf Add(1) Mul(x) Mul(0.5)", graph(GELU, GELU_CONSTS)),
    ("GELU erf, Mul(x,0.5) * (1+erf) (ORT pattern 1)",
     graph("a = Div(x, s2)\nb = Erf(a)\nc = Add(b, one)\nh = Mul(x, half)\ny = Mul(h, c)", GELU_CONSTS)),
    ("GELU erf, operands swapped: Add(1,erf) Mul(c,x) Mul(0.5,d)",
     graph("a = Div(x, s2)\nb = Erf(a)\nc = Add(one, b)\nd = Mul(c, x)\ny = Mul(half, d)", GELU_CONSTS)),
    ("GELU erf, 0.5 written as 0.5000001", graph(GELU, GELU_CONSTS.replace("{0.5}", "{0.5000001}"))),
    ("GELU erf, constants of shape [1]", graph(GELU, GELU_CONSTS.replace("float ", "float[1] "))),
    ("GELU erf, Mul(x, 1/sqrt2) instead of Div(x, sqrt2)",
     graph(GELU.replace("Div(x, s2)", "Mul(x, s2)"), GELU_CONSTS.replace("1.4142135", "0.70710677"))),
    ("GELU erf, 0.5 as [16,1,1] (per-channel, all 0.5)",
     graph(GELU, GELU_CONSTS.replace("float half = {0.5}", "float[16,1,1] half = {" + ",".join(["0.5"] * 16) + "}"))),
    ("GELU erf, trailing Mul(0.5) folded away", graph(GELU_WITHOUT_HALF, "float s2 = {1.4142135}, float one = {1.0}")),
    ("GELU, ONNX Gelu op (opset 20)", graph("y = Gelu(x)", opset=20)),
    ("SiLU: Sigmoid, Mul(x)", graph("s = Sigmoid(x)\ny = Mul(x, s)")),
    ("x*sigmoid(1.702x)", graph("a = Mul(x, k)\ns = Sigmoid(a)\ny = Mul(x, s)", "float k = {1.702}")),
    ("HardSwish op", graph("y = HardSwish(x)")),
    ("x*HardSigmoid(x)", graph(HARD_SWISH)),
    ("Mish: Softplus Tanh Mul(x)", graph("s = Softplus(x)\nt = Tanh(s)\ny = Mul(x, t)")),
    ("Mish op (opset 18)", graph("y = Mish(x)", opset=18)),
    ("LayerNorm decomposed, Pow, scale/bias [C]", layer_norm()),
    ("LayerNorm decomposed, opset 13", layer_norm(opset=13)),
    ("LayerNorm decomposed, opset 18 (axes input)", layer_norm(opset=18)),
    ("LayerNorm decomposed, Mul(c,c) instead of Pow", layer_norm(square="Mul(c, c)")),
    ("LayerNorm decomposed, scale/bias [1,1,C]", layer_norm(shape="[1,1,8]")),
    ("LayerNorm decomposed, scale Mul folded away", layer_norm(tail="y = Add(n, b)")),
    ("LayerNorm decomposed, bias Add folded away", layer_norm(tail="y = Mul(n, w)")),
    ("LayerNorm decomposed, scale and bias folded away", layer_norm(tail="y = Identity(n)")),
    ("attention: (q @ k^T) * scale, Softmax", ATTENTION.replace("BODY", "a = MatMul(q, kt)\ns = Mul(a, sc)")),
    ("attention: (q * scale) @ k^T, Softmax", ATTENTION.replace("BODY", "qs = Mul(q, sc)\ns = MatMul(qs, kt)")),
]

# Between two 1x1 Convs, at ORT_ENABLE_ALL: does the idiom keep the NCHWc layout?
LAYOUT_CASES = [
    ("Conv, GELU erf (torch), Conv", graph(GELU, GELU_CONSTS, convs=True)),
    ("Conv, GELU erf without Mul(0.5), Conv",
     graph(GELU_WITHOUT_HALF, "float s2 = {1.4142135}, float one = {1.0}", convs=True)),
    ("Conv, ONNX Gelu (opset 20), Conv", graph("y = Gelu(x)", opset=20, convs=True)),
    ("Conv, SiLU, Conv", graph("s = Sigmoid(x)\ny = Mul(x, s)", convs=True)),
    ("Conv, HardSwish, Conv", graph("y = HardSwish(x)", convs=True)),
    ("Conv, x*HardSigmoid(x), Conv", graph(HARD_SWISH, convs=True)),
    ("Conv, Mish, Conv", graph("s = Softplus(x)\nt = Tanh(s)\ny = Mul(x, t)", convs=True)),
    ("Conv, Relu, Conv", graph("y = Relu(x)", convs=True)),
    ("Conv, Mul(0.5), Conv", graph("y = Mul(x, half)", "float half = {0.5}", convs=True)),
]


def main():
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider\n")
    print("ORT_ENABLE_EXTENDED (fusions):")
    for title, text in CASES:
        print(f"  {title:58} -> {optimized_ops(text, EXTENDED)}")
    print("\nORT_ENABLE_ALL (fusions and the NCHWc layout):")
    for title, text in LAYOUT_CASES:
        print(f"  {title:58} -> {optimized_ops(text, ALL)}")


if __name__ == "__main__":
    main()
