"""Pooling, LRN and upsampling against kernels/reference.py, gradchecks and errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numbaconv.kernels import reference as R

import numbaconv as nc
import numbaconv.functional as F
from tests.helpers import t64


@st.composite
def pool_configs(draw, dilation=True):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - 2 * ph), eh + 8))
    w = draw(st.integers(max(1, ew - 2 * pw), ew + 8))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), k=(kh, kw),
                s=(sh, sw), p=(ph, pw), d=(dh, dw), ceil=draw(st.booleans()))


@given(cfg=pool_configs(), seed=st.integers(0, 2**16), ties=st.booleans())
def test_max_pool2d_matches_reference(cfg, seed, ties):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(cfg["shape"]).astype(np.float32)
    if ties:  # ReLU-like input: many equal zeros, where the first-maximum rule matters
        x = np.maximum(np.round(x), 0).astype(np.float32)
    X = nc.tensor(x, requires_grad=True)
    y, idx = F.max_pool2d(X, cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"],
                          return_indices=True)
    ry, ridx = R.max_pool2d(x, cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"])
    np.testing.assert_array_equal(y.numpy(), ry)
    np.testing.assert_array_equal(idx.numpy(), ridx)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(nc.tensor(gy))
    np.testing.assert_allclose(X.grad.numpy(), R.max_pool2d_grad(gy, ridx, x.shape), atol=1e-5)


@given(cfg=pool_configs(dilation=False), seed=st.integers(0, 2**16),
       include=st.booleans(), divisor=st.sampled_from([None, None, 3]))
def test_avg_pool2d_matches_reference(cfg, seed, include, divisor):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(cfg["shape"])
    args = (cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], include, divisor)
    y = F.avg_pool2d(t64(x, False), *args)
    np.testing.assert_allclose(y.numpy(), R.avg_pool2d(x, *args), atol=1e-12)
    small = x[:1, :1, :6, :6]
    if min(small.shape[2:]) + 2 * max(cfg["p"]) >= max(cfg["k"]):
        try:
            nc.gradcheck(lambda t: F.avg_pool2d(t, *args), (t64(small),))
        except ValueError:  # this config does not fit the cropped input
            pass


@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 5), ow=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_adaptive_pools(h, w, oh, ow, seed):
    x = np.random.default_rng(seed).standard_normal((2, 2, h, w))
    np.testing.assert_allclose(F.adaptive_avg_pool2d(t64(x, False), (oh, ow)).numpy(),
                               R.adaptive_avg_pool2d(x, (oh, ow)), atol=1e-12)
    np.testing.assert_array_equal(F.adaptive_max_pool2d(t64(x, False), (oh, ow)).numpy(),
                                  R.adaptive_max_pool2d(x, (oh, ow)))
    nc.gradcheck(lambda t: F.adaptive_avg_pool2d(t, (oh, ow)), (t64(x[:1, :1]),))
    nc.gradcheck(lambda t: F.adaptive_max_pool2d(t, (oh, ow)), (t64(x[:1, :1]),))


@pytest.mark.parametrize("cfg", [
    dict(k=(2, 2), s=(2, 2), p=(0, 0), d=(1, 1), ceil=False),
    dict(k=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), ceil=True),
    dict(k=(3, 2), s=(1, 2), p=(1, 0), d=(2, 1), ceil=False),
])
def test_max_pool_gradcheck(cfg):
    x = np.random.default_rng(0).permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) / 7.0
    nc.gradcheck(lambda t: F.max_pool2d(t, cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"]),
                 (t64(x),))


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 3)])
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("kind", ["random", "ties", "nan", "inf"])
def test_max_pool_unrolled_fast_paths_match_reference(kind, ceil, k, s):
    """The unrolled 2x2/2 kernel (complete windows) keeps the general kernel's rules; the
    general kernel gives the same answers for the neighbouring 3x3 cases."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 12)).astype(np.float32)
    if kind == "ties":
        x = np.maximum(np.round(x), 0).astype(np.float32)
    elif kind == "nan":
        x[rng.random(x.shape) < 0.15] = np.nan
    elif kind == "inf":
        x[rng.random(x.shape) < 0.5] = -np.inf
    X = nc.tensor(x, requires_grad=True)
    y, idx = F.max_pool2d(X, k, s, ceil_mode=ceil, return_indices=True)
    ry, ridx = R.max_pool2d(x, (k, k), (s, s), (0, 0), (1, 1), ceil)
    np.testing.assert_array_equal(y.numpy(), ry)
    np.testing.assert_array_equal(idx.numpy(), ridx)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(nc.tensor(gy))
    np.testing.assert_allclose(X.grad.numpy(), R.max_pool2d_grad(gy, ridx, x.shape), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 9, 11)])
@pytest.mark.parametrize("ceil,divisor", [(False, None), (True, None), (False, 3)])
def test_avg_pool_2x2_fast_path_matches_reference(shape, ceil, divisor):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    X = nc.tensor(x, requires_grad=True)
    y = F.avg_pool2d(X, 2, ceil_mode=ceil, divisor_override=divisor)
    nc.gradcheck(lambda t: F.avg_pool2d(t, 2, ceil_mode=ceil, divisor_override=divisor),
                 (t64(x[:1, :2]),))
    args = ((2, 2), (2, 2), (0, 0), ceil, True, divisor)
    np.testing.assert_allclose(y.numpy(), R.avg_pool2d(x, *args), rtol=1e-6, atol=1e-6)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(nc.tensor(gy))
    oh, ow = y.shape[2:]
    if 2 * oh > x.shape[2] or 2 * ow > x.shape[3]:  # a partial window: the general kernel
        return
    expect = np.zeros_like(x)  # each input pixel in at most one window: its share of that gy
    expect[:, :, :2 * oh, :2 * ow] = np.repeat(np.repeat(gy, 2, axis=2), 2, axis=3) / (
        divisor or 4)
    np.testing.assert_allclose(X.grad.numpy(), expect, rtol=1e-6, atol=1e-6)


