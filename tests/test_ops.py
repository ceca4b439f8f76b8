"""Every tensor op: values against NumPy, float32 stays float32, gradcheck on random shapes
(broadcasting and non-contiguous inputs included), and bad input raising clear errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import numbaconv as nc
import numbaconv.functional as F
from tests.helpers import t64

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def arrays(shape, lo=-2.0, hi=2.0, dtype=np.float64):
    return hnp.arrays(dtype, shape, elements=st.floats(lo, hi, allow_nan=False, width=64))


@st.composite
def broadcast_pair(draw):
    shape = draw(shapes)
    other = list(shape)
    for i in range(len(other)):
        if draw(st.booleans()):
            other[i] = 1
    drop = draw(st.integers(0, len(other) - 1))
    other = tuple(other[drop:])
    a, b = (shape, other) if draw(st.booleans()) else (other, shape)
    return draw(arrays(a)), draw(arrays(b))


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (nc.maximum, np.maximum),
    "minimum": (nc.minimum, np.minimum),
}


@pytest.mark.parametrize("name", BINARY)
@given(pair=broadcast_pair())
def test_binary_values_and_grads(name, pair):
    a, b = pair
    if name == "div":
        b = np.where(np.abs(b) < 0.3, 0.5, b)
    if name in ("maximum", "minimum"):  # keep away from the kink
        b = np.where(np.abs(a - b) < 1e-3, b + 0.1, b) if a.shape == b.shape else b
        if np.any(np.abs(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape))
                         - np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape))) < 1e-3):
            return
    f, ref = BINARY[name]
    np.testing.assert_allclose(f(t64(a), t64(b)).numpy(), ref(a, b), rtol=1e-12)
    y32 = f(nc.tensor(a.astype(np.float32)), nc.tensor(b.astype(np.float32)))
    assert y32.dtype == nc.float32
    nc.gradcheck(f, (t64(a), t64(b)))


@given(pair=broadcast_pair())
def test_pow_values_and_grads(pair):
    a, b = pair
    a = np.abs(a) + 0.5
    np.testing.assert_allclose((t64(a) ** t64(b)).numpy(), a ** b, rtol=1e-12)
    nc.gradcheck(lambda x, y: x ** y, (t64(a), t64(b)))
    nc.gradcheck(lambda x: x ** 3, (t64(a),))
    assert (nc.tensor(a.astype(np.float32)) ** 2).dtype == nc.float32


UNARY = {
    "exp": (nc.exp, np.exp, None),
    "log": (nc.log, np.log, "pos"),
    "sqrt": (nc.sqrt, np.sqrt, "pos"),
    "tanh": (nc.tanh, np.tanh, None),
    "sigmoid": (nc.sigmoid, lambda a: 1 / (1 + np.exp(-a)), None),
    "relu": (nc.relu, lambda a: np.maximum(a, 0), "kink"),
    "abs": (nc.abs, np.abs, "kink"),
    "neg": (lambda x: -x, np.negative, None),
}


@pytest.mark.parametrize("name", UNARY)
@given(a=shapes.flatmap(arrays))
def test_unary_values_and_grads(name, a):
    f, ref, domain = UNARY[name]
    if domain == "pos":
        a = np.abs(a) + 0.1
    if domain == "kink":
        a = np.where(np.abs(a) < 1e-3, 0.5, a)
    np.testing.assert_allclose(f(t64(a)).numpy(), ref(a), rtol=1e-12, atol=1e-15)
    assert f(nc.tensor(a.astype(np.float32))).dtype == nc.float32
    nc.gradcheck(f, (t64(a),))


@pytest.mark.parametrize("op,ref", [("sum", np.sum), ("mean", np.mean)])
@given(a=shapes.flatmap(arrays), data=st.data())
def test_sum_mean(op, ref, a, data):
    dim = data.draw(st.one_of(st.none(), st.integers(-a.ndim, a.ndim - 1),
                              st.lists(st.integers(0, a.ndim - 1), min_size=1, unique=True)
                              .map(tuple)))
    keep = data.draw(st.booleans())
    f = lambda x: getattr(x, op)(dim=dim, keepdim=keep)  # noqa: E731
    np.testing.assert_allclose(f(t64(a)).numpy(), ref(a, axis=dim, keepdims=keep), rtol=1e-12)
    assert f(nc.tensor(a.astype(np.float32))).dtype == nc.float32
    nc.gradcheck(f, (t64(a),))


@pytest.mark.parametrize("op", ["max", "min"])
@given(a=shapes.flatmap(lambda s: hnp.arrays(np.int64, s, unique=True,
                                            elements=st.integers(-500, 500))), data=st.data())
def test_max_min(op, a, data):
    a = a / 10.0  # distinct values, well apart: no tie within a finite difference
    x = t64(a)
    np.testing.assert_allclose(getattr(x, op)().numpy(), getattr(np, op)(a))
    nc.gradcheck(lambda t: getattr(t, op)(), (x,))
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    keep = data.draw(st.booleans())
    values, indices = getattr(x, op)(dim=dim, keepdim=keep)
    np.testing.assert_allclose(values.numpy(), getattr(np, op)(a, axis=dim, keepdims=keep))
    arg = np.argmax if op == "max" else np.argmin
    np.testing.assert_array_equal(indices.numpy(), arg(a, axis=dim, keepdims=keep))
    assert indices.dtype == nc.int64
    nc.gradcheck(lambda t: getattr(t, op)(dim=dim, keepdim=keep)[0], (x,))
    np.testing.assert_array_equal(getattr(nc, "arg" + op)(x, dim).numpy(), arg(a, axis=dim))


def test_max_ties_split_evenly_and_dim_goes_to_first():
    x = t64([1.0, 3.0, 3.0])
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5])
    x2 = t64([[1.0, 3.0, 3.0]])
    x2.max(dim=1).values.sum().backward()
    np.testing.assert_allclose(x2.grad.numpy(), [[0, 1, 0]])
    y = t64([2.0, 1.0])
    z = t64([2.0, 3.0])
    nc.maximum(y, z).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [0.5, 0])


@given(data=st.data())
def test_matmul(data):
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    batch = data.draw(st.sampled_from([(), (2,), (3, 1)]))
    other_batch = data.draw(st.sampled_from([(), (1,), batch]))
    a = data.draw(arrays(batch + (m, k)))
    b = data.draw(arrays(other_batch + (k, n)))
    np.testing.assert_allclose((t64(a) @ t64(b)).numpy(), a @ b, rtol=1e-12)
    nc.gradcheck(lambda x, y: x @ y, (t64(a), t64(b)))
    v = data.draw(arrays((k,)))
    nc.gradcheck(lambda x, y: x @ y, (t64(a), t64(v)))
    nc.gradcheck(lambda x, y: x @ y, (t64(v), t64(b)))
    nc.gradcheck(lambda x, y: x @ y, (t64(v), t64(v)))
    assert (nc.tensor(a.astype(np.float32)) @ nc.tensor(b.astype(np.float32))).dtype == nc.float32


@pytest.mark.parametrize("blas_in_kernel", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_matmul_split_between_threads(blas_in_kernel, dtype, monkeypatch):
    """Products big enough to be split by rows between threads (a fully connected layer's
    forward and both gradients: transposed operands included), with NumPy's BLAS called from
    a Numba kernel and with the Python-thread fallback."""
    from numbaconv.kernels.cpu import blas as blas_k

    if blas_in_kernel and not blas_k.ready():
        pytest.skip("NumPy's BLAS has no ILP64 OpenBLAS interface to call from kernels")
    monkeypatch.setitem(blas_k._state, "ready", blas_in_kernel and blas_k.ready())
    rng = np.random.default_rng(3)
    x = nc.tensor(rng.standard_normal((300, 257)).astype(dtype), requires_grad=True)
    w = nc.tensor(rng.standard_normal((130, 257)).astype(dtype), requires_grad=True)
    y = nc.functional.linear(x, w)
    xs, ws = x.numpy().astype(np.float64), w.numpy().astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), xs @ ws.T, rtol=tol, atol=tol * 100)
    g = rng.standard_normal(y.shape)
    y.backward(nc.tensor(g.astype(dtype)))
    np.testing.assert_allclose(x.grad.numpy(), g @ ws, rtol=tol, atol=tol * 100)
    np.testing.assert_allclose(w.grad.numpy(), g.T @ xs, rtol=tol, atol=tol * 100)
    assert y.dtype == x.grad.dtype == w.grad.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_add_runs_in_parallel_kernel_exactly(dtype):
    """Same-shape adds of 2^16 elements and more take a parallel kernel: same values as
    NumPy (inf and NaN included), same dtype; a transposed operand takes NumPy's path."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 200, 130)).astype(dtype)
    b = rng.standard_normal((3, 200, 130)).astype(dtype)
    a[0, 0, :3] = [np.inf, np.nan, -np.inf]
    b[0, 0, :3] = [-np.inf, 1, -np.inf]
    A, B = nc.tensor(a, requires_grad=True), nc.tensor(b, requires_grad=True)
    y = A + B
    with np.errstate(invalid="ignore"):  # inf - inf
        expected = a + b
    np.testing.assert_array_equal(y.numpy(), expected)
    assert y.dtype == dtype
    y.sum().backward()
    np.testing.assert_array_equal(A.grad.numpy(), np.ones_like(a))
    t = nc.tensor(np.ascontiguousarray(a.transpose(0, 2, 1))).transpose(1, 2)
    np.testing.assert_array_equal((t + B).numpy(), expected)


