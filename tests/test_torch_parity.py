"""Values and gradients against PyTorch (skipped when torch is not installed)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbaconv as nc
import numbaconv.functional as F
from tests.helpers import HAVE_TORCH, needs_torch, torch, torch_parity

pytestmark = [needs_torch, pytest.mark.torch]
if HAVE_TORCH:
    import torch.nn.functional as TF

    torch.set_num_threads(2)


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "relu", "abs", "neg"])
def test_unary(name):
    x = _rand((3, 4, 5))
    torch_parity(lambda t: getattr(t, name)(), lambda t: getattr(t, name)(), [x])


def test_binary_broadcasting_and_reductions():
    a, b = _rand((4, 1, 3)), _rand((5, 1), 1)
    torch_parity(lambda x, y: (x * y + x / (y * y + 1) - y).sum(1),
                 lambda x, y: (x * y + x / (y * y + 1) - y).sum(1), [a, b])
    torch_parity(lambda x, y: nc.maximum(x, y).mean((0, 2)),
                 lambda x, y: torch.maximum(x, y).mean((0, 2)), [a, b])
    torch_parity(lambda x: x.max(dim=1).values, lambda x: x.max(dim=1).values, [_rand((4, 6))])
    torch_parity(lambda x: x.amax((0, 1)), lambda x: x.amax((0, 1)), [_rand((4, 6, 2))])


def test_matmul_softmax_layout():
    a, b = _rand((2, 3, 4)), _rand((4, 5), 1)
    torch_parity(lambda x, y: (x @ y).log_softmax(-1), lambda x, y: (x @ y).log_softmax(-1),
                 [a, b])
    torch_parity(lambda x: x.permute(2, 0, 1).reshape(4, -1).softmax(0),
                 lambda x: x.permute(2, 0, 1).reshape(4, -1).softmax(0), [a])
    torch_parity(lambda x: F.pad(x, (1, 2, 0, 1), mode="reflect")[:, 1:, ::2],
                 lambda x: TF.pad(x, (1, 2, 0, 1), mode="reflect")[:, 1:, ::2], [a])
    torch_parity(lambda x: nc.cat([x, x * 2], 1), lambda x: torch.cat([x, x * 2], 1), [a])


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(d[0] * (k[0] - 1) + 1, 12))
    w = draw(st.integers(d[1] * (k[1] - 1) + 1, 12))
    return dict(x=(draw(st.integers(1, 3)), cin, h, w), w=(cout, cin // groups) + k, s=s,
                p=p, d=d, g=groups, bias=draw(st.booleans()))


@given(case=conv_case(), seed=st.integers(0, 1000))
def test_conv2d(case, seed):
    arrays = [_rand(case["x"], seed), _rand(case["w"], seed + 1)]
    if case["bias"]:
        arrays.append(_rand(case["w"][:1], seed + 2))
    kw = dict(stride=case["s"], padding=case["p"], dilation=case["d"], groups=case["g"])
    torch_parity(lambda *t: F.conv2d(*t, **kw), lambda *t: TF.conv2d(*t, **kw), arrays,
                 fwd_tol=(1e-4, 1e-4), bwd_tol=(1e-4, 1e-3))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("k,d", [(3, 1), (4, 1), (4, 2)])
def test_conv2d_string_padding(padding, k, d):
    arrays = [_rand((2, 3, 9, 8)), _rand((4, 3, k, k), 1)]
    torch_parity(lambda *t: F.conv2d(*t, padding=padding, dilation=d),
                 lambda *t: TF.conv2d(*t, padding=padding, dilation=d), arrays,
                 fwd_tol=(1e-4, 1e-4), bwd_tol=(1e-4, 1e-3))


@given(case=conv_case(), seed=st.integers(0, 1000), data=st.data())
def test_conv_transpose2d(case, seed, data):
    cin, cout, g = case["x"][1], case["w"][0], case["g"]
    k = case["w"][2:]
    op = tuple(data.draw(st.integers(0, max(case["s"][i], case["d"][i]) - 1)) for i in range(2))
    arrays = [_rand(case["x"], seed), _rand((cin, cout // g) + k, seed + 1)]
    if case["bias"]:
        arrays.append(_rand((cout,), seed + 2))
    kw = dict(stride=case["s"], padding=case["p"], output_padding=op, groups=g,
              dilation=case["d"])
    out_h = [(case["x"][2 + i] - 1) * case["s"][i] - 2 * case["p"][i]
             + case["d"][i] * (k[i] - 1) + op[i] + 1 for i in range(2)]
    if min(out_h) < 1:
        return
    torch_parity(lambda *t: F.conv_transpose2d(*t, **kw),
                 lambda *t: TF.conv_transpose2d(*t, **kw), arrays,
                 fwd_tol=(1e-4, 1e-4), bwd_tol=(1e-4, 1e-3))


@given(k=st.integers(1, 4), s=st.integers(1, 4), d=st.integers(1, 2),
       ceil=st.booleans(), h=st.integers(5, 11), seed=st.integers(0, 1000),
       relu=st.booleans(), data=st.data())
def test_max_pool2d(k, s, d, ceil, h, seed, relu, data):
    p = data.draw(st.integers(0, k // 2))
    if d * (k - 1) + 1 > h + 2 * p or (d > 1 and p > 0):
        return  # windows wholly inside the padding are undefined in PyTorch
    x = _rand((2, 3, h, h + 1), seed)
    if relu:
        x = np.maximum(np.round(x), 0)  # many ties
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    torch_parity(lambda t: F.max_pool2d(t, **kw), lambda t: TF.max_pool2d(t, **kw), [x])
    yi = F.max_pool2d(nc.tensor(x), return_indices=True, **kw)[1]
    ti = TF.max_pool2d(torch.tensor(x), return_indices=True, **kw)[1]
    np.testing.assert_array_equal(yi.numpy(), ti.numpy())


@given(k=st.integers(1, 4), s=st.integers(1, 4), ceil=st.booleans(), include=st.booleans(),
       divisor=st.sampled_from([None, 2]), h=st.integers(4, 10), seed=st.integers(0, 1000),
       data=st.data())
def test_avg_pool2d(k, s, ceil, include, divisor, h, seed, data):
    p = data.draw(st.integers(0, k // 2))
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include,
              divisor_override=divisor)
    torch_parity(lambda t: F.avg_pool2d(t, **kw), lambda t: TF.avg_pool2d(t, **kw),
                 [_rand((2, 2, h, h + 2), seed)])


@pytest.mark.parametrize("out", [1, 3, (2, 5), (4, None)])
def test_adaptive_pools(out):
    x = _rand((2, 3, 7, 9))
    torch_parity(lambda t: F.adaptive_avg_pool2d(t, out), lambda t: TF.adaptive_avg_pool2d(t, out),
                 [x])
    torch_parity(lambda t: F.adaptive_max_pool2d(t, out), lambda t: TF.adaptive_max_pool2d(t, out),
                 [x])


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (5, 5e-4, 0.75, 2.0),
                                               (3, 0.3, 0.5, 1.0), (4, 1.0, 1.2, 0.5)])
def test_local_response_norm(size, alpha, beta, k):
    x = _rand((2, 7, 5, 4)) * 4
    torch_parity(lambda t: F.local_response_norm(t, size, alpha, beta, k),
                 lambda t: TF.local_response_norm(t, size, alpha, beta, k), [x],
                 fwd_tol=(1e-5, 1e-6), bwd_tol=(1e-4, 1e-5))


@pytest.mark.parametrize("kw", [dict(scale_factor=2), dict(scale_factor=3), dict(size=(7, 5)),
                                dict(size=(3, 2)), dict(scale_factor=1.5),
                                dict(scale_factor=0.5)])
def test_interpolate_nearest(kw):
    torch_parity(lambda t: F.interpolate(t, **kw), lambda t: TF.interpolate(t, **kw),
                 [_rand((2, 3, 4, 6))])
