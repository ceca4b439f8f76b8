"""Naming the kernels Numba compiles, while it compiles them.

A first run compiles every kernel its first training step needs (tens of seconds on a cold
cache; later runs load them from Numba's on-disk cache in well under a second). Numba announces
each real compilation, not a cache load, as a ``numba:compile`` event; :func:`watch_compiles`
passes the kernel's name to a callback, so that a progress bar can say what it is waiting for.
Kernels compiled as part of another (the helpers a kernel calls) are announced too.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


def _event_modules():
    """Numba's event module, and numba-cuda's own where the CUDA backend is loaded."""
    from numba.core import event

    mods = [event]
    cuda_ev = sys.modules.get("numba.cuda.core.event")
    if cuda_ev is not None and cuda_ev is not event:
        mods.append(cuda_ev)
    return mods


class CompileLog:
    """What :func:`watch_compiles` saw: (kernel name, seconds) per compilation, outermost
    first, and the callback's view of them."""

    def __init__(self, callback):
        self.callback = callback
        self.names: list[str] = []
        self.seconds: list[float] = []
        self._open: list[tuple[str, float]] = []

    def _start(self, name: str) -> None:
        self._open.append((name, time.perf_counter()))
        self.names.append(name)
        if self.callback is not None:
            self.callback(name, len(self.names))

    def _end(self) -> None:
        if self._open:
            _, t0 = self._open.pop()
            if not self._open:  # time only the outermost: nested ones are inside it
                self.seconds.append(time.perf_counter() - t0)

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)


def _kernel_name(ev) -> str | None:
    """The name of numbaconv's kernel being compiled; None for Numba's own helpers (the
    implementations of NumPy functions that a kernel uses, compiled with it)."""
    disp = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
    func = getattr(disp, "py_func", None)
    if not getattr(func, "__module__", "").startswith("numbaconv"):
        return None
    return func.__name__


@contextmanager
def watch_compiles(callback=None):
    """Within the block, call ``callback(kernel_name, n_so_far)`` as each kernel starts
    compiling; yields the :class:`CompileLog`."""
    log = CompileLog(callback)
    listeners = []
    for mod in _event_modules():
        class _Listener(mod.Listener):
            def on_start(self, ev):
                name = _kernel_name(ev)
                if name is not None:
                    log._start(name)

            def on_end(self, ev):
                if _kernel_name(ev) is not None:
                    log._end()

        listener = _Listener()
        mod.register("numba:compile", listener)
        listeners.append((mod, listener))
    try:
        yield log
    finally:
        for mod, listener in listeners:
            mod.unregister("numba:compile", listener)
