"""The tape: ``Function`` (one differentiable op), ``no_grad`` and ``backward``.

An op that runs while gradients are enabled and any of its inputs requires a gradient records
itself as the ``_ctx`` of its output. ``backward`` orders the recorded ops topologically with an
explicit stack (no recursion, so chains of any length work), walks them in reverse, and
accumulates into ``.grad`` of the leaves. Outputs do not point back at their ops' outputs, so the
graph holds no reference cycles and is freed as soon as the last tensor that uses it goes away.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .tensor import Tensor

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


def set_grad_enabled(mode: bool) -> None:
    _state.enabled = bool(mode)


class _GradMode:
    mode = True

    def __enter__(self):
        self._prev = is_grad_enabled()
        set_grad_enabled(self.mode)
        return self

    def __exit__(self, *exc):
        set_grad_enabled(self._prev)
        return False

    def __call__(self, func):
        import functools

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return func(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """Context manager (and decorator) in which no op is recorded on the tape."""

    mode = False


class enable_grad(_GradMode):
    """Context manager (and decorator) that turns recording back on inside ``no_grad``."""

    mode = True


class _InplaceLog:
    """When each storage was last written in place, on one clock that every in-place write
    advances (``add_``, ``__setitem__``, ``copy_``, optimizer updates, ``nn.init``, through a
    detached view or under ``no_grad`` alike). A Function notes the clock when it runs; at its
    backward, if the clock has moved, each array it kept is checked: written since means its
    gradient would be computed from values the forward never saw, so backward refuses (as
    PyTorch's version counters do). Nothing is looked up per op until something is written in
    place, and then only for the ops that ran before the write."""

    def __init__(self):
        self.clock = 0
        self._last: dict[int, tuple] = {}   # id(storage) -> (weakref to it, clock of write)

    def written(self, backend, array) -> None:
        root = backend.storage(array)
        self.clock += 1
        key = id(root)
        log = self._last

        def forget(ref, key=key):
            entry = log.get(key)
            if entry is not None and entry[0] is ref:
                del log[key]

        try:
            ref = weakref.ref(root, forget)
        except TypeError:  # a storage that cannot be weakly referenced: keep it alive
            def ref(r=root):
                return r
        log[key] = (ref, self.clock)

    def written_since(self, backend, array, clock) -> bool:
        root = backend.storage(array)
        entry = self._last.get(id(root))
        return entry is not None and entry[0]() is root and entry[1] > clock


INPLACE = _InplaceLog()

# The tracer of a forward pass being exported (numbaconv.onnx), told of every op and every
# module call; None otherwise (one check per op).
TRACER: list = [None]


def mark_written(tensor_or_array, backend=None) -> None:
    """Record an in-place write into a tensor's storage (see :class:`_InplaceLog`)."""
    data = getattr(tensor_or_array, "data", tensor_or_array)
    be = backend if backend is not None else tensor_or_array.backend
    INPLACE.written(be, data)


class Function:
    """One differentiable op.

    Subclasses implement ``forward(self, *arrays, **params) -> array`` (or a tuple whose first
    element is the differentiable output and the rest are non-differentiable, e.g. indices) and
    ``backward(self, grad) -> tuple`` with one gradient array (or ``None``) per tensor input.
    ``self.backend`` is the backend of the inputs; ``self.save(...)`` keeps arrays for backward.
    """

    __slots__ = ("backend", "inputs", "needs_input_grad", "saved", "freed", "clock",
                 "__dict__")

    def save(self, *arrays):
        self.saved = arrays

    def _check_unchanged(self):
        """Raise if an array this op kept (saved, or held as an attribute: a mask, an output,
        the targets) was written in place after the op ran."""
        if INPLACE.clock == self.clock:
            return
        be = self.backend
        kept = list(self.saved)
        for value in self.__dict__.values():
            kept.extend(value if isinstance(value, tuple) else (value,))
        for a in kept:
            if be.is_array(a) and INPLACE.written_since(be, a, self.clock):
                raise RuntimeError(
                    f"{type(self).__name__}: a tensor of shape {tuple(a.shape)} that this op "
                    f"kept for its gradient was modified in place after the forward pass "
                    f"(add_, __setitem__, copy_, an optimizer step, ...); its gradient would be "
                    f"wrong. Change a copy (clone()) instead, or run the forward again after "
                    f"the change")

    @classmethod
    def apply(cls, *inputs: Tensor, **params):
        from .tensor import Tensor

        first = inputs[0]
        device = first.device
        for t in inputs[1:]:
            if t.device != device:
                raise RuntimeError(
                    f"{cls.__name__}: expected all tensors on one device, got {device!r} and "
                    f"{t.device!r}; move them explicitly with .to(device)"
                )
        fn = cls()
        fn.backend = first.backend
        fn.saved = ()
        fn.clock = INPLACE.clock
        out = fn.forward(*[t.data for t in inputs], **params)
        record = is_grad_enabled() and any(t.requires_grad for t in inputs)
        extra = ()
        if isinstance(out, tuple):
            out, *extra = out
        # an op's output lives on its inputs' device, except a transfer's (ToDevice)
        result = Tensor._make(out, getattr(fn, "out_device", device), requires_grad=record)
        if record:
            fn.inputs = inputs
            fn.needs_input_grad = tuple(t.requires_grad for t in inputs)
            fn.freed = False
            result._ctx = fn
        else:
            fn.saved = ()
        if extra:
            result = (result, *[Tensor._make(e, result.device) for e in extra])
        if TRACER[0] is not None:  # numbaconv.onnx.export is recording the ops of a forward
            TRACER[0].on_function(cls, inputs, params, result)
        return result

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward")


# ------------------------------------------------------------------ hooks


class _Hooks:
    """Leaves with post-accumulate-grad hooks, counted so that a backward pass without any
    costs nothing; callbacks queued for the end of the running backward pass."""

    hooked = 0


def register_post_accumulate_grad_hook(tensor: Tensor, hook):
    """Call ``hook(tensor)`` once per backward pass, when the leaf's ``.grad`` has received
    every contribution of that pass (PyTorch's ``Tensor.register_post_accumulate_grad_hook``).
    A leaf that the pass does not reach is not called. Returns a handle with ``remove()``."""
    if tensor._ctx is not None:
        raise RuntimeError("register_post_accumulate_grad_hook: only leaf tensors have "
                           "accumulated gradients; this tensor is the output of an op")
    if not tensor.requires_grad:
        raise RuntimeError("register_post_accumulate_grad_hook: the tensor does not require "
                           "grad")
    if not callable(hook):
        raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got "
                        f"{type(hook).__name__}")
    if tensor._grad_hooks is None:
        tensor._grad_hooks = []
    tensor._grad_hooks.append(hook)
    _Hooks.hooked += 1
    return _HookHandle(tensor, hook)


