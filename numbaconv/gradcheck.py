"""``gradcheck``: autograd against float64 central differences, element by element."""

from __future__ import annotations

import numpy as np

from .autograd import no_grad
from .tensor import Tensor, float64


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an analytical gradient disagrees with the numerical one."""


def _outputs(out):
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o for o in outs if isinstance(o, Tensor) and o.dtype.kind == "f"]


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              seed: int = 0) -> bool:
    """Check the gradients of ``fn(*inputs)`` for every input that requires a gradient.

    Each output is reduced to ``sum(out * v)`` with a fixed random ``v``, and the gradient of that
    scalar is compared, element by element, with a central difference ``(f(x+eps) - f(x-eps)) /
    2eps``. Inputs must be float64 and small. Passes when ``|analytic - numeric| <= atol +
    rtol * |numeric|`` everywhere; otherwise raises :class:`GradcheckError` naming the input,
    the worst element and both values. Inputs keep their memory layout (non-contiguous views
    are perturbed in place and restored exactly).
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck(): no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != float64:
            raise TypeError(f"gradcheck(): inputs[{i}] has dtype {inputs[i].dtype}; gradcheck "
                            f"needs float64 inputs (central differences in float32 are noise)")
        if inputs[i].device != "cpu":
            raise ValueError(f"gradcheck(): inputs[{i}] is on {inputs[i].device!r}; check on cpu")
    # leaf copies that share memory with the caller's tensors
    leaves = tuple(Tensor._make(t.data, t.device, requires_grad=t.requires_grad)
                   if isinstance(t, Tensor) else t for t in inputs)
    rng = np.random.default_rng(seed)
    outs = _outputs(fn(*leaves))
    if not outs:
        raise ValueError("gradcheck(): fn returned no floating-point Tensor")
    weights = [rng.standard_normal(o.shape) for o in outs]

    def objective() -> float:
        with no_grad():
            res = _outputs(fn(*leaves))
        return float(sum(np.sum(o.numpy().astype(np.float64) * v) for o, v in zip(res, weights)))

    total = None
    for o, v in zip(outs, weights):
        term = (o * Tensor._make(v.astype(o.dtype), o.device)).sum()
        total = term if total is None else total + term
    if total.requires_grad:
        total.backward()

    worst = None  # (excess, input index, element, numeric, analytic)
    for i in checked:
        leaf = leaves[i]
        data = leaf.data
        analytic = (leaf.grad.numpy() if leaf.grad is not None
                    else np.zeros(leaf.shape, dtype=np.float64))
        for idx in np.ndindex(*leaf.shape):
            orig = data[idx]
            data[idx] = orig + eps
            f_plus = objective()
            data[idx] = orig - eps
            f_minus = objective()
            data[idx] = orig
            numeric = (f_plus - f_minus) / (2 * eps)
            a = float(analytic[idx])
            excess = abs(a - numeric) - (atol + rtol * abs(numeric))
            if not np.isfinite(a) or not np.isfinite(numeric):
                excess = np.inf if np.isfinite(a) != np.isfinite(numeric) else -np.inf
            if worst is None or excess > worst[0]:
                worst = (excess, i, idx, numeric, a)
    if worst is not None and worst[0] > 0:
        _, i, idx, numeric, a = worst
        raise GradcheckError(
            f"gradcheck failed for inputs[{i}] (shape {inputs[i].shape}) at element {idx}: "
            f"numerical {numeric:.10g}, analytical {a:.10g}, |difference| {abs(a - numeric):.3g} "
            f"> atol {atol} + rtol {rtol} * |numerical|"
        )
    return True
