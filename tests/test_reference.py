"""BatchNorm, softmax, the losses and the optimizer updates of both backends against
kernels/reference.py (the CUDA backend on Numba's simulator where there is no GPU); the
reference itself against PyTorch where it is installed."""

from __future__ import annotations

import numpy as np
import pytest
from numbaconv.kernels import reference as ref

import numbaconv as nc
import numbaconv.functional as F
from numbaconv import optim


def _devices():
    out = ["cpu"]
    try:
        nc.get_backend("cuda")
        out.append(pytest.param("cuda", marks=pytest.mark.cuda))
    except RuntimeError:
        pass
    return out


DEVICES = _devices()
R = np.random.default_rng(0)


def _t(a, dev, grad=False):
    return nc.tensor(a, device=dev, requires_grad=grad)


def _close(got, want, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4), (3, 2, 7)])
def test_batch_norm_training_and_eval_against_reference(dev, shape):
    x = R.normal(1.0, 2.0, shape).astype(np.float32)
    c = shape[1]
    w, b = R.uniform(0.5, 1.5, c).astype(np.float32), R.normal(0, 1, c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    xt, wt, bt = _t(x, dev, True), _t(w, dev, True), _t(b, dev, True)
    rmt, rvt = _t(rm, dev), _t(rv, dev)
    y = F.batch_norm(xt, rmt, rvt, wt, bt, training=True, momentum=0.1, eps=1e-5)
    want, mean, var = ref.batch_norm_train(x.astype(np.float64), w, b, 1e-5)
    _close(y.numpy(), want)
    count = x.size // c
    want_rm, want_rv = ref.running_stats_update(rm, rv, mean, var, count, 0.1)
    _close(rmt.numpy(), want_rm)
    _close(rvt.numpy(), want_rv)
    gy = R.standard_normal(shape).astype(np.float32)
    y.backward(_t(gy, dev))
    gx, gw, gb = ref.batch_norm_train_grad(gy.astype(np.float64), x.astype(np.float64), w)
    _close(xt.grad.numpy(), gx, rtol=1e-4, atol=2e-5)
    _close(wt.grad.numpy(), gw, rtol=1e-4, atol=2e-5)
    _close(bt.grad.numpy(), gb, rtol=1e-4, atol=2e-5)
    y_eval = F.batch_norm(_t(x, dev), rmt, rvt, wt, bt, training=False, eps=1e-5)
    _close(y_eval.numpy(), ref.batch_norm_eval(x.astype(np.float64), rmt.numpy(),
                                               rvt.numpy(), w, b, 1e-5))


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_and_log_softmax_against_reference(dev, axis, log):
    x = (R.standard_normal((5, 7)) * 4).astype(np.float32)
    xt = _t(x, dev, True)
    y = (F.log_softmax if log else F.softmax)(xt, axis)
    want = (ref.log_softmax if log else ref.softmax)(x.astype(np.float64), axis)
    _close(y.numpy(), want)
    gy = R.standard_normal(x.shape).astype(np.float32)
    y.backward(_t(gy, dev))
    grad = (ref.log_softmax_grad if log else ref.softmax_grad)(gy.astype(np.float64), want,
                                                                axis)
    _close(xt.grad.numpy(), grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("weighted, smoothing, ignore", [(False, 0.0, False), (True, 0.0, True),
                                                         (True, 0.2, True), (False, 0.1, False)])
def test_cross_entropy_and_nll_against_reference(dev, weighted, smoothing, ignore):
    n, c = 9, 5
    z = (R.standard_normal((n, c)) * 3).astype(np.float32)
    t = R.integers(0, c, n)
    if ignore:
        t[[1, 4]] = -100
    w = R.uniform(0.2, 2.0, c).astype(np.float32) if weighted else None
    zt = _t(z, dev, True)
    tt = _t(t, dev)
    wt = _t(w, dev) if weighted else None
    loss = F.cross_entropy(zt, tt, weight=wt, label_smoothing=smoothing)
    _close(loss.item(), ref.cross_entropy(z, t, w, -100, smoothing))
    loss.backward()
    _close(zt.grad.numpy(), ref.cross_entropy_grad(z, t, w, -100, smoothing), rtol=1e-4,
           atol=1e-6)
    for reduction in ("sum", "none"):
        got = F.cross_entropy(_t(z, dev), tt, weight=wt, label_smoothing=smoothing,
                              reduction=reduction)
        want = ref.cross_entropy(z, t, w, -100, smoothing, reduction)
        _close(got.numpy(), want, rtol=1e-5, atol=1e-5)
    logp = ref.log_softmax(z.astype(np.float64), 1).astype(np.float32)
    got = F.nll_loss(_t(logp, dev), tt, weight=wt)
    _close(got.item(), ref.nll_loss(logp, t, w, -100))


@pytest.mark.parametrize("dev", DEVICES)
def test_mse_against_reference(dev):
    a, b = R.standard_normal((3, 4)).astype(np.float32), R.standard_normal((3, 4)).astype(
        np.float32)
    for reduction in ("mean", "sum", "none"):
        _close(F.mse_loss(_t(a, dev), _t(b, dev), reduction=reduction).numpy(),
               ref.mse_loss(a.astype(np.float64), b, reduction))


OPTIMIZERS = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), dict(lr=0.1)),
    "sgd-momentum-wd": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1,
                                            weight_decay=1e-2),
                        dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    "sgd-nesterov": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
                     dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3),
             dict(lr=1e-2, weight_decay=1e-3)),
    "adam-amsgrad": (lambda p: optim.Adam(p, lr=1e-2, betas=(0.8, 0.9), amsgrad=True),
                     dict(lr=1e-2, betas=(0.8, 0.9), amsgrad=True)),
    "adamw": (lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
              dict(lr=1e-2, weight_decay=0.1, decoupled=True)),
}


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_updates_against_reference(dev, name):
    make, kw = OPTIMIZERS[name]
    p0 = R.standard_normal(37).astype(np.float32)
    grads = [R.standard_normal(37).astype(np.float32) for _ in range(4)]
    p = nc.nn.Parameter(_t(p0, dev))
    opt = make([p])
    want = p0.astype(np.float64)
    buf = None
    m = v = np.zeros(37)
    vmax = np.zeros(37) if kw.get("amsgrad") else None
    for step, g in enumerate(grads, 1):
        p.grad = _t(g, dev)
        opt.step()
        if name.startswith("sgd"):
            want, buf = ref.sgd_step(want, g.astype(np.float64), buf, **kw)
        else:
            args = {k: val for k, val in kw.items() if k != "amsgrad"}
            want, m, v, vmax = ref.adam_step(want, g.astype(np.float64), m, v, step,
                                             vmax=vmax, **args)
        _close(p.numpy(), want, rtol=1e-5, atol=1e-6)