class _HookHandle:
    def __init__(self, tensor, hook):
        self._tensor, self._hook = weakref.ref(tensor), hook

    def remove(self) -> None:
        t = self._tensor()
        hooks = t._grad_hooks if t is not None else None
        if hooks and any(h is self._hook for h in hooks):
            hooks.remove(self._hook)
            _Hooks.hooked -= 1
            if not hooks:
                t._grad_hooks = None


def queue_callback(callback) -> None:
    """Run ``callback()`` once the backward pass now running has finished (PyTorch's
    ``Variable._execution_engine.queue_callback``): how a hook that started work during the
    pass (an all-reduce of gradients) waits for it at the end."""
    queue = getattr(_state, "callbacks", None)
    if queue is None:
        raise RuntimeError("queue_callback: no backward pass is running")
    queue.append(callback)


def _hook_counts(order):
    """For each hooked leaf reached by ``order``: how many of its ops' gradients it awaits."""
    pending = {}
    for fn in order:
        for t, need in zip(fn.inputs, fn.needs_input_grad):
            if need and t._ctx is None and t._grad_hooks:
                pending[id(t)] = pending.get(id(t), 0) + 1
    return pending


def _settle(fn, pending) -> None:
    """``fn`` has delivered its gradients (or none): fire the hooks of the leaves that were
    waiting for it last."""
    for t, need in zip(fn.inputs, fn.needs_input_grad):
        if need and id(t) in pending:
            pending[id(t)] -= 1
            if pending[id(t)] == 0:
                del pending[id(t)]
                if t.grad is not None:
                    for hook in list(t._grad_hooks or ()):
                        hook(t)


def backward(root: Tensor, grad=None, retain_graph: bool = False) -> None:
    """Backpropagate from ``root`` into the ``.grad`` of every leaf that requires a gradient.
    Then runs the callbacks queued during the pass (:func:`queue_callback`)."""
    outer = getattr(_state, "callbacks", None)
    _state.callbacks = []
    try:
        _backward(root, grad, retain_graph)
        while _state.callbacks:
            _state.callbacks.pop(0)()
    finally:
        _state.callbacks = outer


