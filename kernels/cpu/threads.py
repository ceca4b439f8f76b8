"""Threads for the CPU kernels: a pool of Python workers, per-thread scratch buffers, and
single-threaded BLAS.

Two levels of parallelism must not fight over the cores. Numba's ``prange`` kernels use Numba's
threads; work that mixes Numba and BLAS per image (convolution) is split across Python threads
here (Numba's ``nogil`` kernels and NumPy's BLAS both release the GIL). BLAS itself is held at
one thread during numbaconv's calls: OpenBLAS's own threads busy-wait after each call, and on a
small machine they took the cores from Numba's threads (LeNet-5 trained 8x slower).
"""

from __future__ import annotations

import threading

import numpy as np


class _Workspace(threading.local):
    """Grow-only scratch buffers, one set per thread, reused across calls (fresh pages cost a
    page fault each, more than the packing they hold)."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape, dtype):
        n = int(np.prod(shape))
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.size < n:
            buf = np.empty(max(n, 1), dtype=dtype)
            self.buffers[(name, dtype)] = buf
        return buf[:n].reshape(shape)


workspace = _Workspace()


class _Blas:
    def __init__(self):
        self.controllers = None
        self.knobs = []  # (get, set) of each BLAS's thread count

    def _find(self):
        if self.controllers is None:
            try:
                from threadpoolctl import ThreadpoolController

                self.controllers = ThreadpoolController().select(user_api="blas").lib_controllers
            except Exception:  # threadpoolctl missing or no BLAS found: leave BLAS alone
                self.controllers = []
            self.knobs = [self._knob(c) for c in self.controllers]
        return self.controllers

    @staticmethod
    def _knob(c):
        # entered twice per convolution and matrix product: OpenBLAS's own get/set cost
        # ~0.3 us where threadpoolctl's properties cost ~2.5 us
        try:
            if c.internal_api == "openblas" and c.threading_layer != "openmp":
                get = c._get_symbol("openblas_get_num_threads")
                set_ = c._get_symbol("openblas_set_num_threads")
                if get and set_:
                    return get, set_
        except Exception:  # a threadpoolctl without these internals: its public API
            pass
        return (lambda: c.num_threads), c.set_num_threads

    def single_thread(self):
        """Context manager: BLAS at one thread inside, as before outside."""
        self._find()
        return _OneThread(self.knobs)

    @property
    def controllable(self) -> bool:
        return bool(self._find())


class _OneThread:
    __slots__ = ("knobs", "saved")

    def __init__(self, knobs):
        self.knobs = knobs

    def __enter__(self):
        self.saved = [get() for get, _ in self.knobs]
        for _, set_ in self.knobs:
            set_(1)
        return self

    def __exit__(self, *exc):
        for (_, set_), n in zip(self.knobs, self.saved):
            set_(n)
        return False


blas_threads = _Blas()  # NumPy's BLAS threads (the module blas.py calls BLAS itself)


class _Pool:
    """Runs ``fn(start, stop)`` over ranges in parallel Python threads, BLAS single-threaded."""

    def __init__(self):
        self.executor = None
        self.size = 0

    def workers(self, n_items: int) -> int:
        import numba

        if not blas_threads.controllable:
            return 1
        return max(1, min(numba.get_num_threads(), n_items))

    def map(self, fn, ranges):
        with blas_threads.single_thread():
            if len(ranges) == 1:
                return [fn(*ranges[0])]
            from concurrent.futures import ThreadPoolExecutor

            if self.executor is None or self.size < len(ranges):
                if self.executor is not None:
                    self.executor.shutdown(wait=True)
                self.executor = ThreadPoolExecutor(max_workers=len(ranges),
                                                   thread_name_prefix="numbaconv")
                self.size = len(ranges)
            futures = [self.executor.submit(fn, *r) for r in ranges]
            return [f.result() for f in futures]


pool = _Pool()


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..n in ``parts`` nearly equal contiguous pieces."""
    step = -(-n // max(parts, 1))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def task_ranges(n_img: int) -> np.ndarray:
    """One contiguous range of images per Numba thread, as an (n, 2) int64 array: the
    ``prange`` tasks of the convolution kernels."""
    import numba

    return np.array(split(n_img, min(numba.get_num_threads(), n_img)), dtype=np.int64)
