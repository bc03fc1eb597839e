"""Pure numpy maths for folding linear maps: no ONNX types here.

Every function takes and returns numpy arrays, computes in float64, and leaves the cast back to
the weight's dtype to `cast_like`, which refuses values the dtype cannot hold.
"""

from __future__ import annotations

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


def conv_output_channel_view(weight_shape, groups: int, transposed: bool) -> tuple[tuple, tuple]:
    """Shapes to view a conv weight and a per-output-channel vector so that they broadcast.

    Conv weight is [M, C/g, k...]: output channels on axis 0.
    ConvTranspose weight is [C, M/g, k...]: output channel of (row i, column j) is
    (i // (C/g)) * (M/g) + j, so the weight is viewed as [g, C/g, M/g, k...].
    """
    spatial = tuple(weight_shape[2:])
    ones = (1,) * len(spatial)
    if not transposed:
        return tuple(weight_shape), (weight_shape[0], 1) + ones
    c, m_per_group = weight_shape[0], weight_shape[1]
    w_view = (groups, c // groups, m_per_group) + spatial
    v_view = (groups, 1, m_per_group) + ones
    return w_view, v_view


def conv_out_channels(weight_shape, groups: int, transposed: bool) -> int:
    return weight_shape[1] * groups if transposed else weight_shape[0]


def fold_affine_after_conv(weight, bias, a, b, groups: int = 1, transposed: bool = False):
    """conv(x; W, B) * a + b == conv(x; W', B'), a and b per output channel (or scalars)."""
    w = as_f64(weight)
    m = conv_out_channels(w.shape, groups, transposed)
    a = np.broadcast_to(as_f64(a).reshape(-1), (m,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (m,))
    w_view, v_view = conv_output_channel_view(w.shape, groups, transposed)
    # W'[o] = W[o] * a[o]
    folded_w = (w.reshape(w_view) * a.reshape(v_view)).reshape(w.shape)
    # B' = B * a + b
    bias64 = np.zeros(m) if bias is None else as_f64(bias)
    return folded_w, bias64 * a + b


def fold_affine_before_conv(weight, bias, a, b, groups: int = 1):
    """conv(x * a + b; W, B) == conv(x; W', B') for an unpadded Conv, a and b per input channel.

    Without padding every output sums b over the whole kernel window, so the shift becomes a
    per-output-channel bias. (With zero padding the window would also see zeros, not b.)
    """
    w = as_f64(weight)
    m, c_per_group = w.shape[0], w.shape[1]
    c = c_per_group * groups
    a = np.broadcast_to(as_f64(a).reshape(-1), (c,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (c,))
    spatial_ones = (1,) * (w.ndim - 2)
    # input channel seen by W[o, i] is (o // (M/g)) * (C/g) + i
    grouped = w.reshape((groups, m // groups, c_per_group) + w.shape[2:])
    a_view = a.reshape((groups, 1, c_per_group) + spatial_ones)
    b_view = b.reshape((groups, 1, c_per_group) + spatial_ones)
    folded_w = (grouped * a_view).reshape(w.shape)
    # B'[o] = B[o] + sum_{i,k} W[o, i, k] * b[channel(o, i)]
    shift = (grouped * b_view).reshape(m, -1).sum(axis=1)
    bias64 = np.zeros(m) if bias is None else as_f64(bias)
    return folded_w, bias64 + shift


def fold_affine_after_gemm(weight, bias, a, b, trans_b: bool, alpha: float = 1.0, beta: float = 1.0):
    """(alpha * A @ W + beta * C) * a + b == A @ W' + C' with alpha = beta = 1, per output feature.

    W is [K, N] ([N, K] when trans_b); C broadcasts to [M, N] and keeps its own shape where it can.
    """
    w = as_f64(weight)
    n = w.shape[0] if trans_b else w.shape[1]
    a = np.broadcast_to(as_f64(a).reshape(-1), (n,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (n,))
    folded_w = alpha * (w * a[:, None] if trans_b else w * a[None, :])
    c = np.zeros(n) if bias is None else as_f64(bias)
    # C' = beta * C * a + b  (broadcast along the last axis, the feature axis)
    return folded_w, beta * c * a + b


def fold_affine_before_gemm(weight, bias, a, b, trans_b: bool, alpha: float = 1.0, beta: float = 1.0):
    """alpha * (A * a + b) @ W + beta * C == A @ W' + C' with alpha = beta = 1, per input feature."""
    w = as_f64(weight)
    w_kn = w.T if trans_b else w
    k, n = w_kn.shape
    a = np.broadcast_to(as_f64(a).reshape(-1), (k,))
    b = np.broadcast_to(as_f64(b).reshape(-1), (k,))
    folded = alpha * w_kn * a[:, None]
    c = np.zeros(n) if bias is None else as_f64(bias)
    # C' = beta * C + alpha * (b @ W)
    new_c = beta * c + alpha * (b @ w_kn)
    return (folded.T if trans_b else folded), new_c


def cast_like(values: np.ndarray, dtype, what: str) -> np.ndarray:
    """Cast float64 fold results back to `dtype`, refusing anything that would become inf or NaN."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise FoldError(f"folded {what} is not finite")
    dtype = np.dtype(dtype)
    limit = float(ml_dtypes.finfo(dtype).max)
    if values.size and float(np.max(np.abs(values))) > limit:
        raise FoldError(f"folded {what} overflows {dtype.name}")
    return values.astype(dtype)