def test_matmul_shape_errors():
    with pytest.raises(ValueError, match=r"cannot be multiplied \(3 != 4\)"):
        nc.randn(2, 3) @ nc.randn(4, 2)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        nc.matmul(nc.tensor(1.0), nc.randn(2))


@given(a=hnp.arrays(np.float64, (2, 3, 4), elements=st.floats(-2, 2, width=64)), data=st.data())
def test_layout_ops(a, data):
    x = t64(a)
    perm = tuple(data.draw(st.permutations(range(3))))
    np.testing.assert_array_equal(x.permute(*perm).numpy(), a.transpose(perm))
    nc.gradcheck(lambda t: t.permute(*perm) * 1.5, (x,))
    np.testing.assert_array_equal(x.transpose(0, 2).numpy(), a.swapaxes(0, 2))
    np.testing.assert_array_equal(x.reshape(4, -1).numpy(), a.reshape(4, -1))
    nc.gradcheck(lambda t: t.reshape(6, 4) * 2, (x,))
    nc.gradcheck(lambda t: t.view(24), (x,))
    assert x.flatten().shape == (24,) and x.flatten(1).shape == (2, 12)
    assert x.flatten(0, 1).shape == (6, 4)
    # non-contiguous input into every layout op
    nc.gradcheck(lambda t: t.transpose(0, 2).reshape(-1).exp(), (x,))
    nc.gradcheck(lambda t: t.permute(2, 0, 1)[1:, :, ::2].sum(0), (x,))
    assert x.unsqueeze(1).shape == (2, 1, 3, 4) and x.unsqueeze(1).squeeze(1).shape == (2, 3, 4)
    nc.gradcheck(lambda t: t[:, :1].expand(2, 3, 4) * 1.0, (x,))


