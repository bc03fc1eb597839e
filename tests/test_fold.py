"""The fold formulas against a direct convolution written with numpy: no ONNX involved."""

import ml_dtypes
import numpy as np
import pytest

from onnx_fuse import convmap, fold


def conv1d(x, w, b=None, groups=1):
    """Direct grouped 1-D convolution, no padding, stride 1: x [N, C, L], w [M, C/g, K]."""
    n, c, length = x.shape
    m, cg, k = w.shape
    out = np.zeros((n, m, length - k + 1))
    for o in range(m):
        g = o // (m // groups)
        for t in range(length - k + 1):
            out[:, o, t] = np.einsum("nck,ck->n", x[:, g * cg:(g + 1) * cg, t:t + k], w[o])
    return out + (0 if b is None else b[None, :, None])


def conv_transpose1d(x, w, b=None, groups=1):
    """Direct grouped 1-D transposed convolution, stride 1: x [N, C, L], w [C, M/g, K]."""
    n, c, length = x.shape
    _, mg, k = w.shape
    cg = c // groups
    out = np.zeros((n, mg * groups, length + k - 1))
    for i in range(c):
        g = i // cg
        for t in range(length):
            out[:, g * mg:(g + 1) * mg, t:t + k] += x[:, i, t][:, None, None] * w[i][None]
    return out + (0 if b is None else b[None, :, None])


rng = np.random.default_rng(0)


