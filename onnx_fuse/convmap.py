"""Linear maps of x that are one convolution, as values: ConvMap, and the algebra on them
(identity, average pool, affine after, sum of branches, negation, composition in sequence).
Pure numpy, float64 inside; the merged kernel is cast back by fold.cast_like.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fold import FoldError, fold_affine_after_conv



@dataclass
class ConvMap:
    """A linear map of x that is one convolution: y = conv(x; kernel, bias) with these attributes.

    `diagonal` marks maps that act on each channel alone (identity, average pool, per-channel
    affine): they are stored depthwise ([C, 1, k...], groups = C) and can take any group layout.
    Pads are ONNX-ordered: all begins, then all ends.
    """

    kernel: np.ndarray
    bias: np.ndarray
    groups: int
    strides: tuple
    dilations: tuple
    pads: tuple
    diagonal: bool = False
    sources: list = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.kernel.ndim - 2

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[0]

    @property
    def in_channels(self) -> int:
        return self.kernel.shape[1] * self.groups

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-accumulates per output position: M * C/g * prod(k)."""
        return int(np.prod(self.kernel.shape))


def identity_map(channels: int, rank: int) -> ConvMap:
    return ConvMap(np.ones((channels, 1) + (1,) * rank), np.zeros(channels), channels,
                   (1,) * rank, (1,) * rank, (0,) * (2 * rank), diagonal=True)


def average_pool_map(channels: int, kernel_shape, strides, pads) -> ConvMap:
    """AveragePool with zero pads counted (count_include_pad=1, or no pads) is a 1/prod(k) kernel."""
    kernel_shape = tuple(kernel_shape)
    kernel = np.full((channels, 1) + kernel_shape, 1.0 / np.prod(kernel_shape))
    return ConvMap(kernel, np.zeros(channels), channels, tuple(strides), (1,) * len(kernel_shape),
                   tuple(pads), diagonal=True)


def affine_after_map(m: ConvMap, a, b) -> ConvMap:
    """(m(x)) * a + b per output channel."""
    kernel, bias = fold_affine_after_conv(m.kernel, m.bias, a, b, m.groups)
    return ConvMap(kernel, bias, m.groups, m.strides, m.dilations, m.pads, m.diagonal, m.sources)


def regroup(m: ConvMap, groups: int) -> ConvMap:
    """A diagonal map written for a conv with `groups` groups (its kernel is zero off the diagonal)."""
    if m.groups == groups:
        return m
    if not m.diagonal:
        raise FoldError(f"a convolution with {m.groups} groups cannot join one with {groups}")
    channels = m.out_channels
    per_group = channels // groups
    kernel = np.zeros((channels, per_group) + m.kernel.shape[2:])
    kernel[np.arange(channels), np.arange(channels) % per_group] = m.kernel[:, 0]
    return ConvMap(kernel, m.bias, groups, m.strides, m.dilations, m.pads, False, m.sources)


