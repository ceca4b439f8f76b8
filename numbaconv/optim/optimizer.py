"""Optimizers: ``SGD``, ``Adam``, ``AdamW`` with ``torch.optim``'s semantics.

Each step runs one fused backend kernel per parameter (no per-element Python). State (momentum
buffers, moments) lives on the parameter's device.
"""

from __future__ import annotations

import math
import numbers
import warnings

from ..autograd import mark_written, no_grad
from ..tensor import Tensor


class Optimizer:
    def __init__(self, params, defaults: dict):
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors (or of param-group dicts), "
                            "not a single Tensor")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}  # keyed by id(param)
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        ps = group["params"]
        group["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be Tensors, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError("optimizer got a parameter that does not require grad")
        unique = list({id(p): p for p in group["params"]}.values())
        if len(unique) != len(group["params"]):
            warnings.warn(f"{type(self).__name__}: a parameter group lists the same parameter "
                          f"more than once ({len(group['params'])} entries, {len(unique)} "
                          f"parameters); each is kept once, so that a step updates it once",
                          UserWarning, stacklevel=3)
            group["params"] = unique
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("a parameter appears in more than one parameter group")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._validate(group)
        self.param_groups.append(group)

    def _validate(self, group):
        lr = group["lr"]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or lr < 0:
            raise ValueError(f"{type(self).__name__}: lr={lr!r} must be a non-negative number")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.zero_()

    def _params(self):
        for g in self.param_groups:
            for p in g["params"]:
                yield g, p

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict:
        """{"state": {index: {name: value}}, "param_groups": [...]} with params as indices,
        as PyTorch; tensors in the state are detached copies."""
        index = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {}
        for _, p in self._params():
            st = self.state.get(id(p))
            if st:
                state[index[id(p)]] = {k: (v.clone().detach() if isinstance(v, Tensor) else v)
                                       for k, v in st.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict(): {len(groups)} parameter groups saved, "
                             f"{len(self.param_groups)} in this optimizer")
        params = []
        for saved, own in zip(groups, self.param_groups):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError("load_state_dict(): a parameter group has a different size")
            params.extend(zip(saved["params"], own["params"]))
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = v
        self.state = {}
        for idx, p in params:
            st = state_dict["state"].get(idx, state_dict["state"].get(str(idx)))
            if st is None:
                continue
            new = {}
            for k, v in st.items():
                if isinstance(v, Tensor) or hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
                    arr = v.numpy() if isinstance(v, Tensor) else v
                    if tuple(arr.shape) != p.shape:
                        raise ValueError(f"load_state_dict(): state {k!r} has shape "
                                         f"{tuple(arr.shape)}, parameter has {p.shape}")
                    t = Tensor._make(p.backend.asarray(arr, p.dtype), p.device)
                    new[k] = t
                else:
                    new[k] = v.item() if hasattr(v, "item") else v
            self.state[id(p)] = new

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(k for k in g if k != "params"):
                lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


def _zeros_like(p: Tensor) -> Tensor:
    return Tensor._make(p.backend.zeros(p.shape, p.dtype), p.device)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay,
    exactly as ``torch.optim.SGD``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False):
        if momentum < 0:
            raise ValueError(f"SGD: momentum={momentum!r} must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay={weight_decay!r} must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    @no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g, p in self._params():
            if p.grad is None:
                continue
            grad = p.grad.data
            if g["maximize"]:
                grad = p.backend.unary("neg", grad)
            st = self.state.setdefault(id(p), {})
            buf = None
            first = False
            if g["momentum"] != 0:
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = _zeros_like(p)
                    first = True
                buf = st["momentum_buffer"].data
            p.backend.sgd_step(p.data, grad, buf, g["lr"], g["momentum"], g["dampening"],
                               g["nesterov"], g["weight_decay"], first)
            mark_written(p)
        return loss


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``: weight decay adds ``wd * p`` to the
    gradient. ``AdamW`` decouples it instead."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"{type(self).__name__}: betas={betas!r} must be in [0, 1)")
        if eps < 0:
            raise ValueError(f"{type(self).__name__}: eps={eps!r} must be >= 0")
        if weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay={weight_decay!r} must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    @no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g, p in self._params():
            if p.grad is None:
                continue
            grad = p.grad.data
            if g["maximize"]:
                grad = p.backend.unary("neg", grad)
            st = self.state.setdefault(id(p), {})
            if not st:
                st["step"] = 0
                st["exp_avg"] = _zeros_like(p)
                st["exp_avg_sq"] = _zeros_like(p)
                if g["amsgrad"]:
                    st["max_exp_avg_sq"] = _zeros_like(p)
            st["step"] += 1
            b1, b2 = g["betas"]
            t = st["step"]
            vmax = st["max_exp_avg_sq"].data if g["amsgrad"] else None
            p.backend.adam_step(p.data, grad, st["exp_avg"].data, st["exp_avg_sq"].data, vmax,
                                g["lr"], b1, b2, g["eps"], g["weight_decay"], self.decoupled,
                                1 - b1 ** t, math.sqrt(1 - b2 ** t))
            mark_written(p)
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * wd`` each step;
    the default weight decay is 0.01, as in PyTorch."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
