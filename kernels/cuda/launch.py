"""Kernel launches with the least host time, and the per-kernel profiler.

``kernel[grid, block](*args)`` costs ~22 us of host time in numba-cuda: it types every argument
and looks the specialisation up through the dispatcher on each call. :class:`Launcher` does that
once per (kernel, argument types): it keys the compiled kernel by a cheap description of the
arguments and then calls the compiled kernel's own ``launch`` with grid and block already
normalised. On the simulator (no compiled kernels) it takes numba's ordinary path.

Profiling (``NUMBACONV_CUDA_PROFILE=1`` or ``numbaconv.cuda.profile()``) records a CUDA event
pair around every launch and reports, per kernel, its launches and GPU time.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from numba import cuda

SIMULATOR = bool(cuda.config.ENABLE_CUDASIM)
_NUMBA_PATH = object()  # a kernel numba keeps to its own launch path


def _dim3(d):
    if isinstance(d, tuple):
        return d + (1,) * (3 - len(d))
    return (int(d), 1, 1)


def arg_key(a):
    """A hashable description at least as fine as numba's type of a kernel argument."""
    t = type(a)
    if t is int:
        return int
    if t is bool:
        return bool
    if t is tuple:
        return tuple(arg_key(v) for v in a)
    if isinstance(a, np.generic):
        return a.dtype
    flags = a.flags
    return (a.dtype, a.ndim, flags["C_CONTIGUOUS"], flags["F_CONTIGUOUS"])


class Profile:
    """Per-kernel launches and GPU time between :meth:`start` and :meth:`report`."""

    def __init__(self):
        self.records: list = []

    def around(self, name):
        start, end = cuda.event(), cuda.event()
        start.record()
        self.records.append((name, start, end))
        return end

    def table(self) -> list[tuple[str, int, float]]:
        """(kernel, launches, total GPU ms) rows, the most expensive first."""
        cuda.synchronize()
        agg: dict[str, list] = {}
        for name, start, end in self.records:
            row = agg.setdefault(name, [0, 0.0])
            row[0] += 1
            try:
                row[1] += cuda.event_elapsed_time(start, end)
            except Exception:  # the simulator's events carry no time
                pass
        return sorted(((k, v[0], v[1]) for k, v in agg.items()), key=lambda r: -r[2])


class Launcher:
    """Launch ``dispatcher`` over ``grid`` x ``block`` with ``args``, counting launches."""

    def __init__(self):
        self._compiled: dict = {}
        self.launches = 0
        self.profile: Profile | None = None
        self._stream = None
        self._warned = False
        # NUMBACONV_CUDA_FAST_LAUNCH=0: numba's own path for every launch (to measure the gap)
        self.fast = os.environ.get("NUMBACONV_CUDA_FAST_LAUNCH", "1").strip() != "0"

    def __call__(self, name, dispatcher, grid, block, args):
        self.launches += 1
        end = self.profile.around(name) if self.profile is not None else None
        if SIMULATOR or not self.fast:
            dispatcher[grid, block](*args)
        else:
            key = (dispatcher, tuple(arg_key(a) for a in args))
            compiled = self._compiled.get(key)
            if compiled is None:
                dispatcher[grid, block](*args)  # types, compiles and launches once
                compiled = self._find(dispatcher, args)
                self._compiled[key] = _NUMBA_PATH if compiled is None else compiled
            elif compiled is _NUMBA_PATH:
                dispatcher[grid, block](*args)
            else:
                compiled.launch(args, _dim3(grid), _dim3(block), self._stream, 0)
        if end is not None:
            end.record()

    def _find(self, dispatcher, args):
        """The compiled kernel numba just used for ``args``; None where numba keeps it out of
        reach (a launch-configuration-sensitive kernel), which then keeps numba's path."""
        if self._stream is None:
            from numba.cuda.cudadrv import driver

            self._stream = driver._to_core_stream(0)
        if getattr(dispatcher, "_launch_config_sensitive", False):
            return None
        argtypes = tuple(dispatcher.typeof_pyval(a) for a in args)
        compiled = getattr(dispatcher, "overloads", {}).get(argtypes)
        if compiled is None or not callable(getattr(compiled, "launch", None)):
            if not self._warned:
                self._warned = True
                warnings.warn("numbaconv: this numba-cuda keeps its compiled kernels out of "
                              "reach; launches take numba's slower dispatch path",
                              RuntimeWarning, stacklevel=3)
            return None
        return compiled