@given(a=hnp.arrays(np.float64, (4, 5), elements=st.floats(-2, 2, width=64)), data=st.data())
def test_getitem(a, data):
    x = t64(a)
    idx = data.draw(st.sampled_from([
        1, -1, (slice(1, 3),), (slice(None), 2), (slice(None, None, 2), slice(1, None)),
        (Ellipsis, 0), ([0, 2, 2],), (slice(None), [4, 0, 4]), (np.array([1, 1, 3]), 0),
    ]))
    np.testing.assert_array_equal(x[idx].numpy(), a[idx])
    nc.gradcheck(lambda t: t[idx] * 2.0, (x,))
    ti = nc.tensor([3, 0, 3])
    np.testing.assert_array_equal(x[ti].numpy(), a[[3, 0, 3]])
    x[ti].sum().backward()
    assert x.grad.numpy()[3].sum() == 2 * 5  # repeated indices accumulate
    mask = x > 0
    np.testing.assert_array_equal(x[mask].numpy(), a[a > 0])


def test_getitem_errors():
    x = nc.randn(3, 4)
    with pytest.raises(IndexError):
        x[5]
    with pytest.raises(IndexError, match="unsupported"):
        x["a"]
    with pytest.raises(IndexError, match="integer or bool"):
        x[nc.tensor([0.5])]


@given(data=st.data())
def test_cat_stack(data):
    n = data.draw(st.integers(1, 3))
    dim = data.draw(st.integers(0, 1))
    parts = [data.draw(arrays((2, 3) if dim == 0 else (3, 2))) for _ in range(n)]
    parts = [p if dim == 0 else p.T.copy() for p in parts]
    ts = [t64(p) for p in parts]
    np.testing.assert_array_equal(nc.cat(ts, dim).numpy(), np.concatenate(parts, dim))
    nc.gradcheck(lambda *t: nc.cat(list(t), dim), ts)
    same = [t64(parts[0]) for _ in range(n)]
    np.testing.assert_array_equal(nc.stack(same, dim).numpy(), np.stack([parts[0]] * n, dim))
    nc.gradcheck(lambda *t: nc.stack(list(t), -1), same)


def test_cat_stack_errors():
    with pytest.raises(ValueError, match="does not match"):
        nc.cat([nc.zeros(2, 3), nc.zeros(2, 4)], 0)
    with pytest.raises(ValueError, match="expected"):
        nc.stack([nc.zeros(2), nc.zeros(3)])
    with pytest.raises(TypeError, match="dtype"):
        nc.cat([nc.zeros(2), nc.zeros(2, dtype=nc.float64)])
    with pytest.raises(ValueError, match="empty"):
        nc.cat([])


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@given(a=hnp.arrays(np.float64, (2, 3, 4), elements=st.floats(-2, 2, width=64)),
       p=st.tuples(*[st.integers(0, 2)] * 4))
