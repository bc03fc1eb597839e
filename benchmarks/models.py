"""Networks for the benchmarks, built with onnx.helper and random weights (nothing downloaded).

Each builder returns (train_form, deploy_form): the network as a framework exports it before its
re-parameterization (every BatchNormalization and branch kept), and the same architecture built
directly in its deploy form (one Conv with bias per block).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def fresh(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, values, hint):
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op), **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, groups=1, bias=False):
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * (2.0 / (cin // groups * k * k)) ** 0.5
        inputs = [x, self.const(w, "w")] + ([self.const(self.rng.normal(0, 0.1, cout), "b")] if bias else [])
        return self.node("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2, group=groups)

    def bn(self, x, c):
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c), self.rng.normal(0, 0.1, c),
                  self.rng.uniform(0.5, 2.0, c)]
        return self.node("BatchNormalization", [x] + [self.const(p, "bn") for p in params], epsilon=1e-5)

    def model(self, x, y, shape, name):
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def _head(net, y, c, classes=1000):
    y = net.node("Flatten", [net.node("GlobalAveragePool", [y])])
    w = net.const(net.rng.standard_normal((classes, c)) * c ** -0.5, "fc")
    return net.node("Gemm", [y, w, net.const(np.zeros(classes), "fc_b")], transB=1)


def repvgg(blocks=(1, 2, 4, 14, 1), widths=(48, 48, 96, 192, 1280), size=224, seed=0):
    """RepVGG (A0 by default): per block BN(conv3x3) + BN(conv1x1) [+ BN(x)], ReLU."""
    forms = []
    for deploy in (False, True):
        net, x = Net(seed), "input"
        y, cin = x, 3
        for stage, (count, cout) in enumerate(zip(blocks, widths)):
            for i in range(count):
                stride = 2 if i == 0 else 1
                if deploy:
                    y = net.conv(y, cin, cout, 3, stride, bias=True)
                else:
                    terms = [net.bn(net.conv(y, cin, cout, 3, stride), cout),
                             net.bn(net.conv(y, cin, cout, 1, stride), cout)]
                    if cin == cout and stride == 1:
                        terms.append(net.bn(y, cout))
                    y = terms[0]
                    for term in terms[1:]:
                        y = net.node("Add", [y, term])
                y, cin = net.node("Relu", [y]), cout
        forms.append(net.model(x, _head(net, y, cin), [1, 3, size, size], "repvgg"))
    return tuple(forms)


def mobileone(blocks=(1, 2, 8, 10, 1), widths=(48, 48, 128, 256, 1024), k=4, size=224, seed=0):
    """MobileOne (S0 by default): depthwise 3x3 with k branches + 1x1 + BN(x), ReLU, then
    pointwise 1x1 with k branches + BN(x), ReLU."""
    forms = []
    for deploy in (False, True):
        net, x = Net(seed), "input"
        y, cin = x, 3

        def branches(y, cin, cout, kernel, stride, groups):
            if deploy:
                return net.conv(y, cin, cout, kernel, stride, groups, bias=True)
            terms = [net.bn(net.conv(y, cin, cout, kernel, stride, groups), cout) for _ in range(k)]
            if kernel > 1:
                terms.append(net.bn(net.conv(y, cin, cout, 1, stride, groups), cout))
            if cin == cout and stride == 1:
                terms.append(net.bn(y, cout))
            return net.node("Sum", terms) if len(terms) > 1 else terms[0]

        for stage, (count, cout) in enumerate(zip(blocks, widths)):
            for i in range(count):
                stride = 2 if i == 0 else 1
                if stage == 0:
                    y = net.node("Relu", [branches(y, cin, cout, 3, stride, 1)])
                else:
                    y = net.node("Relu", [branches(y, cin, cin, 3, stride, cin)])
                    y = net.node("Relu", [branches(y, cin, cout, 1, 1, 1)])
                cin = cout
        forms.append(net.model(x, _head(net, y, cin), [1, 3, size, size], "mobileone"))
    return tuple(forms)


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
