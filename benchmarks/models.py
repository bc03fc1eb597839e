"""Networks for the benchmarks, built with onnx.helper and random weights (nothing downloaded).

`repvgg` and `mobileone` return (train_form, deploy_form): the network as a framework exports it
before its re-parameterization (every BatchNormalization and branch kept), and the same
architecture built directly in its deploy form (one Conv with bias per block). `resnet_bottleneck`,
`plain_cnn` and `synthetic_chain` return one model, every Conv followed by a BatchNormalization.
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

    def model(self, x, y, shape, name, out_shape):
        # The output's shape is declared, as exporters do (onnxsim refuses an output without one).
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)], self.inits)
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
        forms.append(net.model(x, _head(net, y, cin), [1, 3, size, size], "repvgg", [1, 1000]))
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
        forms.append(net.model(x, _head(net, y, cin), [1, 3, size, size], "mobileone", [1, 1000]))
    return tuple(forms)


REPVGG_A0 = dict(blocks=(1, 2, 4, 14, 1), widths=(48, 48, 96, 192, 1280))  # a = 0.75, b = 2.5
REPVGG_B1 = dict(blocks=(1, 4, 6, 16, 1), widths=(64, 128, 256, 512, 2048))  # a = 2, b = 4
MOBILEONE_S0 = dict(blocks=(1, 2, 8, 10, 1), widths=(48, 48, 128, 256, 1024), k=4)


def resnet_bottleneck(blocks=(3, 8, 36, 3), width=64, size=224, seed=0):
    """ResNet with bottleneck blocks (ResNet-152 by default: [3, 8, 36, 3], width 64): every Conv
    without bias, then BatchNormalization, then Relu; residual Adds, a Conv+BN projection where the
    shape changes. `width` is the first stage's bottleneck width (the stem has as many channels)."""
    net, x = Net(seed), "input"
    y = net.node("Relu", [net.bn(net.conv(x, 3, width, 7, stride=2), width)])
    y = net.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, count in enumerate(blocks):
        mid = width * 2 ** stage
        cout = 4 * mid
        for i in range(count):
            stride = 2 if i == 0 and stage > 0 else 1
            h = net.node("Relu", [net.bn(net.conv(y, cin, mid, 1), mid)])
            h = net.node("Relu", [net.bn(net.conv(h, mid, mid, 3, stride), mid)])
            h = net.bn(net.conv(h, mid, cout, 1), cout)
            shortcut = net.bn(net.conv(y, cin, cout, 1, stride), cout) if stride != 1 or cin != cout else y
            y, cin = net.node("Relu", [net.node("Add", [h, shortcut])]), cout
    return net.model(x, _head(net, y, cin), [1, 3, size, size], "resnet_bottleneck", [1, 1000])


def plain_cnn(channels=384, layers=24, input_shape=(1, 256, 8, 8), seed=0):
    """Conv 3x3 (pad 1, no bias) -> BatchNormalization -> Relu, `layers` times, `channels` wide.
    The weights are float32 from the start, so a large one builds without a float64 copy."""
    net, x = Net(seed), "input"
    y, cin = x, input_shape[1]
    for _ in range(layers):
        weight = net.rng.standard_normal((channels, cin, 3, 3), dtype=np.float32)
        weight *= np.float32((2.0 / (cin * 9)) ** 0.5)
        conv = net.node("Conv", [y, net.const(weight, "w")], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        y, cin = net.node("Relu", [net.bn(conv, channels)]), channels
    return net.model(x, y, list(input_shape), "plain_cnn", [1, channels, *input_shape[2:]])


def synthetic_chain(blocks=33_333, channels=2, size=4, seed=0):
    """A long, thin graph: `blocks` x (Conv 1x1 on `channels` channels -> BatchNormalization -> Relu),
    3 nodes each (33,333 blocks: 99,999 nodes), for the time per node and how it scales."""
    net, x = Net(seed), "input"
    y = x
    for _ in range(blocks):
        y = net.node("Relu", [net.bn(net.conv(y, channels, channels, 1), channels)])
    return net.model(x, y, [1, channels, size, size], "synthetic_chain", [1, channels, size, size])


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
