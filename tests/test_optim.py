"""Optimizers and schedules: trajectories against torch.optim, state dicts, argument errors."""

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import optim
from tests.helpers import needs_torch, torch


def _quartic(p):  # a smooth, non-quadratic objective with non-trivial gradients
    return ((p * p - 1.0) ** 2).sum() + (p * 0.3).sum()


@needs_torch
@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True)),
    ("Adam", dict(lr=0.02)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.02)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, eps=1e-6)),
])
def test_trajectory_matches_torch_over_10_steps(name, kw):
    w0 = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    a = nc.tensor(w0, requires_grad=True)
    b = torch.tensor(w0, requires_grad=True)
    oa = getattr(optim, name)([a], **kw)
    ob = getattr(torch.optim, name)([b], **kw)
    sign = -1.0 if kw.get("maximize") else 1.0  # maximise the negated objective
    for _ in range(10):
        oa.zero_grad()
        ob.zero_grad()
        (_quartic(a) * sign).backward()
        (_quartic(b) * sign).backward()
        oa.step()
        ob.step()
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=2e-5, atol=2e-6)
    assert a.dtype == nc.float32


@needs_torch
@pytest.mark.parametrize("name,kw", [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 9], gamma=0.3)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=25)),
    ("OneCycleLR", dict(max_lr=0.5, epochs=5, steps_per_epoch=4, anneal_strategy="linear",
                        three_phase=True, pct_start=0.25)),
])
def test_schedules_match_torch(name, kw):
    a = nc.tensor([1.0], requires_grad=True)
    b = torch.tensor([1.0], requires_grad=True)
    oa = optim.SGD([a], lr=0.1, momentum=0.9)
    ob = torch.optim.SGD([b], lr=0.1, momentum=0.9)
    sa = getattr(optim.lr_scheduler, name)(oa, **kw)
    sb = getattr(torch.optim.lr_scheduler, name)(ob, **kw)
    steps = kw.get("total_steps", 20) - 1 if name == "OneCycleLR" else 15
    for _ in range(steps):
        oa.step()
        ob.step()
        sa.step()
        sb.step()
        np.testing.assert_allclose(sa.get_last_lr(), sb.get_last_lr(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(oa.param_groups[0]["momentum"],
                                   ob.param_groups[0]["momentum"], rtol=1e-9)


def test_state_dict_round_trip_continues_identically():
    def run(steps, opt_state=None, init=None):
        p = nc.tensor(init, requires_grad=True)
        o = optim.Adam([p], lr=0.05)
        if opt_state is not None:
            o.load_state_dict(opt_state)
        for _ in range(steps):
            o.zero_grad()
            _quartic(p).backward()
            o.step()
        return p, o

    w0 = np.linspace(-1, 1, 6).astype(np.float32)
    full, _ = run(6, init=w0)
    half, o = run(3, init=w0)
    rest, _ = run(3, opt_state=o.state_dict(), init=half.numpy().copy())
    np.testing.assert_array_equal(full.numpy(), rest.numpy())


def test_optimizer_errors_and_param_groups():
    p = nc.randn(3, requires_grad=True)
    q = nc.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr=-1"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="does not require grad"):
        optim.SGD([nc.randn(3)], lr=0.1)
    o = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in o.param_groups] == [0.1, 0.5]
    (p.sum() + q.sum()).backward()
    before = q.numpy().copy()
    o.step()
    np.testing.assert_allclose(q.numpy(), before - 0.5, rtol=1e-6)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=0.01)),
                                    ("AdamW", dict(lr=0.01, amsgrad=True))])
def test_large_parameters_take_the_parallel_kernel_with_the_same_result(name, kw):
    from numbaconv.kernels.cpu import optim as optim_k

    n = optim_k.PARALLEL_MIN + 3
    w0 = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    big = nc.tensor(w0, requires_grad=True)
    small = [nc.tensor(w0[i:i + 1000], requires_grad=True) for i in range(0, n, 1000)]
    ob, os_ = getattr(optim, name)([big], **kw), getattr(optim, name)(small, **kw)
    for _ in range(3):
        ob.zero_grad()
        os_.zero_grad()
        _quartic(big).backward()
        sum(_quartic(p) for p in small).backward()
        ob.step()
        os_.step()
    np.testing.assert_allclose(big.numpy(), np.concatenate([p.numpy() for p in small]),
                               rtol=1e-6, atol=1e-7)
