"""conv2d and conv_transpose2d: the Numba kernels against kernels/reference.py on many random
configurations, float64 gradchecks, determinism on two threads, and argument errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numbaconv.kernels import reference as R

import numbaconv as nc
import numbaconv.functional as F
from tests.helpers import t64


@st.composite
def conv_configs(draw, max_side=9):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    if draw(st.integers(0, 4)) == 0:  # depthwise
        groups, cg, og = draw(st.integers(2, 4)), 1, draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))  # stride > kernel included
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - 2 * ph), max(eh - 2 * ph, 1) + max_side))
    w = draw(st.integers(max(1, ew - 2 * pw), max(ew - 2 * pw, 1) + max_side))
    n = draw(st.integers(1, 3))
    return dict(n=n, c=cg * groups, o=og * groups, h=h, w=w, k=(kh, kw), s=(sh, sw),
                p=(ph, pw), d=(dh, dw), g=groups)


def _arrays(cfg, rng, dtype):
    x = rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"])).astype(dtype)
    w = rng.standard_normal((cfg["o"], cfg["c"] // cfg["g"]) + cfg["k"]).astype(dtype)
    b = rng.standard_normal(cfg["o"]).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16), noncontig=st.booleans())
def test_conv2d_matches_reference(dtype, tol, cfg, seed, noncontig):
    rng = np.random.default_rng(seed)
    x, w, b = _arrays(cfg, rng, dtype)
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    ref = R.conv2d(x, w, b, *args)
    if noncontig:  # the same values through a transposed view
        X = nc.tensor(np.ascontiguousarray(x.transpose(0, 1, 3, 2)), requires_grad=True)
        xin = X.transpose(2, 3)
    else:
        X = nc.tensor(x, requires_grad=True)
        xin = X
    W, B = nc.tensor(w, requires_grad=True), nc.tensor(b, requires_grad=True)
    y = F.conv2d(xin, W, B, *args)
    assert y.dtype == dtype
    scale = np.abs(x).max() * np.abs(w).sum(axis=(1, 2, 3)).max() + 1
    np.testing.assert_allclose(y.numpy(), ref, atol=tol * scale, rtol=tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(nc.tensor(gy))
    gx = R.conv2d_grad_input(gy, w, x.shape, *args)
    gx_got = X.grad.numpy().transpose(0, 1, 3, 2) if noncontig else X.grad.numpy()
    gscale = np.abs(gy).sum() + 1
    np.testing.assert_allclose(gx_got, gx, atol=tol * gscale, rtol=tol)
    np.testing.assert_allclose(W.grad.numpy(), R.conv2d_grad_weight(gy, x, w.shape, *args),
                               atol=tol * gscale * np.abs(x).max(), rtol=tol)
    np.testing.assert_allclose(B.grad.numpy(), gy.sum(axis=(0, 2, 3)), atol=tol * gscale,
                               rtol=tol)


@given(cfg=conv_configs(max_side=5), seed=st.integers(0, 2**16), data=st.data())
def test_conv_transpose2d_matches_reference(cfg, seed, data):
    rng = np.random.default_rng(seed)
    g = cfg["g"]
    c_in, c_out = cfg["c"], cfg["o"]
    x = rng.standard_normal((cfg["n"], c_in, cfg["h"], cfg["w"]))
    w = rng.standard_normal((c_in, c_out // g) + cfg["k"])
    b = rng.standard_normal(c_out)
    s, d = cfg["s"], cfg["d"]
    op = tuple(data.draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(2))
    k = cfg["k"]
    p = tuple(min(cfg["p"][i], (d[i] * (k[i] - 1) + op[i]) // 2) for i in range(2))
    y = F.conv_transpose2d(t64(x, False), t64(w, False), t64(b, False), s, p, op, g, d)
    np.testing.assert_allclose(y.numpy(), R.conv_transpose2d(x, w, b, s, p, op, g, d),
                               atol=1e-10)


@pytest.mark.parametrize("c_in,c_out,k,s,p,op,g,d", [
    (16, 8, (5, 5), (1, 1), (1, 2), (1, 0), 1, (2, 2)),    # implicit weight gradient
    (8, 8, (5, 5), (1, 1), (1, 2), (1, 0), 4, (2, 2)),     # weight gradient in column blocks
    (16, 16, (3, 3), (2, 2), (1, 1), (2, 1), 1, (3, 1)),   # on stride phases, op >= stride
    (16, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, (1, 1)),
    (16, 12, (3, 2), (2, 3), (0, 1), (1, 2), 1, (1, 1)),   # strided weight gradient blocks
    (32, 32, (3, 3), (1, 1), (1, 1), (0, 0), 1, (1, 1)),   # F(2x2, 3x3) forward and gradients
    (16, 32, (3, 3), (1, 1), (0, 2), (0, 0), 1, (1, 1)),
    (64, 64, (3, 3), (1, 1), (2, 1), (0, 0), 2, (1, 1)),
])
def test_conv_transpose2d_output_padding_gradients(c_in, c_out, k, s, p, op, g, d):
    """conv_transpose2d with output_padding on layers wide enough for the implicit and
    blocked GEMM kernels (its forward is conv2d's input gradient, its weight gradient conv2d's
    with an input that has rows no output reads), and at stride 1 on layers that take the
    Winograd kernels: the output against the reference, and the gradients by directional
    derivatives (exact: the op is linear in each input)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, c_in, 6, 7))
    w = rng.standard_normal((c_in, c_out // g) + k)
    b = rng.standard_normal(c_out)

    def f(x_, w_):
        return F.conv_transpose2d(t64(x_, False), t64(w_, False), t64(b, False), s, p, op, g,
                                  d).numpy()

    y = f(x, w)
    np.testing.assert_allclose(y, R.conv_transpose2d(x, w, b, s, p, op, g, d), atol=1e-9)
    gy = rng.standard_normal(y.shape)
    X, W = t64(x), t64(w)
    F.conv_transpose2d(X, W, t64(b), s, p, op, g, d).backward(nc.tensor(gy))
    for _ in range(2):
        vx, vw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        dx = ((f(x + vx, w) - f(x - vx, w)) * gy).sum() / 2
        dw = ((f(x, w + vw) - f(x, w - vw)) * gy).sum() / 2
        np.testing.assert_allclose((X.grad.numpy() * vx).sum(), dx, rtol=1e-9)
        np.testing.assert_allclose((W.grad.numpy() * vw).sum(), dw, rtol=1e-9)


@pytest.mark.parametrize("cfg", [
    dict(n=2, c=2, o=3, h=5, w=4, k=(3, 2), s=(1, 1), p=(1, 0), d=(1, 1), g=1),
    dict(n=1, c=4, o=2, h=6, w=6, k=(2, 2), s=(2, 3), p=(1, 1), d=(2, 1), g=2),
    dict(n=2, c=3, o=3, h=5, w=5, k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), g=3),
    dict(n=1, c=5, o=4, h=3, w=3, k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1), g=1),
])
def test_conv_gradcheck(cfg):
    rng = np.random.default_rng(0)
    x, w, b = _arrays(cfg, rng, np.float64)
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    nc.gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, *args), (t64(x), t64(w), t64(b)))
    wt = rng.standard_normal((cfg["c"], cfg["o"] // cfg["g"]) + cfg["k"])
    bt = rng.standard_normal(cfg["o"])
    nc.gradcheck(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, cfg["s"], cfg["p"], 0,
                                                       cfg["g"], cfg["d"]),
                 (t64(x), t64(wt), t64(bt)))


def test_conv2d_without_bias_and_unbatched():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    y = F.conv2d(t64(x, False), t64(w, False), padding=1)
    assert y.shape == (4, 7, 7)
    np.testing.assert_allclose(y.numpy(), R.conv2d(x[None], w, None, (1, 1), (1, 1))[0],
                               atol=1e-12)
    nc.gradcheck(lambda a, b: F.conv2d(a, b), (t64(x[None]), t64(w)))


@pytest.mark.parametrize("k,d", [(3, 1), (4, 1), (3, 2), (2, 3)])
def test_padding_same_and_valid(k, d):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 7, 6))
    w = rng.standard_normal((3, 2, k, k))
    y = F.conv2d(t64(x, False), t64(w, False), padding="same", dilation=d)
    assert y.shape == (1, 3, 7, 6)
    total = d * (k - 1)
    xp = np.pad(x, ((0, 0), (0, 0), (total // 2, total - total // 2),
                    (total // 2, total - total // 2)))
    np.testing.assert_allclose(y.numpy(), R.conv2d(xp, w, None, (1, 1), (0, 0), (d, d)),
                               atol=1e-12)
    assert F.conv2d(t64(x, False), t64(w, False), padding="valid").shape[2] == 7 - k + 1


@pytest.mark.parametrize("xs,ws,p,d,g,x_grad", [
    ((4, 1, 13, 11), (6, 1, 5, 5), (2, 2), (1, 1), 1, False),   # LeNet conv1: flat forward
    ((3, 3, 9, 10), (5, 3, 3, 3), (1, 0), (1, 2), 1, True),     # RGB 3x3: flat input gradient
    ((5, 6, 14, 14), (16, 6, 5, 5), (0, 0), (1, 1), 1, True),   # LeNet conv2: flat dW
    ((2, 4, 7, 9), (6, 2, 3, 2), (1, 2), (2, 1), 2, True),      # groups, dilation, asym pad
    ((2, 16, 6, 6), (16, 16, 3, 3), (1, 1), (1, 1), 1, True),   # 3-tap blocks everywhere
    ((3, 32, 5, 7), (32, 32, 3, 3), (1, 1), (1, 1), 1, True),   # flat forward and dW, GEMM dX
    ((2, 8, 6, 9), (12, 4, 3, 3), (2, 1), (2, 2), 2, True),     # 3-tap blocks with groups
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_direct_kernels_match_reference(xs, ws, p, d, g, x_grad, dtype):
    """Stride-1 layers with few channels take the flat direct kernels (no im2col)."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    args = ((1, 1), p, d, g)
    X = nc.tensor(x, requires_grad=x_grad)
    W, B = nc.tensor(w, requires_grad=True), nc.tensor(b, requires_grad=True)
    y = F.conv2d(X, W, B, *args)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y.numpy(), R.conv2d(x, w, b, *args), rtol=tol, atol=tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(nc.tensor(gy))
    np.testing.assert_allclose(W.grad.numpy(), R.conv2d_grad_weight(gy, x, w.shape, *args),
                               rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(B.grad.numpy(), gy.sum(axis=(0, 2, 3)), rtol=tol, atol=tol)
    if x_grad:
        np.testing.assert_allclose(X.grad.numpy(), R.conv2d_grad_input(gy, w, x.shape, *args),
                                   rtol=tol, atol=tol * 10)
    # the input gradient alone (frozen weights) takes its own path
    X2 = nc.tensor(x, requires_grad=True)
    F.conv2d(X2, nc.tensor(w), nc.tensor(b), *args).backward(nc.tensor(gy))
    np.testing.assert_allclose(X2.grad.numpy(), R.conv2d_grad_input(gy, w, x.shape, *args),
                               rtol=tol, atol=tol * 10)
    assert y.dtype == dtype and W.grad.dtype == dtype


def _assert_matches_reference(x, w, b, args, gy, y, grads, dtype, tol):
    """A convolution's output and (input, weight, bias) gradients against the reference, each
    with a tolerance scaled to its magnitude, all of ``dtype``."""
    gx, gw, gb = grads
    scale = np.abs(x).max() * np.abs(w).sum(axis=(1, 2, 3)).max() + 1
    np.testing.assert_allclose(y, R.conv2d(x, w, b, *args), atol=tol * scale, rtol=tol)
    gscale = np.abs(gy).sum() + 1
    np.testing.assert_allclose(gx, R.conv2d_grad_input(gy, w, x.shape, *args),
                               atol=tol * gscale, rtol=tol)
    np.testing.assert_allclose(gw, R.conv2d_grad_weight(gy, x, w.shape, *args),
                               atol=tol * gscale * np.abs(x).max(), rtol=tol)
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)), atol=tol * gscale, rtol=tol)
    assert y.dtype == gx.dtype == gw.dtype == gb.dtype == dtype


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16), trans=st.booleans())
def test_implicit_gemm_matches_reference_on_random_configs(dtype, tol, cfg, seed, trans):
    """Stride-1 convolutions of every shape through the implicit-GEMM path (forced, whatever
    the channel counts; products plain or transposed): forward and all gradients."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck
    from numbaconv.kernels.cpu.conv import implicit, plan

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    cfg = dict(cfg, s=(1, 1))
    rng = np.random.default_rng(seed)
    x, w, b = _arrays(cfg, rng, dtype)
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan, "use_implicit", lambda stride, cg, og: stride == (1, 1))
        mp.setattr(implicit, "transposed", lambda *a: trans)
        y = ck.conv2d_forward(x, w, b, *args)
        gy = rng.standard_normal(y.shape).astype(dtype)
        grads = ck.conv2d_backward(gy, x, w, *args, True, True, True)
    _assert_matches_reference(x, w, b, args, gy, y, grads, dtype, tol)


def _forced_winograd(mp, target, all_at_once):
    """Route every 3x3 stride-1 convolution through F(2x2, 3x3), ``target`` tiles per set of
    products (1 or 2: tile rows of one image; larger: whole images), with all channels read
    and written at once, pixel by pixel, or two at a time."""
    from numbaconv.kernels.cpu.conv import plan
    from numbaconv.kernels.cpu.conv import winograd as wg

    mp.setattr(plan, "use_winograd", lambda kh, kw, stride, dilation, *a, **k:
               (kh, kw) == (3, 3) and stride == (1, 1) and dilation == (1, 1))
    mp.setattr(wg, "_TARGET", target)
    mp.setattr(wg, "_out_group", lambda n_out, plane_bytes: n_out if all_at_once else 2)
    mp.setattr(wg, "_group", lambda n_planes, plane_bytes: n_planes if all_at_once else 2)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16), target=st.sampled_from([1, 2, 5, 128]),
       all_at_once=st.booleans())
def test_winograd_matches_reference_on_random_configs(dtype, tol, cfg, seed, target,
                                                       all_at_once):
    """3x3 stride-1 convolutions of every other shape (odd sizes, padding 0-3, groups, one
    image) through the F(2x2, 3x3) kernels (forced, whatever the channel counts), in sets of
    one tile row up to several images: forward and all gradients."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    cfg = dict(cfg, s=(1, 1), d=(1, 1), k=(3, 3))
    cfg["h"], cfg["w"] = max(cfg["h"], 3 - 2 * cfg["p"][0]), max(cfg["w"], 3 - 2 * cfg["p"][1])
    rng = np.random.default_rng(seed)
    x, w, b = _arrays(cfg, rng, dtype)
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    with pytest.MonkeyPatch.context() as mp:
        _forced_winograd(mp, target, all_at_once)
        y = ck.conv2d_forward(x, w, b, *args)
        gy = rng.standard_normal(y.shape).astype(dtype)
        grads = ck.conv2d_backward(gy, x, w, *args, True, True, True)
    _assert_matches_reference(x, w, b, args, gy, y, grads, dtype, tol)


@pytest.mark.parametrize("xs,o,p,g", [
    ((5, 32, 16, 16), 32, (1, 1), 1),    # ResNet's 32-channel layer
    ((3, 64, 8, 8), 64, (1, 1), 1),
    ((2, 32, 7, 9), 48, (0, 2), 1),      # odd sizes, one-sided padding
    ((3, 32, 6, 6), 32, (3, 1), 1),      # padding 3: input gradient by the implicit GEMMs
    ((1, 64, 5, 5), 64, (1, 1), 2),      # groups
    ((4, 16, 8, 8), 16, (1, 1), 1),      # 16 channels: weight gradient only
    ((2, 16, 16, 16), 32, (1, 1), 1),    # forward and weight gradient
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_dispatch_matches_reference(xs, o, p, g, dtype, monkeypatch):
    """Layers that the dispatch sends to F(2x2, 3x3) (forward, input or weight gradient), with
    their real channel counts, in sets of many tile rows or of one (target 8), through the
    Tensor API: values and all gradients against the reference."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu.conv import plan
    from numbaconv.kernels.cpu.conv import winograd as wg

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    cg, og = xs[1] // g, o // g
    assert plan.use_winograd(3, 3, (1, 1), (1, 1), cg, og, weight=True)
    rng = np.random.default_rng(sum(xs) + o)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal((o, cg, 3, 3)) / np.sqrt(9 * cg)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    tol = 3e-5 if dtype == np.float32 else 1e-12
    for target in (128, 8):
        monkeypatch.setattr(wg, "_TARGET", target)
        X, W, B = (nc.tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(X, W, B, padding=p, groups=g)
        gy = rng.standard_normal(y.shape).astype(dtype)
        y.backward(nc.tensor(gy))
        args = ((1, 1), p, (1, 1), g)
        for got, ref in ((y, R.conv2d(x, w, b, *args)),
                         (X.grad, R.conv2d_grad_input(gy, w, x.shape, *args)),
                         (W.grad, R.conv2d_grad_weight(gy, x, w.shape, *args)),
                         (B.grad, gy.sum(axis=(0, 2, 3)))):
            assert got.dtype == dtype
            np.testing.assert_allclose(got.numpy(), ref, rtol=tol,
                                       atol=tol * (np.abs(ref).max() + 1))


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16), trans=st.booleans())
def test_implicit_strided_forward_matches_reference_on_random_configs(dtype, tol, cfg, seed,
                                                                      trans):
    """Strided forwards and input gradients of every shape (stride > kernel, one-sided
    strides, dilation, groups, padding) through the implicit GEMMs on the stride phases
    (forced, whatever the channel counts; forward products plain or transposed)."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck
    from numbaconv.kernels.cpu.conv import implicit, plan

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    if cfg["s"] == (1, 1):
        cfg = dict(cfg, s=(2, 1))
    rng = np.random.default_rng(seed)
    x, w, b = _arrays(cfg, rng, dtype)
    args = (cfg["s"], cfg["p"], cfg["d"], cfg["g"])
    calls = []
    kernel, input_kernel = implicit.implicit_forward, implicit.implicit_grad_input
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan, "use_implicit_strided", lambda stride, *a: stride != (1, 1))
        mp.setattr(plan, "use_implicit_input_strided", lambda stride, *a: stride != (1, 1))
        mp.setattr(implicit, "transposed", lambda *a: trans)
        mp.setattr(implicit, "implicit_forward", lambda *a: calls.append(1) or kernel(*a))
        mp.setattr(implicit, "implicit_grad_input", lambda *a: calls.append(2) or input_kernel(*a))
        for bias in (b, None):
            y = ck.conv2d_forward(x, w, bias, *args)
            scale = np.abs(x).max() * np.abs(w).sum(axis=(1, 2, 3)).max() + 1
            np.testing.assert_allclose(y, R.conv2d(x, w, bias, *args), atol=tol * scale,
                                       rtol=tol)
            assert y.dtype == dtype
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx = ck.conv2d_backward(gy, None, w, *args, True, False, False, x_shape=x.shape)[0]
    np.testing.assert_allclose(gx, R.conv2d_grad_input(gy, w, x.shape, *args),
                               atol=tol * (np.abs(gy).sum() + 1), rtol=tol)
    assert gx.dtype == dtype
    assert calls == [1, 1, 2]


@pytest.mark.parametrize("trans", [False, True])
def test_implicit_strided_forward_cases(trans, monkeypatch):
    """The stride-phase implicit forward on layers like the real ones and on its edge cases:
    stride 2 with and without padding, 1x1 shortcuts, strides in one direction only, stride 3
    with a 5x5 kernel, dilation, groups, odd sizes, one image."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck
    from numbaconv.kernels.cpu.conv import implicit, plan

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    monkeypatch.setattr(plan, "use_implicit_strided", lambda stride, *a: stride != (1, 1))
    monkeypatch.setattr(plan, "use_implicit_input_strided", lambda stride, *a: stride != (1, 1))
    monkeypatch.setattr(implicit, "transposed", lambda *a: trans)
    rng = np.random.default_rng(5)
    cases = [((3, 16, 12, 12), (32, 16, 3, 3), (2, 2), (1, 1), (1, 1), 1),
             ((2, 16, 13, 11), (16, 16, 3, 3), (2, 2), (0, 0), (1, 1), 1),
             ((3, 8, 14, 14), (16, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1),
             ((2, 8, 9, 10), (8, 8, 3, 3), (2, 1), (1, 1), (1, 1), 1),
             ((2, 8, 9, 10), (8, 8, 3, 2), (1, 3), (0, 1), (1, 1), 1),
             ((2, 8, 17, 16), (12, 8, 5, 5), (3, 3), (2, 2), (1, 1), 1),
             ((2, 8, 15, 15), (8, 8, 3, 3), (2, 2), (2, 2), (2, 2), 1),
             ((2, 12, 11, 9), (12, 4, 3, 3), (2, 2), (1, 1), (1, 1), 3),
             ((1, 8, 7, 7), (4, 8, 7, 7), (4, 4), (3, 3), (1, 1), 1)]
    for xs, ws, s, p, d, g in cases:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        y = ck.conv2d_forward(x, w, b, s, p, d, g)
        np.testing.assert_allclose(y, R.conv2d(x, w, b, s, p, d, g), rtol=1e-4, atol=1e-4)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = ck.conv2d_backward(gy, x, w, s, p, d, g, True, True, True)
        np.testing.assert_allclose(gx, R.conv2d_grad_input(gy, w, x.shape, s, p, d, g),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gw, R.conv2d_grad_weight(gy, x, w.shape, s, p, d, g),
                                   rtol=1e-4, atol=1e-3)
    # conv_transpose2d's output_padding: input rows and columns that no output reaches
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    gx = ck.conv2d_backward(x, None, w, (2, 2), (1, 1), (1, 1), 1, True, False, False,
                            x_shape=(2, 6, 10, 10))[0]
    np.testing.assert_allclose(gx, R.conv2d_grad_input(x, w, (2, 6, 10, 10), (2, 2), (1, 1),
                                                       (1, 1), 1), rtol=1e-4, atol=1e-4)


def _check_grads(need, got, refs, dtype, tol):
    """The (input, weight, bias) gradients asked for by ``need`` match ``refs``; the others
    are None; all keep ``dtype``."""
    for asked, a, ref in zip(need, got, refs):
        if asked:
            np.testing.assert_allclose(a, ref, rtol=tol, atol=tol * 10)
        else:
            assert a is None
        assert a is None or a.dtype == dtype


@pytest.mark.parametrize("blas_in_kernel, blocks", [(True, False), (True, True),
                                                     (False, False)])
@pytest.mark.parametrize("budget", [1 << 18, 600])  # one chunk per task, or many
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_gemm_path_matches_reference(blas_in_kernel, blocks, budget, dtype, monkeypatch):
    """The im2col + GEMM path, forced for every layer: with NumPy's BLAS called from inside the
    Numba kernel and with the fallback that splits GEMMs across Python threads; with small
    column budgets the images go through in many chunks. In-kernel, with ``blocks`` the strided
    forward runs two output rows per product and the weight gradient goes through
    gemm_grad_weight in blocks of 5 columns (stride 1) or 2 output rows, partial ones included;
    without, whole images through gemm_backward."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck
    from numbaconv.kernels.cpu.conv import gemm, plan

    if blas_in_kernel and not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    monkeypatch.setitem(blas_k._state, "ready", blas_in_kernel and blas_k.ready())
    monkeypatch.setattr(gemm, "COLUMN_BUDGET", budget)
    monkeypatch.setattr(gemm, "MIN_COLUMNS", 1)
    monkeypatch.setattr(gemm, "gemm_rows", lambda og, kk1, oh, ow: 2 if blocks else oh)
    monkeypatch.setattr(gemm, "grad_weight_block",
                        lambda flat, m, ow: (5 if flat else 2) if blocks else 0)
    weight_kernel, blocked = gemm.gemm_grad_weight, []
    monkeypatch.setattr(gemm, "gemm_grad_weight", lambda *a: blocked.append(1) or weight_kernel(*a))
    for name in ("use_implicit", "use_flat", "use_flat_input", "use_flat_params"):
        monkeypatch.setattr(plan, name, lambda *a: False)
    rng = np.random.default_rng(7)
    cases = [((5, 6, 9, 8), (8, 3, 3, 3), (1, 1), (1, 1), (1, 1), 2),   # flat layout, groups
             ((3, 4, 11, 10), (6, 4, 3, 2), (2, 3), (1, 0), (1, 2), 1),  # strided, dilated
             ((4, 8, 7, 7), (16, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1),   # 1x1 stride 2
             ((1, 3, 6, 6), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),    # dense, one image
             ((2, 4, 5, 5), (4, 4, 5, 5), (3, 3), (2, 2), (1, 1), 1)]    # stride 3, padding 2
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for xs, ws, s, p, d, g in cases:
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        args = (s, p, d, g)
        y = ck.conv2d_forward(x, w, b, *args)
        np.testing.assert_allclose(y, R.conv2d(x, w, b, *args), rtol=tol, atol=tol)
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx_ref = R.conv2d_grad_input(gy, w, x.shape, *args)
        gw_ref = R.conv2d_grad_weight(gy, x, w.shape, *args)
        for need in [(True, True, True), (True, False, False), (False, True, False),
                     (False, False, True), (True, False, True)]:
            gx, gw, gb = ck.conv2d_backward(gy, x if need[1] else None, w, *args, *need,
                                            x_shape=x.shape)
            _check_grads(need, (gx, gw, gb), (gx_ref, gw_ref, gy.sum(axis=(0, 2, 3))), dtype,
                         tol)
    assert bool(blocked) == blocks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_implicit_weight_gradient_matches_reference(dtype, monkeypatch):
    """implicit_grad_weight (one product per tap of the shifted planes by the transposed
    output gradient), forced: stride 1 padded or read in place, with and without junk
    columns, dilated, grouped, asymmetric padding, one image; strided on the stride phases;
    weight and bias gradients, with and without the input gradient."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck
    from numbaconv.kernels.cpu.conv import implicit, plan

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    calls = []
    kernel = implicit.implicit_grad_weight
    monkeypatch.setattr(implicit, "implicit_grad_weight",
                        lambda *a: calls.append(a[1].shape) or kernel(*a))
    monkeypatch.setattr(plan, "use_implicit_weight", lambda *a: True)
    for name in ("use_flat_params", "use_direct"):
        monkeypatch.setattr(plan, name, lambda *a: False)
    rng = np.random.default_rng(12)
    cases = [((5, 8, 9, 8), (6, 8, 3, 3), (1, 1), (1, 1), 1),    # padded, junk columns
             ((3, 4, 10, 11), (6, 2, 3, 2), (2, 0), (1, 2), 2),  # asymmetric padding, dilation
             ((4, 8, 7, 6), (16, 8, 1, 1), (0, 0), (1, 1), 1),   # 1x1: in place, no junk
             ((3, 5, 8, 9), (7, 5, 3, 4), (0, 0), (1, 1), 1),    # in place, junk columns
             ((1, 6, 6, 6), (4, 6, 5, 5), (2, 2), (1, 1), 1),    # one image
             ((2, 8, 6, 7), (4, 8, 3, 5), (2, 4), (1, 1), 1),    # padding 4: no junk
             ((3, 8, 7, 5), (6, 8, 3, 3), (1, 2), (1, 2), 1),    # shared padding, dilated
             ((4, 6, 6, 6), (6, 2, 3, 3), (1, 1), (1, 1), 3)]    # three groups
    strided = [((3, 8, 12, 12), (16, 8, 3, 3), (1, 1), (1, 1), 1, (2, 2)),  # on stride phases
               ((2, 8, 13, 11), (8, 8, 3, 3), (0, 0), (1, 1), 1, (2, 2)),
               ((2, 8, 9, 10), (8, 8, 3, 2), (0, 1), (1, 1), 1, (1, 3)),
               ((2, 8, 15, 15), (8, 8, 3, 3), (2, 2), (2, 2), 1, (2, 2)),
               ((2, 12, 11, 9), (12, 4, 5, 5), (2, 2), (1, 1), 3, (3, 2)),
               ((3, 8, 14, 14), (16, 8, 1, 1), (0, 0), (1, 1), 1, (2, 2))]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for xs, ws, p, d, g, *s in [c + ((1, 1),) for c in cases] + strided:
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        args = (s[0], p, d, g)
        y = ck.conv2d_forward(x, w, None, *args)
        gy = rng.standard_normal(y.shape).astype(dtype)
        refs = (R.conv2d_grad_input(gy, w, x.shape, *args),
                R.conv2d_grad_weight(gy, x, w.shape, *args), gy.sum(axis=(0, 2, 3)))
        for need in [(True, True, True), (False, True, False), (False, True, True)]:
            calls.clear()
            got = ck.conv2d_backward(gy, x, w, *args, *need)
            assert calls == [x.shape]
            _check_grads(need, got, refs, dtype, tol)


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_implicit_gemm_path_matches_reference(dtype, trans, monkeypatch):
    """The implicit-GEMM path (one BLAS product per tap on the shifted padded planes), forward
    and input gradient, forced for every stride-1 case: padded or read in place, with and
    without junk columns, dilated, grouped, one image or several per task; with the products
    computed plainly and transposed."""
    from numbaconv.kernels.cpu import blas as blas_k
    from numbaconv.kernels.cpu import conv as ck
    from numbaconv.kernels.cpu.conv import implicit, plan

    if not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    calls = []
    kernel = implicit.implicit_forward

    def counting(*a):
        calls.append(a[0].shape)
        return kernel(*a)

    monkeypatch.setattr(implicit, "implicit_forward", counting)
    monkeypatch.setattr(plan, "use_implicit", lambda stride, cg, og: stride == (1, 1))
    monkeypatch.setattr(implicit, "transposed", lambda *a: trans)
    rng = np.random.default_rng(11)
    cases = [((5, 8, 9, 8), (6, 8, 3, 3), (1, 1), (1, 1), 1),    # padded, junk columns
             ((3, 4, 10, 11), (6, 2, 3, 2), (2, 0), (1, 2), 2),  # asymmetric padding, dilation
             ((4, 8, 7, 6), (16, 8, 1, 1), (0, 0), (1, 1), 1),   # 1x1: in place, no junk
             ((2, 6, 7, 6), (4, 6, 3, 1), (1, 0), (1, 1), 1),    # kx1 padded: no junk
             ((3, 5, 8, 9), (7, 5, 3, 4), (0, 0), (1, 1), 1),    # in place, junk columns
             ((1, 6, 6, 6), (4, 6, 5, 5), (2, 2), (1, 1), 1),    # one image
             ((2, 6, 9, 9), (3, 6, 3, 3), (3, 1), (2, 1), 1),    # padding up to d*(k-1)
             ((2, 8, 5, 6), (4, 8, 1, 3), (1, 2), (1, 1), 1),    # more padding than the kernel
             ((2, 8, 6, 7), (4, 8, 3, 5), (2, 4), (1, 1), 1),    # 5 wide, padding 4: no junk
             ((3, 8, 7, 5), (6, 8, 3, 3), (1, 2), (1, 2), 1)]    # shared padding, dilated
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for xs, ws, p, d, g in cases:
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        args = ((1, 1), p, d, g)
        calls.clear()
        y = ck.conv2d_forward(x, w, b, *args)
        assert calls == [x.shape]
        np.testing.assert_allclose(y, R.conv2d(x, w, b, *args), rtol=tol, atol=tol)
        y0 = ck.conv2d_forward(x, w, None, *args)
        np.testing.assert_allclose(y0, R.conv2d(x, w, None, *args), rtol=tol, atol=tol)
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx_ref = R.conv2d_grad_input(gy, w, x.shape, *args)
        gw_ref = R.conv2d_grad_weight(gy, x, w.shape, *args)
        for need in [(True, True, True), (True, False, False), (True, False, True)]:
            calls.clear()
            gx, gw, gb = ck.conv2d_backward(gy, x if need[1] else None, w, *args, *need,
                                            x_shape=x.shape)
            # as a forward convolution of gy, padded by d*(k-1) - p (there must be no more
            # padding than that: otherwise the scatter path does it)
            reachable = all(d[i] * (ws[2 + i] - 1) >= p[i] for i in range(2))
            assert calls == ([gy.shape] if reachable else [])
            _check_grads(need, (gx, gw, gb), (gx_ref, gw_ref, gy.sum(axis=(0, 2, 3))), dtype,
                         tol)
    # a transposed convolution's output_padding adds rows that no input reaches: the input
    # gradient then takes another path, and is still right
    x = rng.standard_normal((2, 4, 5, 5)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    y = ck.conv2d_backward(x, None, w, (1, 1), (1, 1), (2, 2), 1, True, False, False,
                           x_shape=(2, 3, 8, 8))[0]
    np.testing.assert_allclose(y, R.conv_transpose2d(x, w, None, (1, 1), (1, 1), (1, 1), 1,
                                                     (2, 2)), rtol=tol, atol=tol)


def test_transposed_conv_with_output_padding_at_stride_1():
    """output_padding < dilation at stride 1 adds rows that no input reaches: the flat kernels
    must leave them at the bias, not read past the planes."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    X, W = nc.tensor(x, requires_grad=True), nc.tensor(w, requires_grad=True)
    y = F.conv_transpose2d(X, W, stride=1, padding=1, output_padding=1, dilation=2)
    ref = R.conv_transpose2d(x, w, None, (1, 1), (1, 1), (1, 1), 1, (2, 2))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert np.isfinite(X.grad.numpy()).all() and np.isfinite(W.grad.numpy()).all()


def test_backward_kernels_are_deterministic_on_two_threads():
    """A race in a backward kernel shows up as run-to-run differences."""
    import numba

    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    cases = [((8, 6, 12, 12), (8, 6, 3, 3), 1, 1), ((8, 6, 12, 12), (6, 1, 3, 3), 1, 6),
             ((4, 4, 9, 9), (6, 2, 3, 3), 2, 2), ((9, 1, 12, 12), (6, 1, 5, 5), 1, 1),
             ((6, 32, 7, 7), (32, 32, 3, 3), 1, 1), ((6, 16, 9, 9), (16, 16, 3, 3), 1, 1),
             ((8, 40, 6, 6), (40, 40, 3, 3), 1, 1)]
    for xs, ws, s, g in cases:
        x = nc.tensor(rng.standard_normal(xs).astype(np.float32), requires_grad=True)
        w = nc.tensor(rng.standard_normal(ws).astype(np.float32), requires_grad=True)
        gy = None
        results = []
        for _ in range(20):
            x.grad = w.grad = None
            y = F.conv2d(x, w, stride=s, padding=1, groups=g)
            if gy is None:
                gy = nc.tensor(rng.standard_normal(y.shape).astype(np.float32))
            y.backward(gy)
            results.append((x.grad.numpy().copy(), w.grad.numpy().copy()))
        for gx, gw in results[1:]:
            assert np.array_equal(gx, results[0][0]) and np.array_equal(gw, results[0][1])


def test_conv_argument_errors():
    x = nc.randn(2, 4, 8, 8)
    w = nc.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.conv2d(nc.randn(1, 4, 2, 2), w)
    with pytest.raises(ValueError, match="stride=.*>= 1"):
        F.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="divisible by groups=3"):
        F.conv2d(x, nc.randn(6, 1, 3, 3), groups=3)
    with pytest.raises(ValueError, match="expects 2 input channels"):
        F.conv2d(x, nc.randn(6, 2, 3, 3))
    with pytest.raises(ValueError, match="out channels 5"):
        F.conv2d(x, nc.randn(5, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="bias has 3 elements, expected 6"):
        F.conv2d(x, w, nc.randn(3))
    with pytest.raises(ValueError, match="'same' needs stride=1"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding='full'"):
        F.conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match="3-D .* or 4-D"):
        F.conv2d(nc.randn(8, 8), w)
    with pytest.raises(TypeError, match="dtype float64"):
        F.conv2d(x, w.double())
    with pytest.raises(ValueError, match="padding=.*>= 0"):
        F.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="output_padding"):
        F.conv_transpose2d(x, nc.randn(4, 2, 3, 3), stride=2, output_padding=2)


def test_float32_stays_float32_and_nan_propagates():
    x = nc.randn(1, 2, 5, 5)
    w = nc.randn(3, 2, 3, 3)
    assert F.conv2d(x, w).dtype == nc.float32
    assert F.conv_transpose2d(x, nc.randn(2, 3, 3, 3)).dtype == nc.float32
    xn = x.numpy().copy()
    xn[0, 0, 2, 2] = np.nan
    y = F.conv2d(nc.tensor(xn), w, padding=1)
    assert np.isnan(y.numpy()).any() and np.isnan(y.sum().item())
