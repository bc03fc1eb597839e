"""The README's PyTorch recipes, run for real: export a model with torch.onnx and fuse it in the
same script. The lines between `# recipe: NAME` and `# end recipe` are what the README quotes.
Skipped where torch (or, for dynamo=True, onnxscript) is not installed."""

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
# torch's own notices about its exporters, not about onnx-fuse
pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
              pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")]

# recipe: pytorch-torchscript
import onnx
import torch

import onnx_fuse


def export_and_fuse(model, x, onnx_path, fused_path):
    model.eval()
    torch.onnx.export(model, (x,), onnx_path, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    fused = onnx_fuse.optimize(onnx_path)  # every BatchNormalization folded, branches merged
    onnx.save(fused, fused_path)
    return fused
# end recipe


# recipe: pytorch-dynamo
import onnx
import torch

import onnx_fuse


def export_and_fuse_dynamo(model, x, fused_path):
    model.eval()
    program = torch.onnx.export(model, (x,), dynamo=True)
    fused = onnx_fuse.optimize(program)  # takes the ONNXProgram as it is
    onnx.save(fused, fused_path)
    return fused
# end recipe


def conv_bn(cin, cout, k, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class RepBlock(nn.Module):
    """RepVGG's training-time block: relu(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))."""

    def __init__(self, channels):
        super().__init__()
        self.dense = conv_bn(channels, channels, 3)
        self.pointwise = conv_bn(channels, channels, 1)
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.dense(x) + self.pointwise(x) + self.identity(x))


class TinyNet(nn.Module):
    """Conv-BN-ReLU stem, one RepVGG block, global pool and a Linear head."""

    DEPLOY_CONVS = 2  # the stem's Conv and the block re-parameterized into one 3x3 Conv

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, 3, stride=2), nn.ReLU())
        self.block = RepBlock(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@torch.no_grad()
def tiny_model(seed=0):
    """TinyNet in eval mode with random BN statistics and affine, far from the identity."""
    generator = torch.Generator().manual_seed(seed)
    model = TinyNet()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
            module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
    x = torch.randn((2, 3, 16, 16), generator=generator)
    return model.eval(), x


def check_fused(fused, fused_path, model, x):
    ops = [node.op_type for node in fused.graph.node]
    assert "BatchNormalization" not in ops, ops
    assert ops.count("Conv") == TinyNet.DEPLOY_CONVS, ops  # the block's three branches merged
    assert "Add" not in ops, ops
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_torchscript_export_then_fuse(tmp_path):
    model, x = tiny_model()
    onnx_path, fused_path = tmp_path / "tiny.onnx", tmp_path / "tiny.fused.onnx"
    fused = export_and_fuse(model, x, str(onnx_path), str(fused_path))
    exported = [node.op_type for node in onnx.load(str(onnx_path)).graph.node]
    assert exported.count("BatchNormalization") == 4 and exported.count("Conv") == 3, exported
    check_fused(fused, fused_path, model, x)


def test_dynamo_export_then_fuse(tmp_path):
    pytest.importorskip("onnxscript")
    model, x = tiny_model()
    fused_path = tmp_path / "tiny.fused.onnx"
    fused = export_and_fuse_dynamo(model, x, str(fused_path))
    check_fused(fused, fused_path, model, x)