def test_the_reference_agrees_with_pytorch():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = R.normal(0, 2, (4, 3, 5)).astype(np.float64)
    w, b = R.uniform(0.5, 1.5, 3), R.normal(0, 1, 3)
    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    y = tf.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    np.testing.assert_allclose(ref.batch_norm_train(x, w, b)[0], y.detach().numpy(), rtol=1e-12)
    gy = R.standard_normal(x.shape)
    y.backward(torch.tensor(gy))
    for a, t in zip(ref.batch_norm_train_grad(gy, x, w), (xt, wt, bt)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    z = R.standard_normal((6, 4))
    tg = np.array([0, 3, -100, 2, 1, 3])
    wc = R.uniform(0.5, 2, 4)
    zt = torch.tensor(z, requires_grad=True)
    loss = tf.cross_entropy(zt, torch.tensor(tg), weight=torch.tensor(wc),
                            label_smoothing=0.15)
    loss.backward()
    np.testing.assert_allclose(ref.cross_entropy(z, tg, wc, -100, 0.15), loss.item(),
                               rtol=1e-12)
    np.testing.assert_allclose(ref.cross_entropy_grad(z, tg, wc, -100, 0.15), zt.grad.numpy(),
                               rtol=1e-10, atol=1e-14)
    p = torch.tensor(R.standard_normal(5), requires_grad=True)
    o = torch.optim.Adam([p], lr=0.01, weight_decay=0.1, amsgrad=True)
    mine, m, v, vmax = p.detach().numpy().copy(), np.zeros(5), np.zeros(5), np.zeros(5)
    for step in range(1, 4):
        g = R.standard_normal(5)
        p.grad = torch.tensor(g)
        o.step()
        mine, m, v, vmax = ref.adam_step(mine, g, m, v, step, lr=0.01, weight_decay=0.1,
                                         vmax=vmax)
    np.testing.assert_allclose(mine, p.detach().numpy(), rtol=1e-12)
