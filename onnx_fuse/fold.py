"""Pure numpy maths for folding linear maps: no ONNX types here.

Every function takes and returns numpy arrays, computes in float64, and leaves the cast back to
the weight's dtype to `cast_like`, which refuses values the dtype cannot hold.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np


class FoldError(ValueError):
    """A fold that cannot be done exactly (the message is the reason shown to the user)."""


def as_f64(values) -> np.ndarray:
    return np.asarray(values).astype(np.float64)


def bn_as_affine(scale, bias, mean, var, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization(x) == x * a + b, per channel."""
    # a = scale / sqrt(var + eps);  b = bias - mean * a
    var = as_f64(var) + float(epsilon)
    if np.any(var <= 0):
        raise FoldError("BatchNormalization variance + epsilon is not positive")
    a = as_f64(scale) / np.sqrt(var)
    b = as_f64(bias) - as_f64(mean) * a
    return a, b


CHUNK_BYTES = 32 << 20  # float64 working set per step: large weights are folded a slab at a time


def row_slabs(weight: np.ndarray):
    """Slices of axis 0 whose float64 copy stays within CHUNK_BYTES."""
    rows = weight.shape[0]
    per_row = max(1, (weight.size // max(rows, 1)) * 8)
    step = max(1, CHUNK_BYTES // per_row)
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def scale_rows(weight, factor, what: str = "weight") -> np.ndarray:
    """weight * factor(rows) in the weight's dtype: each product is computed in float64 and
    rounded once, slab by slab, without a float64 copy of the weight. `factor(rows)` gives the
    float64 factors that broadcast against weight[rows]. Refuses a result that is not finite."""
    weight = np.asarray(weight)
    out = np.empty(weight.shape, dtype=weight.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        for rows in row_slabs(weight):
            np.multiply(weight[rows], factor(rows), out=out[rows], dtype=np.float64, casting="unsafe")
    check_finite(out, what)
    return out


def check_finite(values: np.ndarray, what: str):
    """Refuse folded values that became inf or NaN (max and min only: nothing is copied)."""
    if values.size:
        high, low = float(np.max(values)), float(np.min(values))  # NaN propagates through both
        if not (math.isfinite(high) and math.isfinite(low)):
            if math.isnan(high) or math.isnan(low):
                raise FoldError(f"folded {what} is not finite")
            raise FoldError(f"folded {what} overflows {values.dtype.name}")


def conv_out_channels(weight_shape, groups: int, transposed: bool) -> int:
    return weight_shape[1] * groups if transposed else weight_shape[0]


def _row_indices(rows: slice) -> np.ndarray:
    return np.arange(rows.start, rows.stop)


def fold_affine_after_conv(weight, bias, a, b, groups: int = 1, transposed: bool = False):
    """conv(x; W, B) * a + b == conv(x; W', B'), a and b per output channel (or scalars).

    Returns W' in W's dtype (computed in float64) and B' in float64.
    """
    weight = np.asarray(weight)
    m = conv_out_channels(weight.shape, groups, transposed)
    a = np.broadcast_to(as_f64(a).reshape(-1), (m,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (m,))
    ones = (1,) * (weight.ndim - 2)
    if not transposed:
        # W'[o] = W[o] * a[o]
        def factor(rows):
            return a[rows].reshape((-1, 1) + ones)
    else:
        # ConvTranspose W is [C, M/g, k...]: (row i, column j) feeds output (i // (C/g)) * (M/g) + j
        per_group = a.reshape(groups, -1)

        def factor(rows):
            return per_group[_row_indices(rows) // (weight.shape[0] // groups)].reshape((-1, weight.shape[1]) + ones)
    folded = scale_rows(weight, factor)
    # B' = B * a + b
    bias64 = np.zeros(m) if bias is None else as_f64(bias)
    return folded, bias64 * a + b


def fold_affine_before_conv(weight, bias, a, b, groups: int = 1):
    """conv(x * a + b; W, B) == conv(x; W', B') for an unpadded Conv, a and b per input channel.

    Without padding every output sums b over the whole kernel window, so the shift becomes a
    per-output-channel bias. (With zero padding the window would also see zeros, not b.)
    Returns W' in W's dtype (computed in float64) and B' in float64.
    """
    weight = np.asarray(weight)
    m, c_per_group = weight.shape[0], weight.shape[1]
    c = c_per_group * groups
    ones = (1,) * (weight.ndim - 2)
    # the input channel seen by W[o, i] is (o // (M/g)) * (C/g) + i
    a_in = np.broadcast_to(as_f64(a).reshape(-1), (c,)).reshape(groups, c_per_group)
    b_in = np.broadcast_to(as_f64(b).reshape(-1), (c,)).reshape(groups, c_per_group)

    def seen(values, rows):
        return values[_row_indices(rows) // (m // groups)].reshape((-1, c_per_group) + ones)

    folded = scale_rows(weight, lambda rows: seen(a_in, rows))
    # B'[o] = B[o] + sum_{i,k} W[o, i, k] * b[channel(o, i)]
    shift = np.zeros(m)
    for rows in row_slabs(weight):
        shift[rows] = (weight[rows].astype(np.float64) * seen(b_in, rows)).reshape(rows.stop - rows.start, -1).sum(1)
    bias64 = np.zeros(m) if bias is None else as_f64(bias)
    return folded, bias64 + shift


def fold_affine_after_gemm(weight, bias, a, b, trans_b: bool, alpha: float = 1.0, beta: float = 1.0):
    """(alpha * A @ W + beta * C) * a + b == A @ W' + C' with alpha = beta = 1, per output feature.

    W is [K, N] ([N, K] when trans_b); C broadcasts to [M, N] and keeps its own shape where it can.
    Returns W' in W's dtype (computed in float64) and C' in float64.
    """
    weight = np.asarray(weight)
    n = weight.shape[0] if trans_b else weight.shape[1]
    a = np.broadcast_to(as_f64(a).reshape(-1), (n,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (n,))
    # W'[k, n] = alpha * W[k, n] * a[n]
    if trans_b:
        folded = scale_rows(weight, lambda rows: alpha * a[rows][:, None])
    else:
        folded = scale_rows(weight, lambda rows: alpha * a[None, :])
    c = np.zeros(n) if bias is None else as_f64(bias)
    # C' = beta * C * a + b  (broadcast along the last axis, the feature axis)
    return folded, beta * c * a + b


def fold_affine_before_gemm(weight, bias, a, b, trans_b: bool, alpha: float = 1.0, beta: float = 1.0):
    """alpha * (A * a + b) @ W + beta * C == A @ W' + C' with alpha = beta = 1, per input feature.
    Returns W' in W's dtype (computed in float64) and C' in float64."""
    weight = np.asarray(weight)
    k, n = weight.shape[::-1] if trans_b else weight.shape
    a = np.broadcast_to(as_f64(a).reshape(-1), (k,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (k,))
    # W'[k, n] = alpha * a[k] * W[k, n];  C' = beta * C + alpha * (b @ W)
    shift = np.zeros(n)
    if trans_b:
        folded = scale_rows(weight, lambda rows: alpha * a[None, :])
        for rows in row_slabs(weight):
            shift[rows] = weight[rows].astype(np.float64) @ b
    else:
        folded = scale_rows(weight, lambda rows: alpha * a[rows][:, None])
        for rows in row_slabs(weight):
            shift += b[rows] @ weight[rows].astype(np.float64)
    c = np.zeros(n) if bias is None else as_f64(bias)
    return folded, beta * c + alpha * shift


def cast_like(values: np.ndarray, dtype, what: str) -> np.ndarray:
    """Cast fold results (float64, or already in `dtype`) to `dtype`, refusing anything that would
    become inf or NaN there. Checks with max and min only, so a large weight is not copied."""
    values = np.asarray(values)
    if values.size:
        high, low = float(np.max(values)), float(np.min(values))  # NaN propagates through both
        if not (np.isfinite(high) and np.isfinite(low)):
            raise FoldError(f"folded {what} is not finite")
        if max(abs(high), abs(low)) > float(ml_dtypes.finfo(np.dtype(dtype)).max):
            raise FoldError(f"folded {what} overflows {np.dtype(dtype).name}")
    return values if values.dtype == np.dtype(dtype) else values.astype(dtype)


# ---- linear maps that are one convolution -----------------------------------------------------

from dataclasses import dataclass, field  # noqa: E402


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


def compose_maps(first: ConvMap, second: ConvMap) -> ConvMap:
    """second(first(x)) as one convolution, where that is exact.

    Exact cases: `first` is 1x1, stride 1 and unpadded, and `second` pads nothing or `first` has
    a zero bias (padding inserts zeros, not first's bias); or `second` is 1x1, stride 1 and
    unpadded (it only mixes first's output channels). Both dense, or both with the same groups
    (group j of first's output is then group j of second's input, and each group composes
    alone); a diagonal map takes the other's groups.
    """
    def is_pointwise(m):
        return (all(k == 1 for k in m.kernel.shape[2:]) and all(s == 1 for s in m.strides)
                and not any(m.pads))

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
    if is_pointwise(first) and (not any(second.pads) or not np.any(first.bias)):
        mix = first.kernel.reshape(g, first.out_channels // g, -1)  # [g, M1/g, C1/g]
        outer = second.kernel.reshape((g, second.out_channels // g) + second.kernel.shape[1:])
        # W[m, c, k] = sum_j second[m, j, k] * first[j, c] within each group;
        # b = second_b + sum_{j,k} second[m, j, k] * first_b[j]
        kernel = np.einsum("gmj...,gjc->gmc...", outer, mix).reshape(
            (second.out_channels, mix.shape[2]) + second.kernel.shape[2:])
        taps = outer.sum(axis=tuple(range(3, outer.ndim)))  # [g, M2/g, M1/g]
        bias = second.bias + np.einsum("gmj,gj->gm", taps, first.bias.reshape(g, -1)).reshape(-1)
        return ConvMap(kernel, bias, g, second.strides, second.dilations, second.pads, diagonal, sources)
    if is_pointwise(second):
        mix = second.kernel.reshape(g, second.out_channels // g, -1)  # [g, M2/g, M1/g]
        inner = first.kernel.reshape((g, first.out_channels // g) + first.kernel.shape[1:])
        kernel = np.einsum("gmj,gjc...->gmc...", mix, inner).reshape(
            (second.out_channels,) + first.kernel.shape[1:])
        bias = second.bias + np.einsum("gmj,gj->gm", mix, first.bias.reshape(g, -1)).reshape(-1)
        return ConvMap(kernel, bias, g, first.strides, first.dilations, first.pads, diagonal, sources)
    raise FoldError("a padded convolution after a biased one does not compose exactly")
