"""Pure numpy maths for folding an affine map into a linear operator's weights: no ONNX types here.

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
    finite_extremes(out, what)
    return out


def finite_extremes(values: np.ndarray, what: str) -> tuple[float, float]:
    """(max, min) of folded values, refusing inf or NaN. Reads max and min only: nothing is copied."""
    if not values.size:
        return 0.0, 0.0
    high, low = float(np.max(values)), float(np.min(values))  # NaN propagates through both
    if math.isnan(high) or math.isnan(low):
        raise FoldError(f"folded {what} is not finite")
    if math.isinf(high) or math.isinf(low):
        raise FoldError(f"folded {what} overflows {values.dtype.name}")
    return high, low


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
    become inf or NaN there (checked on the values before the cast: a value just above the
    dtype's largest would round down to it, and is refused all the same)."""
    values = np.asarray(values)
    high, low = finite_extremes(values, what)
    if max(abs(high), abs(low)) > float(ml_dtypes.finfo(np.dtype(dtype)).max):
        raise FoldError(f"folded {what} overflows {np.dtype(dtype).name}")
    return values if values.dtype == np.dtype(dtype) else values.astype(dtype)