@pytest.fixture(autouse=True, params=["one-slab", "many-slabs"])
def slabs(request, monkeypatch):
    """Every formula again with weights folded a few rows at a time, as large weights are."""
    if request.param == "many-slabs":
        monkeypatch.setattr(fold, "CHUNK_BYTES", 64)


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("bias", [True, False])
def test_affine_after_conv(groups, bias):
    x, w = rng.normal(size=(2, 6, 9)), rng.normal(size=(6, 6 // groups, 3))
    b = rng.normal(size=6) if bias else None
    a, s = rng.normal(size=6), rng.normal(size=6)
    fw, fb = fold.fold_affine_after_conv(w, b, a, s, groups)
    expected = conv1d(x, w, b, groups) * a[None, :, None] + s[None, :, None]
    np.testing.assert_allclose(conv1d(x, fw, fb, groups), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_affine_after_conv_transpose(groups):
    x, w = rng.normal(size=(2, 6, 5)), rng.normal(size=(6, 12 // groups, 3))
    a, s = rng.normal(size=12), rng.normal(size=12)
    fw, fb = fold.fold_affine_after_conv(w, None, a, s, groups, transposed=True)
    expected = conv_transpose1d(x, w, None, groups) * a[None, :, None] + s[None, :, None]
    np.testing.assert_allclose(conv_transpose1d(x, fw, fb, groups), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_affine_before_unpadded_conv(groups):
    x, w = rng.normal(size=(2, 6, 9)), rng.normal(size=(12, 6 // groups, 3))
    a, s = rng.normal(size=6), rng.normal(size=6)
    fw, fb = fold.fold_affine_before_conv(w, None, a, s, groups)
    expected = conv1d(x * a[None, :, None] + s[None, :, None], w, None, groups)
    np.testing.assert_allclose(conv1d(x, fw, fb, groups), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_folds(trans_b):
    x, w, c = rng.normal(size=(3, 4)), rng.normal(size=(5, 4) if trans_b else (4, 5)), rng.normal(size=5)
    a, s = rng.normal(size=5), rng.normal(size=5)
    wk = w.T if trans_b else w
    fw, fc = fold.fold_affine_after_gemm(w, c, a, s, trans_b, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(x @ (fw.T if trans_b else fw) + fc, (0.5 * x @ wk + 2.0 * c) * a + s, rtol=1e-12)
    a, s = rng.normal(size=4), rng.normal(size=4)
    fw, fc = fold.fold_affine_before_gemm(w, c, a, s, trans_b, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(x @ (fw.T if trans_b else fw) + fc, 0.5 * (x * a + s) @ wk + 2.0 * c, rtol=1e-12)


def test_bn_as_affine():
    x = rng.normal(size=(4, 3))
    scale, bias, mean, var = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.1, 1, 3)
    a, b = fold.bn_as_affine(scale, bias, mean, var, 1e-3)
    np.testing.assert_allclose(x * a + b, scale * (x - mean) / np.sqrt(var + 1e-3) + bias, rtol=1e-12)


def test_bn_with_non_positive_variance_is_refused():
    with pytest.raises(fold.FoldError, match="not positive"):
        fold.bn_as_affine([1.0], [0.0], [0.0], [-1.0], 1e-5)


@pytest.mark.parametrize("dtype,too_large", [(np.float16, 7e4), (np.float32, 4e38), (ml_dtypes.bfloat16, 4e38)])
def test_cast_like_keeps_dtype_and_refuses_overflow(dtype, too_large):
    assert fold.cast_like(np.array([1.5, -2.0]), dtype, "w").dtype == np.dtype(dtype)
    with pytest.raises(fold.FoldError, match="overflows"):
        fold.cast_like(np.array([1.0, -too_large]), dtype, "w")


def test_cast_like_refuses_nan():
    with pytest.raises(fold.FoldError, match="not finite"):
        fold.cast_like(np.array([np.nan]), np.float32, "w")


def strided_conv1d(x, m: convmap.ConvMap):
    """Direct 1-D convolution of a ConvMap (groups 1): zero pads, stride, dilation."""
    begin, end = m.pads
    padded = np.pad(x, ((0, 0), (0, 0), (begin, end)))
    s, d = m.strides[0], m.dilations[0]
    k = m.kernel.shape[2]
    length = (padded.shape[2] - d * (k - 1) - 1) // s + 1
    taps = np.stack([padded[:, :, t * s: t * s + d * (k - 1) + 1: d] for t in range(length)], axis=2)
    return np.einsum("nctk,ock->not", taps, m.kernel) + m.bias[None, :, None]


def one_d_map(k, pads, stride=2, seed=0):
    r = np.random.default_rng(seed)
    return convmap.ConvMap(r.standard_normal((3, 3, k)), r.standard_normal(3), 1, (stride,), (1,), tuple(pads))


@pytest.mark.parametrize("length", [8, 9])
def test_strided_same_padding_merges_where_the_outputs_line_up(length):
    """Keras 'same' with stride 2: a 3x3 padded at the end only beside an unpadded 1x1. On an even
    input both give length/2 outputs and the 1x1 sits at the kernel's first tap; on an odd one
    the 3x3 pads 1 on each side and its 1x1 twin sits in the middle."""
    pads3 = (0, 1) if length % 2 == 0 else (1, 1)
    maps = [one_d_map(3, pads3), one_d_map(1, (0, 0), seed=1)]
    x = rng.standard_normal((2, 3, length))
    merged = convmap.sum_maps(maps, lambda: [length])
    assert merged.kernel.shape[2] == 3
    np.testing.assert_allclose(strided_conv1d(x, merged), strided_conv1d(x, maps[0]) + strided_conv1d(x, maps[1]),
                               rtol=1e-12, atol=1e-12)


def test_strided_branches_that_line_up_only_for_some_lengths_need_the_length():
    maps = [one_d_map(3, (0, 1)), one_d_map(1, (0, 0), seed=1)]
    with pytest.raises(fold.FoldError, match="does not record its length"):
        convmap.sum_maps(maps, lambda: [None])
    with pytest.raises(fold.FoldError, match="input length 9"):
        convmap.sum_maps(maps, lambda: [9])  # 4 outputs from the 3x3, 5 from the 1x1


def test_padding_after_a_1x1_with_its_bias_is_padding_of_its_input():
    """pad_v(m(x)) == m(pad_0(x)) for a 1x1 m when v is m's bias; then a 3x3 after it composes."""
    r = np.random.default_rng(5)
    first = convmap.ConvMap(r.standard_normal((3, 3, 1)), r.standard_normal(3), 1, (1,), (1,), (0, 0))
    second = convmap.ConvMap(r.standard_normal((3, 3, 3)), r.standard_normal(3), 1, (1,), (1,), (0, 0))
    x = r.standard_normal((2, 3, 8))
    padded = np.concatenate([np.broadcast_to(first.bias[None, :, None], (2, 3, 1)), strided_conv1d(x, first),
                             np.broadcast_to(first.bias[None, :, None], (2, 3, 2))], axis=2)
    m = convmap.pad_map(first, 0, 1, 2, first.bias.astype(np.float32), 8 * float(np.finfo(np.float32).eps))
    np.testing.assert_allclose(strided_conv1d(x, m), padded, rtol=1e-6, atol=1e-6)
    merged = convmap.compose_maps(m, second)
    np.testing.assert_allclose(strided_conv1d(x, merged), strided_conv1d(padded, second), rtol=1e-10, atol=1e-10)
    with pytest.raises(fold.FoldError, match="padding value"):
        convmap.pad_map(first, 0, 1, 1, first.bias + 0.1, 1e-6)
    with pytest.raises(fold.FoldError, match="larger than 1x1"):
        convmap.pad_map(second, 0, 1, 1, second.bias, 1e-6)