def test_pad(mode, a, p):
    x = t64(a)
    ref_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                "circular": "wrap"}[mode]
    y = F.pad(x, p, mode=mode)
    np.testing.assert_array_equal(
        y.numpy(), np.pad(a, ((0, 0), (p[2], p[3]), (p[0], p[1])), mode=ref_mode))
    nc.gradcheck(lambda t: F.pad(t, p, mode=mode), (x,))


def test_pad_errors():
    with pytest.raises(ValueError, match="even length"):
        F.pad(nc.zeros(2, 2), (1,))
    with pytest.raises(ValueError, match="mode"):
        F.pad(nc.zeros(2, 2), (1, 1), mode="mirror")
    with pytest.raises(ValueError, match="reflect"):
        F.pad(nc.zeros(2, 2), (2, 2), mode="reflect")


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@given(a=shapes.flatmap(lambda s: arrays(s, -5, 5)), data=st.data())
def test_softmax(fn, a, data):
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    e = np.exp(a - a.max(axis=dim, keepdims=True))
    ref = e / e.sum(axis=dim, keepdims=True)
    if fn == "log_softmax":
        ref = np.log(ref)
    f = lambda t: getattr(t, fn)(dim)  # noqa: E731
    np.testing.assert_allclose(f(t64(a)).numpy(), ref, rtol=1e-10, atol=1e-12)
    assert f(nc.tensor(a.astype(np.float32))).dtype == nc.float32
    nc.gradcheck(f, (t64(a),))
    nc.gradcheck(lambda t: getattr(t.transpose(0, -1), fn)(0), (t64(a),))


def test_softmax_is_stable_for_huge_logits():
    y = nc.tensor([[1e4, 0.0, -1e4]]).log_softmax(1)
    assert np.all(np.isfinite(y.numpy()[0, :2]))
    np.testing.assert_allclose(y.numpy()[0, 0], 0.0)


def test_where_and_comparisons():
    a = t64([1.0, -2.0, 3.0])
    b = t64([0.5, 0.5, 0.5])
    c = a > b
    assert c.dtype == nc.bool_ and not c.requires_grad
    assert c.numpy().tolist() == [True, False, True]
    assert (a == a).numpy().all() and not (a != a).numpy().any()
    assert (a <= 1.0).numpy().tolist() == [True, True, False]
    nc.gradcheck(lambda x, y: nc.where(x > y, x, y * 2), (a, b))
    with pytest.raises(TypeError, match="bool"):
        nc.where(a, a, b)


def test_scalar_operands_keep_dtype():
    x = nc.ones(3)
    for y in (x + 1, 1 + x, x * 2.5, 2.5 * x, x - 1, 1 - x, x / 3, 3 / x, x ** 2, 2 ** x):
        assert y.dtype == nc.float32
    i = nc.arange(3)
    assert (i + 1).dtype == nc.int64 and (i * 1.5).dtype == nc.float32
    assert (i / 2).dtype == nc.float32
    assert (x * (x > 0)).dtype == nc.float32


def test_mixed_float_dtypes_are_refused():
    with pytest.raises(TypeError, match="float32 and float64"):
        nc.ones(2) + nc.ones(2, dtype=nc.float64)


def test_bad_dims_and_types():
    x = nc.randn(2, 3)
    with pytest.raises(IndexError, match="dim=2"):
        x.sum(dim=2)
    with pytest.raises(TypeError, match="dim"):
        x.sum(dim=1.5)
    with pytest.raises(ValueError, match="twice"):
        x.sum(dim=(1, -1))
    with pytest.raises(ValueError, match="invalid for input of size 6"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match="permutation"):
        x.permute(0, 0)
    with pytest.raises(TypeError, match="floating point"):
        nc.exp(nc.arange(3))
    with pytest.raises(TypeError, match="real number"):
        x + "a"


def test_nan_propagates():
    x = nc.tensor([1.0, float("nan")])
    assert np.isnan(x.relu().numpy()[1]) and np.isnan(x.sigmoid().numpy()[1])
    assert np.isnan(x.log_softmax(0).numpy()).all()
    assert np.isnan(x.sum().item())


def test_setitem_in_place():
    x = nc.zeros(3, 4)
    x[1] = 2.0
    x[:, 0] = nc.tensor([5.0, 6.0, 7.0])
    x[x > 5.5] = -1.0
    np.testing.assert_array_equal(x.numpy(), [[5, 0, 0, 0], [-1, 2, 2, 2], [-1, 0, 0, 0]])
    w = nc.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad"):
        w[0] = 3.0
    with nc.no_grad():
        w[0] = 3.0
    assert w.numpy().tolist() == [3.0, 1.0]
    with pytest.raises(TypeError, match="dtype"):
        x[0] = nc.ones(4, dtype=nc.float64)
    with pytest.raises(ValueError, match="__setitem__"):
        x[0] = nc.ones(3)