def sum_maps(maps: list, input_lengths=None) -> ConvMap:
    """One convolution equal to the sum of several convolutions of the same input.

    Per spatial axis, branch b reads input positions t*s - L_b ... t*s + R_b (L_b = pad begin,
    R_b = d*(k_b - 1) - L_b) and has E_b = pad end - R_b: its output length is
    floor((H - 1 + E_b) / s) + 1 for an input of length H. The branches line up when those lengths
    agree and every L - L_b is a multiple of the dilation; the merged kernel then spans
    L = max L_b to R = max R_b, each branch sits at (L - L_b) / d, and the merged pad end is
    min E_b + R. Equal E_b agree for any H; different ones (a strided 'same' convolution beside a
    1x1) only for some, so `input_lengths()` (the input's spatial lengths, None where unknown;
    asked only then) must show it.
    """
    rank = maps[0].rank
    if any(m.rank != rank for m in maps):
        raise FoldError("branches have convolutions of different rank")
    channels = {(m.out_channels, m.in_channels) for m in maps}
    if len(channels) != 1:
        raise FoldError(f"branches map different channel counts {sorted(channels)}")
    if len({m.strides for m in maps}) != 1:
        raise FoldError(f"branches have different strides {sorted({m.strides for m in maps})}")
    rigid = [m for m in maps if not m.diagonal]
    group_counts = {m.groups for m in rigid} or {maps[0].groups}
    if len(group_counts) != 1:
        raise FoldError(f"branches have different groups {sorted(group_counts)}")
    groups = group_counts.pop()
    maps = [regroup(m, groups) for m in maps]
    dilations = []
    for axis in range(rank):
        ds = {m.dilations[axis] for m in maps if m.kernel.shape[2 + axis] > 1}
        if len(ds) > 1:
            raise FoldError(f"branches have different dilations on spatial axis {axis}")
        dilations.append(ds.pop() if ds else 1)
    sizes, offsets, pads_begin, pads_end = [], [[] for _ in maps], [], []
    for axis in range(rank):
        d = dilations[axis]
        reach = []
        for m in maps:
            k, begin, end = m.kernel.shape[2 + axis], m.pads[axis], m.pads[rank + axis]
            right = d * (k - 1) - begin
            reach.append((begin, right, end - right))
        ends = {e for _, _, e in reach}
        if len(ends) != 1:
            known = input_lengths() if input_lengths is not None else None
            s, length = maps[0].strides[axis], known[axis] if known else None
            if s == 1:
                raise FoldError(f"branch outputs do not line up on spatial axis {axis} (pads)")
            if length is None:
                raise FoldError(f"branch outputs line up on spatial axis {axis} only for some input "
                                f"lengths (pads, stride {s}), and the model does not record its length")
            if len({(length - 1 + e) // s for e in ends}) != 1:
                raise FoldError(f"branch outputs do not line up on spatial axis {axis} (pads, stride {s}, "
                                f"input length {length})")
        left, right = max(r[0] for r in reach), max(r[1] for r in reach)
        if any((left - b) % d or (right - r) % d for b, r, _ in reach):
            raise FoldError(f"branch kernel centres do not line up on spatial axis {axis}")
        sizes.append((left + right) // d + 1)
        for i, (b, _, _) in enumerate(reach):
            offsets[i].append((left - b) // d)
        pads_begin.append(left)
        pads_end.append(min(ends) + right)
    out, in_per_group = maps[0].kernel.shape[:2]
    kernel = np.zeros((out, in_per_group) + tuple(sizes))
    bias = np.zeros(out)
    for m, offset in zip(maps, offsets):
        window = tuple(slice(o, o + k) for o, k in zip(offset, m.kernel.shape[2:]))
        kernel[(slice(None), slice(None)) + window] += m.kernel
        bias += m.bias
    return ConvMap(kernel, bias, groups, maps[0].strides, tuple(dilations),
                   tuple(pads_begin + pads_end), all(m.diagonal for m in maps),
                   [s for m in maps for s in m.sources])


def negate(m: ConvMap) -> ConvMap:
    return ConvMap(-m.kernel, -m.bias, m.groups, m.strides, m.dilations, m.pads, m.diagonal, m.sources)


def is_one_by_one(m: ConvMap) -> bool:
    """A 1x1 kernel with stride 1: each output position sees one input position (or, where the map
    pads, none, and gives its bias)."""
    return all(k == 1 for k in m.kernel.shape[2:]) and all(s == 1 for s in m.strides)


def pad_map(m: ConvMap, axis: int, before: int, after: int, values, rtol: float) -> ConvMap:
    """m(x) padded on spatial `axis` with `before` and `after` positions of the per-channel `values`,
    as one convolution of x. Exact when m is 1x1 with stride 1, whose output at a padded input
    position is its bias, and the values are that bias (within `rtol`, the rounding of the
    values' dtype): DBB's BatchNorm-and-pad pads with the BatchNormalization's value at zero."""
    if not is_one_by_one(m):
        raise FoldError("padding after a convolution larger than 1x1, or strided, is not padding of its input")
    scale = max(1.0, float(np.max(np.abs(m.bias), initial=0.0)))
    if not np.allclose(values, m.bias, rtol=rtol, atol=rtol * scale):
        raise FoldError("the padding value is not what the branch gives where its input is padded")
    pads = list(m.pads)
    pads[axis] += before
    pads[axis + m.rank] += after
    return ConvMap(m.kernel, m.bias, m.groups, m.strides, m.dilations, tuple(pads), m.diagonal, m.sources)


def compose_maps(first: ConvMap, second: ConvMap) -> ConvMap:
    """second(first(x)) as one convolution, where that is exact.

    Exact cases: `first` is 1x1 with stride 1 (padded or not), and `second` pads nothing or `first`
    has a zero bias (padding inserts zeros, not first's bias); or `second` is 1x1, stride 1 and
    unpadded (it only mixes first's output channels). Both dense, or both with the same groups
    (group j of first's output is then group j of second's input, and each group composes
    alone); a diagonal map takes the other's groups.
    """
    def is_pointwise(m):
        return is_one_by_one(m) and not any(m.pads)

    if first.rank != second.rank or first.out_channels != second.in_channels:
        raise FoldError("the convolutions in sequence do not fit together")
    rigid = {m.groups for m in (first, second) if not m.diagonal}
    if len(rigid) > 1:
        raise FoldError(f"convolutions in sequence with different groups {sorted(rigid)} do not compose into one")
    groups = rigid.pop() if rigid else first.groups
    first, second = regroup(first, groups), regroup(second, groups)
    diagonal = first.diagonal and second.diagonal
    sources = first.sources + second.sources
    g = groups
    if is_one_by_one(first) and (not any(second.pads) or not np.any(first.bias)):
        mix = first.kernel.reshape(g, first.out_channels // g, -1)  # [g, M1/g, C1/g]
        outer = second.kernel.reshape((g, second.out_channels // g) + second.kernel.shape[1:])
        # W[m, c, k] = sum_j second[m, j, k] * first[j, c] within each group;
        # b = second_b + sum_{j,k} second[m, j, k] * first_b[j]
        kernel = np.einsum("gmj...,gjc->gmc...", outer, mix).reshape(
            (second.out_channels, mix.shape[2]) + second.kernel.shape[2:])
        taps = outer.sum(axis=tuple(range(3, outer.ndim)))  # [g, M2/g, M1/g]
        bias = second.bias + np.einsum("gmj,gj->gm", taps, first.bias.reshape(g, -1)).reshape(-1)
        # first pads x itself (its output there is its bias); second pads first's output with zeros,
        # which is first's padding too when its bias is zero
        pads = tuple(a + b for a, b in zip(first.pads, second.pads))
        return ConvMap(kernel, bias, g, second.strides, second.dilations, pads, diagonal, sources)
    if is_pointwise(second):
        mix = second.kernel.reshape(g, second.out_channels // g, -1)  # [g, M2/g, M1/g]
        inner = first.kernel.reshape((g, first.out_channels // g) + first.kernel.shape[1:])
        kernel = np.einsum("gmj,gjc...->gmc...", mix, inner).reshape(
            (second.out_channels,) + first.kernel.shape[1:])
        bias = second.bias + np.einsum("gmj,gj->gm", mix, first.bias.reshape(g, -1)).reshape(-1)
        return ConvMap(kernel, bias, g, first.strides, first.dilations, first.pads, diagonal, sources)
    raise FoldError("a padded convolution after a biased one does not compose exactly")
