"""Small PyTorch networks for the latency suite, each in train form and in deploy form.

Every builder returns a torch module whose `deploy()` gives the same function re-parameterized
by hand, as the papers' own `reparameterize()` / `switch_to_deploy()` do: Conv + BatchNorm fused
(`torch.nn.utils.fusion`), parallel branches merged into one kernel, Linear + BatchNorm1d fused,
layer scales folded into the Linear before them. Nothing is downloaded; weights are random and
every BatchNorm has random statistics, so a wrong fold would show.

The idiom networks put one activation or normalization (erf and tanh GELU, SiLU, HardSwish in
both spellings, Mish, LayerNorm in three spellings, attention with a scale) between Convs or
Linears with BatchNorms and per-channel scales around it, where onnx-fuse's folds are tempted.
The architecture networks are narrow versions of RepViT, FastViT, EfficientNet, MobileNetV3,
ConvNeXt and LeViT (RepVGG and MobileOne come from models.py).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval


# ---------------------------------------------------------------------------------------------
# Building blocks with a deploy form

class ConvBN(nn.Module):
    """Conv without bias, then BatchNorm2d; deploy: one Conv with bias."""

    def __init__(self, cin, cout, k=1, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))

    def deploy(self):
        return fuse_conv_bn_eval(self.conv, self.bn)

    def kernel(self, k):
        """(weight, bias) of the fused Conv, the kernel zero-padded to k x k (same centre)."""
        fused = self.deploy()
        pad = (k - self.conv.kernel_size[0]) // 2
        return F.pad(fused.weight, [pad] * 4), fused.bias


def identity_kernel(bn, channels, groups, k):
    """(weight, bias) of BatchNorm2d(x) written as a k x k Conv of x with `groups` groups."""
    per_group = channels // groups
    weight = torch.zeros(channels, per_group, k, k)
    for c in range(channels):
        weight[c, c % per_group, k // 2, k // 2] = 1.0
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepConv(nn.Module):
    """`branches` x ConvBN(k x k) [+ ConvBN(1x1)] [+ BN(x)], summed: RepVGG, MobileOne and
    RepViT's RepVGGDW are instances. Deploy: one k x k Conv with bias."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1, branches=1, scale_branch=True, identity=True):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
        self.convs = nn.ModuleList(ConvBN(cin, cout, k, stride, groups) for _ in range(branches))
        self.scale = ConvBN(cin, cout, 1, stride, groups) if scale_branch and k > 1 else None
        self.identity = nn.BatchNorm2d(cout) if identity and cin == cout and stride == 1 else None

    def forward(self, x):
        y = self.convs[0](x)
        for conv in self.convs[1:]:
            y = y + conv(x)
        if self.scale is not None:
            y = y + self.scale(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return y

    def deploy(self):
        terms = [conv.kernel(self.k) for conv in self.convs]
        if self.scale is not None:
            terms.append(self.scale.kernel(self.k))
        if self.identity is not None:
            terms.append(identity_kernel(self.identity, self.cout, self.groups, self.k))
        fused = nn.Conv2d(self.cin, self.cout, self.k, self.stride, self.k // 2, groups=self.groups)
        fused.weight.data = sum(w for w, _ in terms)
        fused.bias.data = sum(b for _, b in terms)
        return fused


class LinearBN(nn.Module):
    """LeViT's Linear (no bias) + BatchNorm1d over the flattened tokens; deploy: one Linear."""

    def __init__(self, cin, cout):
        super().__init__()
        self.linear = nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        y = self.linear(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y)

    def deploy(self):
        return fuse_linear_bn_eval(self.linear, self.bn)


class LayerScaledLinear(nn.Module):
    """Linear followed by a per-feature layer scale (ConvNeXt's gamma); deploy: one Linear."""

    def __init__(self, cin, cout):
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        self.gamma = nn.Parameter(torch.empty(cout).uniform_(0.1, 1.0))

    def forward(self, x):
        return self.linear(x) * self.gamma

    def deploy(self):
        fused = copy.deepcopy(self.linear)
        fused.weight.data *= self.gamma.data[:, None]
        fused.bias.data *= self.gamma.data
        return fused


def to_deploy(module: nn.Module) -> nn.Module:
    """A copy of `module` with every block that has a `deploy()` replaced by its deploy form."""
    module = copy.deepcopy(module).eval()

    def swap(parent):
        for name, child in parent.named_children():
            if hasattr(child, "deploy"):
                setattr(parent, name, child.deploy())
            else:
                swap(child)
    if hasattr(module, "deploy"):
        return module.deploy()
    swap(module)
    return module


def randomize(module: nn.Module, seed=0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that every fold changes numbers."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return module.eval()


# ---------------------------------------------------------------------------------------------
# Activations and normalizations, spelled as a network would write them

class HardSwishMul(nn.Module):
    """x * HardSigmoid(x), as MobileNetV3 implementations that predate nn.Hardswish write it."""

    def forward(self, x):
        return x * F.hardsigmoid(x)


class SwishMul(nn.Module):
    """x * sigmoid(x), written out (EfficientNet's Swish)."""

    def forward(self, x):
        return x * torch.sigmoid(x)


ACTIVATIONS = {
    "gelu_erf": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "swish_mul": SwishMul,
    "hardswish": lambda: nn.Hardswish(),
    "hardswish_mul": HardSwishMul,
    "mish": lambda: nn.Mish(),
}


class ManualLayerNorm(nn.Module):
    """LayerNorm over the last axis written out as ConvNeXt's channels-first LayerNorm writes it:
    mean, centred, pow(2), mean, add eps, sqrt, divide, scale, shift."""

    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c) * 0.1)
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(-1, keepdim=True)
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's stem and downsampling)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Idiom networks

class ConvIdiomNet(nn.Module):
    """Stem ConvBN 3x3 s2, then `depth` residual blocks ConvBN 3x3 -> act -> ConvBN 1x1 (expand)
    -> act -> ConvBN 1x1 (project): each activation sits between a BatchNorm and an unpadded
    Conv, where bn_conv and conv_affine look. Head: GlobalAveragePool, Linear."""

    def __init__(self, act, width=32, depth=3):
        super().__init__()
        self.stem = ConvBN(3, width, 3, 2)
        self.blocks = nn.ModuleList(
            nn.Sequential(ConvBN(width, width, 3), act(), ConvBN(width, 2 * width, 1), act(),
                          ConvBN(2 * width, width, 1)) for _ in range(depth))
        self.act = act()
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.act(self.stem(x))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


class Mlp(nn.Module):
    """Linear -> act -> Linear, on tokens."""

    def __init__(self, c, hidden, act=nn.GELU):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), act(), nn.Linear(hidden, c)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TokenNormNet(nn.Module):
    """Tokens (1, N, C) through `depth` pre-norm MLP blocks x + fc2(relu(fc1(norm(x)))): the
    normalization's scale and shift sit right before a Linear, where bn_conv looks."""

    def __init__(self, norm, c=64, depth=4):
        super().__init__()
        self.embed = nn.Linear(16, c)
        self.norms = nn.ModuleList(norm(c) for _ in range(depth))
        self.mlps = nn.ModuleList(Mlp(c, 2 * c, nn.ReLU) for _ in range(depth))
        self.final = norm(c)

    def forward(self, x):
        x = self.embed(x)
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.final(x)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear, softmax(q @ k^T * scale) @ v, projection.
    `scale_q` multiplies q before the product instead (timm's non-fused path)."""

    def __init__(self, c, heads=4, scale_q=False):
        super().__init__()
        self.heads, self.scale, self.scale_q = heads, (c // heads) ** -0.5, scale_q
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.scale_q:
            attn = (q * self.scale) @ k.transpose(-2, -1)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
        y = attn.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class AttentionNet(nn.Module):
    """Tokens through `depth` blocks x + attn(bn(x)), x + mlp(bn(x)) with BatchNorm1d over the
    flattened tokens before each (LeViT-style normalization, so folds into the qkv Linear are
    tempted), GELU in the MLP."""

    def __init__(self, c=64, depth=2, scale_q=False):
        super().__init__()
        self.embed = nn.Linear(16, c)
        self.norm1 = nn.ModuleList(nn.BatchNorm1d(c) for _ in range(depth))
        self.attn = nn.ModuleList(Attention(c, 4, scale_q) for _ in range(depth))
        self.norm2 = nn.ModuleList(nn.BatchNorm1d(c) for _ in range(depth))
        self.mlp = nn.ModuleList(Mlp(c, 2 * c) for _ in range(depth))

    @staticmethod
    def tokens_bn(bn, x):
        return bn(x.flatten(0, 1)).reshape_as(x)

    def forward(self, x):
        x = self.embed(x)
        for n1, attn, n2, mlp in zip(self.norm1, self.attn, self.norm2, self.mlp):
            x = x + attn(self.tokens_bn(n1, x))
            x = x + mlp(self.tokens_bn(n2, x))
        return x


# ---------------------------------------------------------------------------------------------
# Architecture shapes

class SqueezeExcite(nn.Module):
    def __init__(self, c, hidden, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.reduce, self.act = nn.Conv2d(c, hidden, 1), act()
        self.expand, self.gate = nn.Conv2d(hidden, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class RepViTBlock(nn.Module):
    """RepViT: token mixer RepVGGDW (dw 3x3 BN + dw 1x1 BN + x, then BN), optional SE; channel
    mixer ConvBN 1x1 -> GELU -> ConvBN 1x1, residual. Deploy: the token mixer is one dw Conv
    (RepVGGDW's outer BN folded into it)."""

    def __init__(self, c, se):
        super().__init__()
        self.token = RepVGGDW(c)
        self.se = SqueezeExcite(c, c // 4) if se else nn.Identity()
        self.channel = nn.Sequential(ConvBN(c, 2 * c), nn.GELU(), ConvBN(2 * c, c))

    def forward(self, x):
        x = self.se(self.token(x))
        return x + self.channel(x)


class RepVGGDW(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.conv1 = ConvBN(c, c, 3, groups=c), nn.Conv2d(c, c, 1, groups=c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.conv(x) + self.conv1(x) + x)

    def deploy(self):
        w3, b3 = self.conv.kernel(3)
        w1 = F.pad(self.conv1.weight, [1, 1, 1, 1])
        wid = F.pad(torch.ones(w1.shape[0], 1, 1, 1), [1, 1, 1, 1])
        fused = nn.Conv2d(w3.shape[0], w3.shape[0], 3, 1, 1, groups=w3.shape[0])
        fused.weight.data, fused.bias.data = w3 + w1 + wid, b3 + self.conv1.bias
        return fuse_conv_bn_eval(fused.eval(), self.bn)


class RepViT(nn.Module):
    """RepViT-M0.9 shape, narrow: stem ConvBN s2 -> GELU -> ConvBN s2, stages of RepViTBlocks
    (SE on every other block) separated by a dw ConvBN s2 + ConvBN 1x1 downsample."""

    def __init__(self, widths=(24, 48, 96), depths=(2, 2, 4)):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, widths[0] // 2, 3, 2), nn.GELU(), ConvBN(widths[0] // 2, widths[0], 3, 2))
        layers, cin = [], widths[0]
        for stage, (c, depth) in enumerate(zip(widths, depths)):
            if stage:
                layers += [ConvBN(cin, cin, 3, 2, groups=cin), ConvBN(cin, c)]
            layers += [RepViTBlock(c, se=i % 2 == 0) for i in range(depth)]
            cin = c
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 10)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


class RepMixer(nn.Module):
    """FastViT's token mixer: x + layer_scale * (mixer(x) - norm(x)), mixer a RepConv dw 3x3
    (no 1x1 branch, BN(x) identity), norm a dw BN. Deploy: one dw 3x3 Conv with bias."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.norm = RepConv(c, c, 3, groups=c, branches=0, scale_branch=False, identity=True)
        self.mixer = RepConv(c, c, 3, groups=c, branches=1, scale_branch=False, identity=True)
        self.layer_scale = nn.Parameter(torch.empty(c, 1, 1).uniform_(0.1, 1.0))

    def forward(self, x):
        return x + self.layer_scale * (self.mixer(x) - self.norm.identity(x))

    def deploy(self):
        mixer = self.mixer.deploy()
        wm, bm = mixer.weight, mixer.bias
        wn, bn = identity_kernel(self.norm.identity, self.c, self.c, 3)
        wid, _ = identity_kernel(nn.BatchNorm2d(self.c).eval(), self.c, self.c, 3)
        ls = self.layer_scale.reshape(-1)
        fused = nn.Conv2d(self.c, self.c, 3, 1, 1, groups=self.c)
        fused.weight.data = wid + ls.reshape(-1, 1, 1, 1) * (wm - wn)
        fused.bias.data = ls * (bm - bn)
        return fused


class ConvFFN(nn.Module):
    """FastViT's ConvMlp: dw 7x7 ConvBN -> 1x1 Conv -> GELU -> 1x1 Conv, then a layer scale."""

    def __init__(self, c):
        super().__init__()
        self.conv = ConvBN(c, c, 7, groups=c)
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, 3 * c, 1), nn.GELU(), nn.Conv2d(3 * c, c, 1)
        self.layer_scale = nn.Parameter(torch.empty(c, 1, 1).uniform_(0.1, 1.0))

    def forward(self, x):
        return self.layer_scale * self.fc2(self.act(self.fc1(self.conv(x))))


class FastViTBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.mixer, self.ffn = RepMixer(c), ConvFFN(c)

    def forward(self, x):
        x = self.mixer(x)
        return x + self.ffn(x)


class FastViT(nn.Module):
    """FastViT-T8 shape, narrow: MobileOne stem (RepConv s2, dw RepConv, 1x1 RepConv, GELU),
    stages of RepMixer + ConvFFN blocks, MobileOne-style downsampling (dw RepConv s2 + 1x1)."""

    def __init__(self, widths=(24, 48, 96), depths=(2, 2, 4), branches=1):
        super().__init__()
        c = widths[0]
        self.stem = nn.Sequential(RepConv(3, c, 3, 2, branches=branches), nn.GELU(),
                                  RepConv(c, c, 3, 2, groups=c, branches=branches), nn.GELU(),
                                  RepConv(c, c, 1, branches=branches), nn.GELU())
        layers, cin = [], c
        for stage, (c, depth) in enumerate(zip(widths, depths)):
            if stage:
                layers += [RepConv(cin, cin, 3, 2, groups=cin, branches=branches), nn.GELU(),
                           RepConv(cin, c, 1, branches=branches), nn.GELU()]
            layers += [FastViTBlock(c) for _ in range(depth)]
            cin = c
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 10)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


class MBConv(nn.Module):
    """Inverted residual: ConvBN 1x1 expand -> act -> dw ConvBN -> act -> SE -> ConvBN 1x1."""

    def __init__(self, cin, cout, expand, k, stride, act, se_act, se_gate):
        super().__init__()
        hidden = cin * expand
        self.residual = cin == cout and stride == 1
        self.body = nn.Sequential(ConvBN(cin, hidden), act(), ConvBN(hidden, hidden, k, stride, groups=hidden), act(),
                                  SqueezeExcite(hidden, max(8, cin // 4), se_act, se_gate), ConvBN(hidden, cout))

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MBConvNet(nn.Module):
    """EfficientNet-B0 / MobileNetV3 shape, narrow: stem ConvBN s2 -> act, MBConv stages, 1x1
    ConvBN -> act, GlobalAveragePool, Linear."""

    def __init__(self, act, se_act, se_gate, stages=((16, 1, 3, 1), (24, 2, 3, 2), (40, 2, 5, 2), (80, 2, 3, 2))):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, 16, 3, 2), act())
        layers, cin = [], 16
        for c, depth, k, stride in stages:
            for i in range(depth):
                layers.append(MBConv(cin, c, 4 if cin != 16 or c != 16 else 1, k, stride if i == 0 else 1,
                                     act, se_act, se_gate))
                cin = c
        self.blocks = nn.Sequential(*layers)
        self.tail = nn.Sequential(ConvBN(cin, 4 * cin), act())
        self.head = nn.Linear(4 * cin, 10)

    def forward(self, x):
        return self.head(self.tail(self.blocks(self.stem(x))).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """dw 7x7 Conv -> NHWC -> LayerNorm -> Linear 4C -> GELU -> Linear C * gamma -> NCHW, residual."""

    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), LayerScaledLinear(4 * c, c)

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt shape, narrow: stem Conv 4x4 s4 + LayerNorm2d, stages of ConvNeXt blocks,
    downsampling LayerNorm2d + Conv 2x2 s2, head LayerNorm + Linear."""

    def __init__(self, widths=(24, 48, 96), depths=(1, 1, 3)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, 4), LayerNorm2d(widths[0], eps=1e-6))
        layers, cin = [], widths[0]
        for stage, (c, depth) in enumerate(zip(widths, depths)):
            if stage:
                layers += [LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, c, 2, 2)]
            layers += [ConvNeXtBlock(c) for _ in range(depth)]
            cin = c
        self.stages = nn.Sequential(*layers)
        self.norm, self.head = nn.LayerNorm(cin, eps=1e-6), nn.Linear(cin, 10)

    def forward(self, x):
        return self.head(self.norm(self.stages(self.stem(x)).mean((2, 3))))


class LeViTAttention(nn.Module):
    """LeViT attention: LinearBN qkv, softmax(q @ k^T * scale + bias) @ v, Hardswish, LinearBN."""

    def __init__(self, c, n, heads=4, key_dim=16):
        super().__init__()
        self.heads, self.key_dim, self.scale = heads, key_dim, key_dim ** -0.5
        self.qkv = LinearBN(c, heads * 3 * key_dim)
        self.attention_bias = nn.Parameter(torch.randn(heads, n, n) * 0.1)
        self.act, self.proj = nn.Hardswish(), LinearBN(heads * key_dim, c)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, self.heads, 3, self.key_dim).permute(3, 0, 2, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_bias
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.heads * self.key_dim)
        return self.proj(self.act(y))


class LeViT(nn.Module):
    """LeViT-128S shape, narrow: stem of 3 ConvBN s2 with Hardswish, tokens, blocks of
    x + attn(x), x + mlp(x) with LinearBN -> Hardswish -> LinearBN, head BN1d + Linear."""

    def __init__(self, c=64, size=64, depth=3):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, c // 4, 3, 2), nn.Hardswish(), ConvBN(c // 4, c // 2, 3, 2), nn.Hardswish(),
                                  ConvBN(c // 2, c, 3, 2))
        n = (size // 8) ** 2
        self.attn = nn.ModuleList(LeViTAttention(c, n) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(LinearBN(c, 2 * c), nn.Hardswish(), LinearBN(2 * c, c))
                                 for _ in range(depth))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        for attn, mlp in zip(self.attn, self.mlp):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(x.mean(1))


# ---------------------------------------------------------------------------------------------
# The suite: name -> (builder, input shape, opset[, infer shapes])

def _idiom(act):
    return lambda: ConvIdiomNet(ACTIVATIONS[act])


TORCH_MODELS = {
    **{act: (_idiom(act), (1, 3, 64, 64), 17) for act in ACTIVATIONS},
    "layernorm_op17": (lambda: TokenNormNet(nn.LayerNorm), (1, 196, 16), 17),
    "layernorm_op13": (lambda: TokenNormNet(nn.LayerNorm), (1, 196, 16), 13),
    "layernorm_manual": (lambda: TokenNormNet(ManualLayerNorm), (1, 196, 16), 17),
    # Tokens as a matrix (196, C), so the Linears export as Gemm, with shapes inferred (as after
    # onnxsim or onnxslim): here bn_conv can reach the LayerNorm's scale and shift.
    "layernorm_2d": (lambda: TokenNormNet(nn.LayerNorm), (196, 16), 13, True),
    "layernorm_manual_2d": (lambda: TokenNormNet(ManualLayerNorm), (196, 16), 17, True),
    "attention": (lambda: AttentionNet(), (1, 196, 16), 17),
    "attention_qscale": (lambda: AttentionNet(scale_q=True), (1, 196, 16), 17),
    "repvit": (lambda: RepViT(), (1, 3, 96, 96), 17),
    "fastvit": (lambda: FastViT(), (1, 3, 96, 96), 17),
    "efficientnet": (lambda: MBConvNet(nn.SiLU, nn.SiLU, nn.Sigmoid), (1, 3, 96, 96), 17),
    "mobilenetv3": (lambda: MBConvNet(nn.Hardswish, nn.ReLU, nn.Hardsigmoid), (1, 3, 96, 96), 17),
    "convnext": (lambda: ConvNeXt(), (1, 3, 96, 96), 17),
    "levit": (lambda: LeViT(), (1, 3, 64, 64), 17),
}


def export(module: nn.Module, shape, opset, train_form: bool) -> bytes:
    """The ONNX bytes of `module` from the TorchScript exporter: train form keeps every
    BatchNorm (PRESERVE, no constant folding); deploy form is a plain eval-mode export."""
    import io
    import warnings

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    kwargs = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False) if train_form else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], **kwargs)
    return buffer.getvalue()


def build(name, seed=0):
    """(train_bytes, deploy_bytes, input_shape, max_abs_diff) of a TORCH_MODELS entry; the last
    is the largest difference between the train and deploy forms in torch (a check on deploy())."""
    make, shape, opset, *infer = TORCH_MODELS[name]
    torch.manual_seed(seed)
    model = randomize(make(), seed)
    deploy = to_deploy(model)
    with torch.no_grad():
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        diff = (model(x) - deploy(x)).abs().max().item()
    forms = [export(model, shape, opset, True), export(deploy, shape, opset, False)]
    if infer and infer[0]:
        import onnx
        forms = [onnx.shape_inference.infer_shapes(onnx.load_from_string(f)).SerializeToString() for f in forms]
    return forms[0], forms[1], shape, diff
