"""Shared test helpers: NumPy and PyTorch comparisons with explicit tolerances."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc

try:
    import torch

    HAVE_TORCH = True
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
    HAVE_TORCH = False

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")


def t64(a, requires_grad=True):
    return nc.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what=""):
    a = actual.numpy() if isinstance(actual, nc.Tensor) else np.asarray(actual)
    e = expected.detach().numpy() if HAVE_TORCH and isinstance(expected, torch.Tensor) else (
        np.asarray(expected))
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what, equal_nan=True)


def torch_parity(nc_fn, torch_fn, arrays, fwd_tol=(1e-5, 1e-5), bwd_tol=(1e-4, 1e-4),
                 grad_out_seed=0):
    """Run the same op in numbaconv and torch on copies of ``arrays``; compare the values and
    the gradients of every float input for a random output gradient."""
    nc_in = [nc.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    th_in = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    y = nc_fn(*nc_in)
    ty = torch_fn(*th_in)
    assert_close(y, ty, *fwd_tol, what="forward")
    assert y.dtype == np.dtype(str(ty.dtype).replace("torch.", "")), "dtype differs"
    g = np.random.default_rng(grad_out_seed).standard_normal(y.shape).astype(y.dtype)
    y.backward(nc.tensor(g))
    ty.backward(torch.tensor(g))
    for i, (a, b) in enumerate(zip(nc_in, th_in)):
        if b.grad is not None:
            assert a.grad is not None, f"input {i} got no gradient"
            assert_close(a.grad, b.grad, *bwd_tol, what=f"grad of input {i}")
    return y