def _backward(root: Tensor, grad, retain_graph: bool) -> None:
    from .tensor import Tensor

    if not root.requires_grad:
        raise RuntimeError(
            "backward(): the tensor does not require grad and has no grad_fn; did an input "
            "have requires_grad=True, and did the op run outside no_grad()?"
        )
    backend = root.backend
    if grad is None:
        if root.numel() != 1:
            raise RuntimeError(
                f"backward(): grad can be implicitly created only for a tensor with one element, "
                f"got shape {root.shape}; pass gradient= of the same shape"
            )
        g = backend.full(root.shape, 1, root.dtype)
    else:
        if not isinstance(grad, Tensor):
            raise TypeError(f"backward(): gradient must be a Tensor, got {type(grad).__name__}")
        if grad.shape != root.shape:
            raise ValueError(
                f"backward(): gradient has shape {grad.shape}, expected the tensor's shape "
                f"{root.shape}"
            )
        if grad.device != root.device:
            raise RuntimeError(
                f"backward(): gradient is on {grad.device!r} but the tensor on {root.device!r}"
            )
        g = grad.data
        if grad.dtype != root.dtype or not g.flags["C_CONTIGUOUS"]:
            g = backend.astype(g, root.dtype)
    # the caller's array is read, never kept: where it would become a leaf's .grad, that
    # gets a copy (Functions never write into the gradients they are given)
    seed = grad.data if grad is not None else None

    if root._ctx is None:  # a leaf: its gradient is the seed itself
        _accumulate_leaf(root, g, seed)
        for hook in list(root._grad_hooks or ()):
            hook(root)
        return

    order = _topological_order(root._ctx)
    pending = _hook_counts(order) if _Hooks.hooked else None
    grads = {id(root._ctx): g}
    for fn in order:
        g = grads.pop(id(fn), None)
        if g is None:  # no gradient flowed into this op (every consumer returned None)
            if pending:
                _settle(fn, pending)
            continue
        if fn.freed:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved "
                "tensors after they have already been freed). Specify retain_graph=True on the "
                "first backward() if you need to backward through it again."
            )
        fn._check_unchanged()
        in_grads = fn.backward(g)
        if not retain_graph:
            fn.saved = ()
            fn.freed = True
        for t, gi, need in zip(fn.inputs, in_grads, fn.needs_input_grad):
            if gi is None or not need:
                continue
            ctx = t._ctx
            if ctx is None:
                _accumulate_leaf(t, gi, seed)
            else:
                key = id(ctx)
                prev = grads.get(key)
                grads[key] = gi if prev is None else fn.backend.binary("add", prev, gi)
                if t._retains_grad:
                    _accumulate_leaf(t, gi, seed)
        if pending:
            _settle(fn, pending)


def _accumulate_leaf(t: Tensor, g, seed=None) -> None:
    """Add ``g`` into ``t.grad``. ``seed`` is the array the caller passed to backward(), which
    is stored only as a copy."""
    from .tensor import Tensor

    backend = t.backend
    if tuple(g.shape) != t.shape:  # every Function returns input-shaped gradients
        raise RuntimeError(f"internal error: gradient shape {g.shape} for a tensor of {t.shape}")
    if g.dtype != t.dtype:
        g = backend.astype(g, t.dtype)
    grad = t.grad
    if grad is None:
        if seed is not None and g is seed:
            g = backend.astype(g, t.dtype)
        t.grad = Tensor._make(g, t.device)
        return
    # PyTorch's rule: accumulate in place when nothing but ``t.grad`` holds the gradient (the
    # slot, this local and getrefcount's argument make 3 for the tensor; the tensor's slot and
    # the argument make 2 for its array); otherwise make a new one, so that a gradient the
    # user kept, or one array shared by two leaves, is never changed behind their back
    exclusive = sys.getrefcount(grad) <= 3 and sys.getrefcount(grad.data) <= 2
    data = backend.accumulate(grad.data, g, exclusive)
    if data is not grad.data:
        t.grad = Tensor._make(data, t.device)


def _topological_order(root_fn: Function) -> list[Function]:
    """Ops reachable from ``root_fn``, each after every op that consumes its output."""
    post: list[Function] = []
    visited: set[int] = set()
    stack: list[tuple[Function, bool]] = [(root_fn, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            post.append(fn)
            continue
        if id(fn) in visited:
            continue
        visited.add(id(fn))
        stack.append((fn, True))
        for t in fn.inputs:
            ctx = t._ctx
            if ctx is not None and id(ctx) not in visited:
                stack.append((ctx, False))
    post.reverse()
    return post
