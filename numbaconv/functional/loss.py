"""Losses: ``nll_loss``, ``cross_entropy`` (class indices or probabilities, weights,
``ignore_index``, label smoothing; batched or unbatched) and ``mse_loss``.

Each loss validates its arguments, then runs one fused Function whose backward sits beside it.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..autograd import Function
from ..tensor import Tensor
from ._args import check_float, check_tensor
from .elementwise import log_softmax
from .layout import permute, reshape

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction, fn):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}(): reduction={reduction!r}; expected one of {_REDUCTIONS}")


class NLL(Function):
    def forward(self, logp, *, target, weight, ignore_index, reduction):
        be = self.backend
        losses, w = be.nll(logp, target, weight, ignore_index)
        self.target, self.w, self.n_classes = target, w, logp.shape[1]
        self.reduction = reduction
        if reduction == "none":
            return losses
        total = be.reduce("sum", losses, (0,), False)
        if reduction == "sum":
            return total
        self.denom = be.reduce("sum", w, (0,), False)
        return be.binary("div", total, self.denom)

    def backward(self, g):
        be = self.backend
        n = len(self.target)
        if self.reduction == "none":
            rows = g
        elif self.reduction == "sum":
            rows = be.broadcast_to(g, (n,))
        else:
            rows = be.broadcast_to(be.binary("div", g, self.denom), (n,))
        return (be.nll_backward(be.ascontiguous(rows), self.target, self.w, self.n_classes),)


def _unbatched(input, target, fn) -> bool:
    """One sample: logits (C,) and a 0-d class index (or (C,) probabilities)."""
    if not isinstance(input, Tensor) or input.ndim != 1:
        return False
    if isinstance(target, Tensor) and (target.ndim == 0 or (
            target.dtype.kind == "f" and target.shape == input.shape)):
        return True
    raise ValueError(f"{fn}(): an unbatched input of shape {input.shape} needs a 0-d class "
                     f"index target, got shape "
                     f"{getattr(target, 'shape', type(target).__name__)}")


def _class_last(input: Tensor, target: Tensor, fn: str):
    """(N, C, d1, ...) input and (N, d1, ...) target -> (M, C) and (M,)."""
    if input.ndim < 2:
        raise ValueError(f"{fn}(): input must be (N, C) or (N, C, d1, ...), got {input.shape}")
    expected = (input.shape[0],) + input.shape[2:]
    if target.shape != expected:
        raise ValueError(f"{fn}(): target has shape {target.shape}, expected {expected} for "
                         f"input of shape {input.shape}")
    if input.ndim > 2:
        perm = (0,) + tuple(range(2, input.ndim)) + (1,)
        input = reshape(permute(input, *perm), -1, input.shape[1])
        target = reshape(target, -1)
    return input, target


def _check_target(target, n_classes, ignore_index, fn):
    check_tensor(target, fn, "target")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{fn}(): target must hold class indices (an integer tensor), got "
                        f"dtype {target.dtype}")
    if getattr(target.backend, "checks_targets_on_device", False):
        return  # the loss kernel flags a bad label; the next synchronisation raises
    t = target.numpy()
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if np.any(bad):
        raise ValueError(f"{fn}(): target holds {t[bad][0]}, outside [0, {n_classes}) for "
                         f"{n_classes} classes")


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` at class indices ``target``:
    (N, C) with (N,), (N, C, d1, ...) with (N, d1, ...), or one unbatched sample (C,) with a
    0-d target, as PyTorch."""
    check_float(input, "nll_loss")
    _check_reduction(reduction, "nll_loss")
    unbatched = _unbatched(input, target, "nll_loss")
    if unbatched:
        loss = nll_loss(reshape(input, 1, -1), reshape(target, 1), weight,
                        ignore_index, reduction)
        return reshape(loss, ()) if reduction == "none" else loss
    _check_target(target, input.shape[1] if input.ndim > 1 else 0, ignore_index, "nll_loss")
    out_shape = target.shape
    logp, tgt = _class_last(input, target, "nll_loss")
    if weight is not None:
        check_float(weight, "nll_loss", "weight")
        if weight.shape != (logp.shape[1],):
            raise ValueError(f"nll_loss(): weight has shape {weight.shape}, expected "
                             f"({logp.shape[1]},)")
    loss = NLL.apply(logp, target=tgt.data, weight=None if weight is None else weight.data,
                     ignore_index=int(ignore_index), reduction=reduction)
    return reshape(loss, out_shape) if reduction == "none" else loss


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits ``input`` (N, C[, d...]) and ``target``: class indices
    (N[, d...]) or class probabilities of the input's shape (soft labels, as PyTorch allows).

    ``log_softmax`` then ``nll_loss``, with PyTorch's label smoothing: the loss is
    ``(1 - s) * nll + s / C * sum_c(-w_c * log p_c)``; probability targets are smoothed to
    ``(1 - s) * p + s / C``. Stable for logits of any magnitude.
    """
    check_float(input, "cross_entropy")
    _check_reduction(reduction, "cross_entropy")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or \
            not 0 <= label_smoothing <= 1:
        raise ValueError(f"cross_entropy(): label_smoothing={label_smoothing!r} must be in "
                         f"[0, 1]")
    if _unbatched(input, target, "cross_entropy"):
        loss = cross_entropy(reshape(input, 1, -1),
                             reshape(target, (1,) + tuple(target.shape)), weight,
                             ignore_index, reduction, label_smoothing)
        return reshape(loss, ()) if reduction == "none" else loss
    if input.ndim < 2:
        raise ValueError(f"cross_entropy(): input must be (N, C) or (N, C, d1, ...), got "
                         f"{input.shape}")
    n_classes = input.shape[1]
    if isinstance(target, Tensor) and target.dtype.kind == "f":
        return _soft_cross_entropy(input, target, weight, reduction, label_smoothing)
    _check_target(target, n_classes, ignore_index, "cross_entropy")
    logits, tgt = _class_last(input, target, "cross_entropy")
    logp = log_softmax(logits, 1)
    loss = nll_loss(logp, tgt, weight, ignore_index, reduction)
    if label_smoothing > 0:
        per_class = logp if weight is None else logp * weight
        valid = Tensor._make(input.backend.asarray(tgt.numpy() != ignore_index, logp.dtype),
                             input.device)
        smooth = -(per_class.sum(1) * valid)
        if reduction == "mean":
            if weight is None:
                denom = valid.sum()
            else:
                safe = np.where(tgt.numpy() != ignore_index, tgt.numpy(), 0)
                denom = (weight[safe] * valid).sum()
            # every target ignored: the loss is NaN (nll's 0/0, as PyTorch's) but the
            # smoothing term's gradient must stay 0, not 0 * (1/0)
            denom = denom + (denom == 0).type(denom.dtype)
            smooth = smooth.sum() / denom
        elif reduction == "sum":
            smooth = smooth.sum()
        loss = loss * (1 - label_smoothing) + smooth * (label_smoothing / n_classes)
    if reduction == "none":
        loss = reshape(loss, target.shape)
    return loss


def _soft_cross_entropy(input, target, weight, reduction, label_smoothing):
    if target.shape != input.shape:
        raise TypeError(f"cross_entropy(): a float target of shape {target.shape} is neither "
                        f"class indices (an integer tensor) nor class probabilities of the "
                        f"input's shape {input.shape}")
    if target.dtype != input.dtype:
        raise TypeError(f"cross_entropy(): target has dtype {target.dtype}, input "
                        f"{input.dtype}")
    n_classes = input.shape[1]
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    logp = log_softmax(input, 1)
    if weight is not None:
        check_float(weight, "cross_entropy", "weight")
        if weight.shape != (n_classes,):
            raise ValueError(f"cross_entropy(): weight has shape {weight.shape}, expected "
                             f"({n_classes},)")
        logp = logp * reshape(weight, (1, n_classes) + (1,) * (input.ndim - 2))
    per_item = -(logp * target).sum(1)
    if reduction == "mean":
        return per_item.sum() / (per_item.numel() or 1)
    if reduction == "sum":
        return per_item.sum()
    return per_item


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error; shapes must match (no silent broadcasting)."""
    check_float(input, "mse_loss")
    check_float(target, "mse_loss", "target")
    _check_reduction(reduction, "mse_loss")
    if input.shape != target.shape:
        raise ValueError(f"mse_loss(): input shape {input.shape} and target shape "
                         f"{target.shape} differ")
    sq = (input - target) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    return sq