def test_max_pool_ties_go_to_first_and_nan_propagates():
    x = nc.tensor(np.zeros((1, 1, 2, 2), np.float32), requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    assert x.grad.numpy().ravel().tolist() == [1, 0, 0, 0]
    xn = np.ones((1, 1, 4, 4), np.float32)
    xn[0, 0, 1, 1] = np.nan
    y = F.max_pool2d(nc.tensor(xn), 2)
    assert np.isnan(y.numpy()[0, 0, 0, 0]) and not np.isnan(y.numpy()[0, 0, 1, 1])


@given(c=st.integers(1, 9), size=st.integers(1, 7), seed=st.integers(0, 2**16),
       alpha=st.sampled_from([1e-4, 0.1, 1.0]), beta=st.sampled_from([0.75, 0.5, 1.3]),
       k=st.sampled_from([1.0, 2.0]))
def test_lrn_matches_reference(c, size, seed, alpha, beta, k):
    x = np.random.default_rng(seed).standard_normal((2, c, 3, 4)) * 3
    y = F.local_response_norm(t64(x, False), size, alpha, beta, k)
    np.testing.assert_allclose(y.numpy(), R.local_response_norm(x, size, alpha, beta, k),
                               rtol=1e-12)
    y32 = F.local_response_norm(nc.tensor(x.astype(np.float32)), size, alpha, beta, k)
    assert y32.dtype == nc.float32
    np.testing.assert_allclose(y32.numpy(), R.local_response_norm(x, size, alpha, beta, k),
                               rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.75, 2.0),
                                               (2, 1.0, 1.5, 1.0), (4, 0.2, 0.6, 0.5)])
def test_lrn_gradcheck(size, alpha, beta, k):
    x = np.random.default_rng(3).standard_normal((2, 6, 2, 3))
    nc.gradcheck(lambda t: F.local_response_norm(t, size, alpha, beta, k), (t64(x),))
    nc.gradcheck(lambda t: F.local_response_norm(t, size, alpha, beta, k),
                 (t64(x[:, :, 0]),))  # 3-D input


@given(h=st.integers(1, 6), w=st.integers(1, 6), data=st.data())
def test_interpolate_nearest(h, w, data):
    x = np.random.default_rng(0).standard_normal((1, 2, h, w))
    if data.draw(st.booleans()):
        size = (data.draw(st.integers(1, 13)), data.draw(st.integers(1, 13)))
        y = F.interpolate(t64(x, False), size=size)
        scales = (h / size[0], w / size[1])
    else:
        sf = data.draw(st.sampled_from([2, 3, 0.5, 1.5, 2.5]))
        size = (int(np.floor(h * sf)), int(np.floor(w * sf)))
        if min(size) < 1:
            with pytest.raises(ValueError, match="empty output"):
                F.interpolate(t64(x, False), scale_factor=sf)
            return
        y = F.interpolate(t64(x, False), scale_factor=sf)
        scales = (1 / sf, 1 / sf)
    np.testing.assert_array_equal(y.numpy(), R.upsample_nearest2d(x, size, scales))
    nc.gradcheck(lambda t: F.interpolate(t, size=size), (t64(x),))


def test_pool_argument_errors():
    x = nc.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="too small"):
        F.max_pool2d(nc.randn(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="stride=.*>= 1"):
        F.avg_pool2d(x, 2, stride=0)
    with pytest.raises(ValueError, match="divisor_override"):
        F.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="output_size"):
        F.adaptive_avg_pool2d(x, 0)
    with pytest.raises(ValueError, match="size=0"):
        F.local_response_norm(x, 0)
    with pytest.raises(ValueError, match="at least 3-D"):
        F.local_response_norm(nc.randn(2, 3), 2)
    with pytest.raises(ValueError, match="mode='bilinear'"):
        F.interpolate(x, scale_factor=2, mode="bilinear")
    with pytest.raises(ValueError, match="exactly one"):
        F.interpolate(x)


def test_backward_kernels_are_deterministic_on_two_threads():
    """Pool, LRN and batch-norm backward run twenty times each on two threads: a race shows up
    as run-to-run differences."""
    import numba

    from numbaconv import nn

    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((8, 6, 13, 13)).astype(np.float32)
    ops = [lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1),
           lambda t: F.adaptive_avg_pool2d(t, 5), lambda t: F.local_response_norm(t, 5),
           lambda t: F.interpolate(t, scale_factor=2), nn.BatchNorm2d(6)]
    for op in ops:
        grads = []
        for _ in range(20):
            x = nc.tensor(x0, requires_grad=True)
            y = op(x)
            y.backward(nc.tensor(np.linspace(-1, 1, y.numel(), dtype=np.float32)
                                 .reshape(y.shape)))
            grads.append(x.grad.numpy())
        for g in grads[1:]:
            assert np.array_equal(g, grads[0])
