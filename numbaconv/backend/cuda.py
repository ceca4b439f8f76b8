"""The CUDA backend: numba.cuda device arrays and the kernels of ``numbaconv.kernels.cuda``.

Every array this backend returns is a C-contiguous device array; views (transposes, slices,
broadcasts) are materialised by one strided gather kernel, so kernels only ever see contiguous
memory. Nothing goes back to the host between ops, except where an op's result size depends on
data (boolean masks, integer-array indexing with index arrays that live on the host).
Scalars reach kernels as NumPy scalars of the array's dtype, never as Python floats (which
Numba would compile as float64). With ``NUMBA_ENABLE_CUDASIM=1`` everything runs on Numba's
CUDA simulator (slow: for tests on tiny shapes).

This module adapts: the algorithms (convolution, GEMM, split reductions, batch statistics) live
in ``numbaconv.kernels.cuda`` and receive this backend as their ``ctx`` (``empty``, ``launch``,
``n_blocks``, ``cap``, ``dummy``, ``threads``, ``blocks_wanted``). Memory comes from the caching
allocator of ``kernels/cuda/memory.py`` (``NUMBACONV_CUDA_ALLOCATOR=numba`` opts out) and
launches go through ``kernels/cuda/launch.py``, which skips numba's per-call dispatch.
A training step synchronises with the host nowhere: class targets are checked on the device
and a bad one is reported at the next synchronisation (``numpy()``, ``item()``), as PyTorch's
device-side assertions are.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..kernels import cuda as kc
from ..kernels.cuda import conv as conv_k
from ..kernels.cuda import linalg as mm_k
from ..kernels.cuda import memory as mem_k
from ..kernels.cuda import norm as norm_k
from ..kernels.cuda import reduce as red_k
from ..kernels.cuda.launch import Launcher, Profile

try:
    from numba import cuda
except ImportError:  # pragma: no cover - numba always ships a cuda module
    cuda = None

_MODULES = kc.MODULES
kernel = kc.kernel
# threads per block; the simulator runs every thread of a block in Python, so it gets fewer
SIMULATOR = cuda is not None and cuda.config.ENABLE_CUDASIM
THREADS = 64 if SIMULATOR else 256
# every kernel loops over its elements with a grid stride, so the grid can be capped: the
# simulator runs two blocks (each simulated thread costs far more than a loop iteration)
MAX_BLOCKS = 2 if SIMULATOR else 65535

# Launch recording, for the PTX check: (kernel key, dtype, argument descriptions)
RECORD: list | None = [] if os.environ.get("NUMBACONV_RECORD_KERNELS") else None


def describe(arg):
    """A picklable description of a kernel argument's Numba type (see tests/test_cuda.py)."""
    if hasattr(arg, "copy_to_host"):
        return ("array", str(arg.dtype), arg.ndim,
                "C" if arg.flags["C_CONTIGUOUS"] else "A")
    if isinstance(arg, tuple):
        return ("tuple", len(arg))
    if isinstance(arg, bool | np.bool_):
        return ("bool",)
    if isinstance(arg, np.generic):
        return ("scalar", str(arg.dtype))
    if isinstance(arg, int):
        return ("scalar", "int64")
    raise TypeError(f"kernel argument of type {type(arg).__name__} would be passed untyped")


def _cstrides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def _kshape(shape):
    """Kernels index with at least one dimension: a 0-d shape runs as (1,)."""
    return tuple(shape) if len(shape) else (1,)


def _bstrides(shape, out_shape):
    """Element strides that read a contiguous ``shape`` broadcast to ``out_shape``."""
    cs = _cstrides(shape)
    lead = len(out_shape) - len(shape)
    out = [0] * lead + [0 if shape[i] == 1 and out_shape[lead + i] != 1 else cs[i]
                        for i in range(len(shape))]
    return tuple(out) if out else (0,)


def _basic_view(shape, index):
    """(offset, shape, strides) of ``x[index]`` for basic indexing (ints, slices, None, ...)."""
    strides = list(_cstrides(shape))
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if n_real > len(shape):
        raise IndexError(f"too many indices ({n_real}) for a tensor of {len(shape)} dims")
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded += [slice(None)] * (len(shape) - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (len(shape) - sum(1 for i in expanded if i is not None))
    offset, out_shape, out_strides, d = 0, [], [], 0
    for i in expanded:
        if i is None:
            out_shape.append(1)
            out_strides.append(0)
            continue
        n = shape[d]
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            count = max(0, -(-(stop - start) // step))
            offset += start * strides[d]
            out_shape.append(count)
            out_strides.append(strides[d] * step)
        else:
            k = int(i)
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for dimension {d} with size {n}")
            offset += (k % n) * strides[d]
        d += 1
    return offset, tuple(out_shape), tuple(out_strides)


class CUDABackend:
    name = "cuda"
    checks_targets_on_device = True

    def __init__(self):
        if cuda is not None and os.environ.get("NUMBACONV_CUDA_ALLOCATOR", "caching").strip(
                ).lower() != "numba":
            mem_k.install()  # before anything creates a CUDA context
        if cuda is None or not (cuda.is_available() or cuda.config.ENABLE_CUDASIM):
            raise RuntimeError(
                "the 'cuda' backend needs an NVIDIA GPU with its driver, and NVIDIA's numba-cuda "
                "package (pip install 'numbaconv[cuda13]' or 'numbaconv[cuda12]'); none was "
                "found. Set NUMBA_ENABLE_CUDASIM=1 to run on Numba's (slow) CUDA simulator.")
        if "numba_cuda" not in getattr(cuda, "__file__", "numba_cuda"):
            warnings.warn("numba's built-in CUDA target is deprecated; install NVIDIA's "
                          "numba-cuda package (numbaconv[cuda13])", DeprecationWarning,
                          stacklevel=3)
        from . import initial_seed

        self.launcher = Launcher()
        self.threads = THREADS
        # blocks that keep the GPU's loads in flight where a grid is sized by the work (split
        # reductions and split-K): 8 per SM, as such blocks are mostly waiting on memory
        if SIMULATOR:
            self.blocks_wanted = 2
        else:
            self.blocks_wanted = 8 * cuda.get_current_device().MULTIPROCESSOR_COUNT
        self._dummies: dict = {}
        self._constants: dict = {}
        self._target_error = None     # device int64[2]: (flag, the first bad label seen)
        self._targets_unchecked = False
        if os.environ.get("NUMBACONV_CUDA_PROFILE", "").strip() not in ("", "0"):
            self.profile_start()
            import atexit

            atexit.register(self._print_profile_at_exit)
        seed = initial_seed()
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.counter = 0

    # ------------------------------------------------------------ launching (the ctx of
    # numbaconv.kernels.cuda's host functions)
    def launch(self, key, dtype, grid, block, args):
        if RECORD is not None:
            RECORD.append((key, str(np.dtype(dtype)), [describe(a) for a in args]))
        self.launcher(key, kernel(key, dtype), grid, block, args)

    def n_blocks(self, n):
        """A 1-D grid of ``threads``-thread blocks for n elements (kernels grid-stride)."""
        return max(1, min((n + THREADS - 1) // THREADS, MAX_BLOCKS))

    def cap(self, blocks):
        return max(1, min(blocks, MAX_BLOCKS))

    def dummy(self, dtype):
        """A one-element array for an argument a kernel does not read."""
        dtype = np.dtype(dtype)
        d = self._dummies.get(dtype)
        if d is None:
            d = self._dummies[dtype] = cuda.to_device(np.zeros(1, dtype))
        return d

    def conv_algorithm(self, name=None):
        """The GEMM convolutions' column matrix: "implicit" (read from the image by the GEMM's
        loads, the default) or "im2col" (written out first); sets it when ``name`` is given."""
        if name is not None:
            if name not in ("implicit", "im2col"):
                raise ValueError(f"conv_algorithm({name!r}): expected 'implicit' or 'im2col'")
            conv_k.IMPLICIT = name == "implicit"
        return "implicit" if conv_k.IMPLICIT else "im2col"

    def constant(self, key, host_array):
        """A device copy of a small host array, made once per ``key`` (tap tables)."""
        d = self._constants.get(key)
        if d is None:
            d = self._constants[key] = cuda.to_device(np.ascontiguousarray(host_array))
        return d

    def empty(self, shape, dtype):
        return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))

    def _run(self, key, dtype, n, *args, grid=None, block=None):
        if grid is None:
            if n == 0:
                return
            block = THREADS
            grid = self.n_blocks(n)
        self.launch(key, dtype, grid, block, args)

    _empty = empty

    # ------------------------------------------------------------ memory, profiling
    def synchronize(self):
        cuda.synchronize()
        self._check_targets()

    def memory_stats(self) -> dict:
        p = mem_k.pool()
        stats = p.stats() if p is not None else {}
        stats["launches"] = self.launcher.launches
        stats["caching_allocator"] = p is not None
        return stats

    def reset_peak_memory(self):
        p = mem_k.pool()
        if p is not None:
            p.reset_peak()

    def empty_cache(self):
        mem_k.empty_cache()

    def profile_start(self):
        self.launcher.profile = Profile()
        p = mem_k.pool()
        self._profile_alloc0 = p.n_alloc if p is not None else 0
        self._profile_launch0 = self.launcher.launches

    def profile_stop(self):
        """(rows of (kernel, launches, GPU ms), launches, allocations) since profile_start."""
        prof, self.launcher.profile = self.launcher.profile, None
        if prof is None:
            return [], 0, 0
        rows = prof.table()
        p = mem_k.pool()
        allocs = (p.n_alloc - self._profile_alloc0) if p is not None else 0
        return rows, self.launcher.launches - self._profile_launch0, allocs

    def _print_profile_at_exit(self):
        from .. import cuda as public

        rows, launches, allocs = self.profile_stop()
        print(public.format_profile(rows, launches, allocs))

    @staticmethod
    def _flat(a):
        return a.reshape(a.size) if a.ndim != 1 else a

    @staticmethod
    def _is_float(dtype):
        return np.dtype(dtype).kind == "f"

    def _fam(self, dtype):
        """Which dtype's kernel set to take: the array's own for floats; for ints and bools the
        float32 set, whose dtype-agnostic kernels (layout, comparisons) Numba specialises."""
        return np.dtype(dtype) if self._is_float(dtype) else np.dtype(np.float32)

    # ------------------------------------------------------------ memory
    def manual_seed(self, seed: int) -> None:
        self.seed, self.counter = int(seed), 0

    def rng_state(self) -> dict:
        return {"seed": self.seed, "counter": self.counter}

    def set_rng_state(self, state: dict) -> None:
        self.seed, self.counter = int(state["seed"]), int(state["counter"])

    def _draw(self, n):
        start = self.counter
        self.counter += 2 * n  # normal() consumes two hashes per element
        return np.uint64(self.seed % (1 << 64)), np.uint64(start % (1 << 64))

    def asarray(self, data, dtype):
        return cuda.to_device(np.asarray(data, dtype=dtype, order="C"))  # 0-d stays 0-d

    @staticmethod
    def storage(a):
        data = getattr(a, "gpu_data", None)
        if data is not None:  # views of a buffer share its owning pointer
            return getattr(data, "owner", data)
        ary = getattr(a, "_ary", None)  # the simulator's arrays wrap NumPy ones
        if ary is not None:
            while isinstance(ary.base, np.ndarray):
                ary = ary.base
            return ary
        return a

    @staticmethod
    def is_array(value):
        return hasattr(value, "copy_to_host")

    def to_numpy(self, a):
        out = a.copy_to_host()
        self._check_targets()
        return out

    def _target_flag(self):
        if self._target_error is None:
            self._target_error = cuda.to_device(np.zeros(2, np.int64))
        self._targets_unchecked = True
        return self._target_error

    def _check_targets(self):
        """Raise the error a loss kernel flagged on the device since the last check."""
        if not self._targets_unchecked:
            return
        self._targets_unchecked = False
        flag = self._target_error.copy_to_host()
        if flag[0]:
            self._target_error.copy_to_device(np.zeros(2, np.int64))
            raise ValueError(f"nll_loss/cross_entropy: target holds {int(flag[1])}, outside "
                             f"[0, n_classes) (found on the device: the loss, its gradient and "
                             f"any step taken since are invalid)")

    def zeros(self, shape, dtype):
        return self.full(shape, 0, dtype)

    def full(self, shape, value, dtype):
        out = self._empty(shape, dtype)
        if out.size:
            self._run("ew.fill", self._fam(dtype), out.size, self._flat(out),
                      np.dtype(dtype).type(value))
        return out

    def rand(self, shape, dtype):
        out = self._empty(shape, dtype)
        self._run("ew.uniform", dtype, out.size, *self._draw(out.size), self._flat(out))
        return out

    def randn(self, shape, dtype):
        out = self._empty(shape, dtype)
        self._run("ew.normal", dtype, out.size, *self._draw(out.size), self._flat(out))
        return out

    def randint(self, low, high, shape, dtype):
        u = self.rand(shape, np.float64)
        scaled = self.unary("floor", self.binary("mul", u, self.full((), high - low,
                                                                     np.float64)))
        return self.astype(self.binary("add", scaled, self.full((), low, np.float64)), dtype)

    def arange(self, start, stop, step, dtype):
        return self.asarray(np.arange(start, stop, step).astype(dtype), dtype)

    def astype(self, a, dtype):
        out = self._empty(a.shape, dtype)
        self._run("ew.cast", self._fam(dtype), out.size, self._flat(a), self._flat(out))
        return out

    def ascontiguous(self, a):
        return a

    def copy_(self, dst, src):
        if dst.size:
            dst.copy_to_device(src)

    def accumulate(self, dst, src, exclusive):
        """dst + src as a new array (device arrays may be views of each other)."""
        return self.binary("add", dst, src)

    # ------------------------------------------------------------ layout
    def _gather(self, a, offset, shape, strides):
        out = self._empty(shape, a.dtype)
        self._run("ew.gather", self._fam(a.dtype), out.size, self._flat(a), np.int64(offset),
                  tuple(int(s) for s in strides) or (0,), _kshape(shape), self._flat(out))
        return out

    def _scatter(self, src, out, offset, shape, strides):
        self._run("ew.scatter", self._fam(out.dtype), src.size, self._flat(src),
                  np.int64(offset), tuple(int(s) for s in strides) or (0,), _kshape(shape),
                  self._flat(out))

    def reshape(self, a, shape):
        shape = tuple(shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape = tuple(a.size // known if s == -1 else s for s in shape)
        return a.reshape(shape) if shape != tuple(a.shape) else a

    view = reshape

    def transpose(self, a, axes):
        axes = tuple(axes)
        if axes == tuple(range(a.ndim)):
            return a
        cs = _cstrides(a.shape)
        return self._gather(a, 0, tuple(a.shape[i] for i in axes), tuple(cs[i] for i in axes))

    def broadcast_to(self, a, shape):
        shape = tuple(shape)
        if tuple(a.shape) == shape:
            return a
        return self._gather(a, 0, shape, _bstrides(a.shape, shape))

    def _advanced(self, shape, index):
        """Host-computed flat row offsets for a prefix of integer/bool index arrays followed
        by full slices; returns (offsets, out_shape, row_len)."""
        arrays = []
        rest = []
        for i in index:
            if isinstance(i, np.ndarray) or hasattr(i, "copy_to_host"):
                if rest:
                    raise IndexError("on the cuda backend, index arrays must come before any "
                                     "slice or integer in the index")
                h = i.copy_to_host() if hasattr(i, "copy_to_host") else i
                arrays.extend(np.nonzero(h) if h.dtype == bool else [h])
            else:
                rest.append(i)
        if any(not (isinstance(r, slice) and r == slice(None)) for r in rest):
            raise IndexError("on the cuda backend, index arrays may only be followed by ':'")
        k = len(arrays)
        if k > len(shape):
            raise IndexError(f"too many indices for a tensor of {len(shape)} dims")
        bcast = np.broadcast_arrays(*arrays)
        for d, arr in enumerate(bcast):
            if arr.size and (arr.min() < -shape[d] or arr.max() >= shape[d]):
                raise IndexError(f"index out of bounds for dimension {d} with size {shape[d]}")
        row_len = int(np.prod(shape[k:]))
        cs = _cstrides(shape)
        offsets = sum((np.asarray(arr) % shape[d]) * cs[d] for d, arr in enumerate(bcast))
        offsets = np.ascontiguousarray(np.asarray(offsets, dtype=np.int64).reshape(-1))
        out_shape = tuple(bcast[0].shape) + tuple(shape[k:])
        return cuda.to_device(offsets), out_shape, row_len

    def getitem(self, a, index):
        if any(isinstance(i, np.ndarray) or hasattr(i, "copy_to_host") for i in index):
            offsets, out_shape, row_len = self._advanced(a.shape, index)
            out = self._empty(out_shape, a.dtype)
            self._run("ew.index_gather", self._fam(a.dtype), out.size, self._flat(a), offsets,
                      np.int64(row_len), self._flat(out))
            return out
        offset, shape, strides = _basic_view(a.shape, index)
        return self._gather(a, offset, shape, strides)

    def setitem(self, a, index, value):
        if any(isinstance(i, np.ndarray) or hasattr(i, "copy_to_host") for i in index):
            raise IndexError("__setitem__ with index arrays is not supported on the cuda "
                             "backend; use where() or slices")
        offset, shape, strides = _basic_view(a.shape, index)
        try:
            np.broadcast_shapes(tuple(value.shape), shape)
        except ValueError:
            raise ValueError(f"__setitem__: value of shape {tuple(value.shape)} does not fit "
                             f"the selection of shape {shape}") from None
        self._scatter(self.broadcast_to(value, shape), a, offset, shape, strides)

    def getitem_backward(self, shape, index, g):
        out = self.zeros(shape, g.dtype)
        if any(isinstance(i, np.ndarray) or hasattr(i, "copy_to_host") for i in index):
            offsets, _, row_len = self._advanced(shape, index)
            self._run("ew.index_scatter_add", g.dtype, g.size, self._flat(g), offsets,
                      np.int64(row_len), self._flat(out))
            return out
        offset, vshape, strides = _basic_view(shape, index)
        self._scatter(g, out, offset, vshape, strides)
        return out

    def _place(self, out, axis, start, arr):
        """Write ``arr`` into out[..., start:start+len, ...] along ``axis``."""
        index = (slice(None),) * axis + (slice(start, start + arr.shape[axis]),)
        offset, shape, strides = _basic_view(out.shape, index)
        self._scatter(arr, out, offset, shape, strides)

    def concatenate(self, arrays, axis):
        shape = list(arrays[0].shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        out = self._empty(shape, arrays[0].dtype)
        start = 0
        for a in arrays:
            self._place(out, axis, start, a)
            start += a.shape[axis]
        return out

    def stack(self, arrays, axis):
        shape = list(arrays[0].shape)
        expanded = [a.reshape(tuple(shape[:axis]) + (1,) + tuple(shape[axis:])) for a in arrays]
        return self.concatenate(expanded, axis)

    def _pad_maps(self, shape, pads, mode):
        maps = [np.pad(np.arange(n), (lo, hi), mode=mode) for (lo, hi), n in zip(pads, shape)]
        starts = np.cumsum([0] + [len(m) for m in maps[:-1]])
        flat = np.ascontiguousarray(np.concatenate(maps).astype(np.int64))
        return cuda.to_device(flat), tuple(int(s) for s in starts)

    def pad(self, a, pads, mode, value):
        out_shape = tuple(n + lo + hi for (lo, hi), n in zip(pads, a.shape))
        if mode == "constant":
            out = self.full(out_shape, value, a.dtype)
            index = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, a.shape))
            offset, shape, strides = _basic_view(out_shape, index)
            self._scatter(a, out, offset, shape, strides)
            return out
        maps, starts = self._pad_maps(a.shape, pads, mode)
        out = self._empty(out_shape, a.dtype)
        self._run("ew.map_gather", a.dtype, out.size, self._flat(a), maps, starts,
                  out_shape, _cstrides(a.shape), self._flat(out))
        return out

    def pad_backward(self, g, shape, pads, mode):
        if mode == "constant":
            index = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))
            offset, vshape, strides = _basic_view(g.shape, index)
            return self._gather(g, offset, vshape, strides)
        maps, starts = self._pad_maps(shape, pads, mode)
        out = self.zeros(shape, g.dtype)
        self._run("ew.map_scatter_add", g.dtype, g.size, self._flat(g), maps, starts,
                  tuple(g.shape), _cstrides(shape), self._flat(out))
        return out

    # ------------------------------------------------------------ elementwise
    def unary(self, op, a):
        if not self._is_float(a.dtype):
            return self.astype(self.unary(op, self.astype(a, np.float64)), a.dtype)
        out = self._empty(a.shape, a.dtype)
        self._run(f"ew.unary.{op}", a.dtype, out.size, self._flat(a), self._flat(out))
        return out

    def _broadcast(self, key, a, b, out_dtype):
        shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
        out = self._empty(shape, out_dtype)
        fam = a.dtype if self._is_float(a.dtype) else self._fam(a.dtype)
        op = key.rsplit(".", 1)[1]
        if tuple(a.shape) == shape and tuple(b.shape) == shape:
            self._run(f"ew.binary_same.{op}", fam, out.size, self._flat(a), self._flat(b),
                      self._flat(out))
            return out
        if (a.size == 1 and tuple(b.shape) == shape) or (b.size == 1 and
                                                         tuple(a.shape) == shape):
            self._run(f"ew.binary_scalar.{op}", fam, out.size, self._flat(a), self._flat(b),
                      bool(a.size == 1 and tuple(b.shape) == shape), self._flat(out))
            return out
        ks = _kshape(shape)
        self._run(key, fam, out.size, self._flat(a), _bstrides(a.shape, ks), self._flat(b),
                  _bstrides(b.shape, ks), ks, self._flat(out))
        return out

    _COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")

    def binary(self, op, a, b):
        if op in self._COMPARE:
            return self._broadcast(f"ew.binary.{op}", a, b, np.bool_)
        if op == "div" and not self._is_float(a.dtype):
            a, b = self.astype(a, np.float32), self.astype(b, np.float32)
        return self._broadcast(f"ew.binary.{op}", a, b, np.result_type(a.dtype, b.dtype))

    def where(self, cond, a, b):
        shape = np.broadcast_shapes(tuple(cond.shape), tuple(a.shape), tuple(b.shape))
        ks = _kshape(shape)
        out = self._empty(shape, a.dtype)
        self._run("ew.where", self._fam(a.dtype), out.size, self._flat(cond),
                  _bstrides(cond.shape, ks), self._flat(a), _bstrides(a.shape, ks),
                  self._flat(b), _bstrides(b.shape, ks), ks, self._flat(out))
        return out

    def extremum_weights(self, a, b, op):
        key = "max_weight" if op == "maximum" else "min_weight"
        return self._broadcast(f"ew.binary.{key}", a, b, a.dtype)

    def activation_backward(self, op, gy, y):
        return self._broadcast(f"ew.binary.{op}_backward", gy, y, gy.dtype)

    # ------------------------------------------------------------ reductions
    def _rows(self, a, axes):
        """a permuted so that ``axes`` come last, as (rows, K), and the kept shape."""
        axes = tuple(sorted(axes))
        kept = tuple(d for d in range(a.ndim) if d not in axes)
        moved = self.transpose(a, kept + axes)
        rows = int(np.prod([a.shape[d] for d in kept]))
        k = int(np.prod([a.shape[d] for d in axes]))
        return moved.reshape((rows, k)), tuple(a.shape[d] for d in kept), k

    def _keep(self, out, a_shape, axes, keepdims):
        if keepdims:
            return out.reshape(tuple(1 if d in axes else s for d, s in enumerate(a_shape)))
        kept = tuple(s for d, s in enumerate(a_shape) if d not in axes)
        return out.reshape(kept)

    def reduce(self, op, a, axes, keepdims):
        axes = tuple(axes)
        if not self._is_float(a.dtype):
            res = self.reduce(op, self.astype(a, np.float64), axes, keepdims)
            return res if op == "mean" else self.astype(res, a.dtype if op != "sum" else
                                                         np.int64)
        if a.size == 0 or any(a.shape[d] == 0 for d in axes):
            kept_shape = tuple(1 if d in axes else s for d, s in enumerate(a.shape))
            fill = {"sum": 0, "mean": math.nan}[op]
            return self._keep(self.full(kept_shape, fill, a.dtype), a.shape, axes, True) \
                if keepdims else self.full(tuple(s for d, s in enumerate(a.shape)
                                                 if d not in axes), fill, a.dtype)
        kept_axes = [d for d in range(a.ndim) if d not in axes]
        if op in ("sum", "mean") and kept_axes and \
                kept_axes == list(range(kept_axes[0], kept_axes[-1] + 1)) and \
                int(np.prod([a.shape[d] for d in kept_axes])) < 65536:
            # the kept dims are one block between reduced ones (a bias gradient (N, C) or
            # (N, C, H, W) summed to C): sums over the (before, kept, after) view, no transpose
            lead = int(np.prod(a.shape[:kept_axes[0]]))
            mid = int(np.prod([a.shape[d] for d in kept_axes]))
            out = red_k.channel_sums(self, a.reshape((lead, mid, a.size // (lead * mid))))
            k = a.size // mid
            if op == "mean":
                out = self._scale(out, 1.0 / k)
            return self._keep(out, a.shape, axes, keepdims)
        x2, kept, k = self._rows(a, axes)
        out = red_k.row_reduce(self, "sum" if op == "mean" else op, x2)
        if op == "mean":
            out = self._scale(out, 1.0 / k)
        return self._keep(out, a.shape, axes, keepdims)

    def _scale(self, a, factor):
        out = self._empty(a.shape, a.dtype)
        self._run("ew.mul_scalar", a.dtype, out.size, self._flat(a), a.dtype.type(factor),
                  self._flat(out))
        return out

    def arg_reduce(self, op, a, axis, keepdims):
        src = a if self._is_float(a.dtype) else self.astype(a, np.float64)
        x2, kept, _ = self._rows(src, (axis,))
        out = self._empty((x2.shape[0],), np.int64)
        self._run(f"red.{op}", src.dtype, 0, x2, out, grid=x2.shape[0], block=red_k.BLOCK)
        return self._keep(out, a.shape, (axis,), keepdims)

    def sum_to_shape(self, a, shape):
        lead = a.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            i + lead for i, s in enumerate(shape) if s == 1 and a.shape[i + lead] != 1)
        out = self.reduce("sum", a, axes, True) if axes else a
        return out.reshape(tuple(shape))

    def _axis_last(self, a, axis):
        perm = tuple(d for d in range(a.ndim) if d != axis) + (axis,)
        return self.transpose(a, perm), perm

    def take_along_axis(self, a, index, axis):
        x2, _ = self._axis_last(a, axis)
        rows = a.size // a.shape[axis]
        out = self._empty((rows,), a.dtype)
        self._run("ew.take_rows", self._fam(a.dtype), rows, x2.reshape((rows, a.shape[axis])),
                  self._flat(index), out)
        return out.reshape(index.shape)

    def scatter_along_axis(self, shape, index, values, axis):
        k = shape[axis]
        rows = int(np.prod(shape)) // k
        out2 = self.zeros((rows, k), values.dtype)
        self._run("ew.put_rows", values.dtype, rows, self._flat(values), self._flat(index),
                  out2)
        perm = tuple(d for d in range(len(shape)) if d != axis) + (axis,)
        moved_shape = tuple(shape[d] for d in perm)
        return self.transpose(out2.reshape(moved_shape), tuple(np.argsort(perm)))

    # ------------------------------------------------------------ linear algebra
    def matmul(self, a, b):
        a1, b1 = a.ndim == 1, b.ndim == 1
        A = a.reshape((1, a.shape[0])) if a1 else a
        B = b.reshape((b.shape[0], 1)) if b1 else b
        sa_, sb_ = tuple(A.shape), tuple(B.shape)
        m, k, n = sa_[-2], sa_[-1], sb_[-1]
        batch = np.broadcast_shapes(sa_[:-2], sb_[:-2])
        nb = int(np.prod(batch)) if batch else 1

        def batched(X, rows, cols):
            if X.ndim == 2:
                return X, 0
            if tuple(X.shape)[:-2] != batch:
                X = self.broadcast_to(X, batch + (rows, cols))
            return X, rows * cols

        A, sa = batched(A, m, k)
        B, sb = batched(B, k, n)
        dt = np.result_type(A.dtype, B.dtype)
        out = self._empty((nb, m, n), dt)
        if out.size:
            if k == 0:
                self.copy_(out, self.zeros(out.shape, dt))
            else:
                mm_k.gemm(self, self._flat(A), (sa, k, 1), self._flat(B), (sb, n, 1), m, n, k,
                          nb, out, dt)
        shape = batch + (m, n)
        if a1 and b1:
            shape = ()
        elif a1:
            shape = batch + (n,)
        elif b1:
            shape = batch + (m,)
        return out.reshape(shape)

    def linear(self, x, w, b):
        m, k = x.shape
        n = w.shape[0]
        out = self._empty((1, m, n), x.dtype)
        if out.size:
            mm_k.gemm(self, self._flat(x), (0, k, 1), self._flat(w), (0, 1, k), m, n, k, 1,
                      out, x.dtype, bias=b)
        return out.reshape((m, n))

    def matmul_tn(self, a, b):
        k, m = a.shape
        n = b.shape[1]
        out = self._empty((1, m, n), a.dtype)
        if out.size:
            if k == 0:
                return self.zeros((m, n), a.dtype)
            mm_k.gemm(self, self._flat(a), (0, 1, m), self._flat(b), (0, n, 1), m, n, k, 1,
                      out, a.dtype)
        return out.reshape((m, n))

    def softmax(self, a, axis, log):
        x2, perm = self._axis_last(a, axis)
        rows = a.size // a.shape[axis]
        out = self._empty((rows, a.shape[axis]), a.dtype)
        self._run("red.softmax_rows", a.dtype, 0, x2.reshape((rows, a.shape[axis])), out,
                  bool(log), grid=rows, block=red_k.BLOCK)
        return self.transpose(out.reshape(tuple(a.shape[d] for d in perm)),
                              tuple(np.argsort(perm)))

    def softmax_backward(self, gy, y, axis, log):
        g2, perm = self._axis_last(gy, axis)
        y2, _ = self._axis_last(y, axis)
        rows, k = gy.size // gy.shape[axis], gy.shape[axis]
        out = self._empty((rows, k), gy.dtype)
        self._run("red.softmax_rows_backward", gy.dtype, 0, g2.reshape((rows, k)),
                  y2.reshape((rows, k)), out, bool(log), grid=rows, block=red_k.BLOCK)
        return self.transpose(out.reshape(tuple(gy.shape[d] for d in perm)),
                              tuple(np.argsort(perm)))

    # ------------------------------------------------------------ convolution
    def conv2d(self, x, w, b, stride, padding, dilation, groups):
        return conv_k.conv2d_forward(self, x, w, b, stride, padding, dilation, groups)

    def conv2d_backward(self, gy, x, w, stride, padding, dilation, groups, needs,
                        x_shape=None, w_shape=None):
        x_shape = tuple(x.shape) if x is not None else tuple(x_shape)
        w_shape = tuple(w.shape) if w is not None else tuple(w_shape)
        if gy.size == 0 or 0 in x_shape:
            need_x, need_w, need_b = needs
            dt = gy.dtype
            return (self.zeros(x_shape, dt) if need_x else None,
                    self.zeros(w_shape, dt) if need_w else None,
                    self.zeros((w_shape[0],), dt) if need_b else None)
        return conv_k.conv2d_backward(self, gy, x, w, stride, padding, dilation, groups, needs,
                                      x_shape, w_shape)

    # ------------------------------------------------------------ pooling
    @staticmethod
    def _planes(x):
        n, c, h, w = tuple(x.shape)
        return x.reshape((n * c, h, w))

    def max_pool2d(self, x, kernel, stride, padding, dilation, out_hw):
        n, c = tuple(x.shape)[:2]
        y = self._empty((n * c,) + tuple(out_hw), x.dtype)
        idx = self._empty((n * c,) + tuple(out_hw), np.int64)
        i64 = np.int64
        self._run("pool.max_pool", x.dtype, y.size, self._planes(x), *map(i64, kernel),
                  *map(i64, stride), *map(i64, padding), *map(i64, dilation), y, idx)
        return y.reshape((n, c) + tuple(out_hw)), idx.reshape((n, c) + tuple(out_hw))

    def max_pool2d_backward(self, gy, indices, x_shape, kernel, stride, padding, dilation):
        gx = self._empty(x_shape, gy.dtype)
        i64 = np.int64
        self._run("pool.max_pool_backward", gy.dtype, gx.size, self._planes(gy),
                  self._planes(indices), *map(i64, kernel), *map(i64, stride),
                  *map(i64, padding), *map(i64, dilation), self._planes(gx))
        return gx

    def avg_pool2d(self, x, kernel, stride, padding, out_hw, count_include_pad, divisor):
        n, c = tuple(x.shape)[:2]
        y = self._empty((n * c,) + tuple(out_hw), x.dtype)
        i64 = np.int64
        self._run("pool.avg_pool", x.dtype, y.size, self._planes(x), *map(i64, kernel),
                  *map(i64, stride), *map(i64, padding), bool(count_include_pad),
                  i64(divisor or 0), y)
        return y.reshape((n, c) + tuple(out_hw))

    def avg_pool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad,
                            divisor):
        gx = self._empty(x_shape, gy.dtype)
        i64 = np.int64
        self._run("pool.avg_pool_backward", gy.dtype, gx.size, self._planes(gy),
                  *map(i64, kernel), *map(i64, stride), *map(i64, padding),
                  bool(count_include_pad), i64(divisor or 0), self._planes(gx))
        return gx

    def adaptive_pool2d(self, x, out_hw, op):
        n, c = tuple(x.shape)[:2]
        y = self._empty((n * c,) + tuple(out_hw), x.dtype)
        idx = self._empty((n * c,) + tuple(out_hw), np.int64)
        self._run("pool.adaptive_pool", x.dtype, y.size, self._planes(x), op == "max", y, idx)
        shape = (n, c) + tuple(out_hw)
        return y.reshape(shape), (idx.reshape(shape) if op == "max" else None)

    def adaptive_avg_pool2d_backward(self, gy, x_shape):
        gx = self._empty(x_shape, gy.dtype)
        self._run("pool.adaptive_avg_backward", gy.dtype, gx.size, self._planes(gy),
                  self._planes(gx))
        return gx

    def adaptive_max_pool2d_backward(self, gy, indices, x_shape):
        gx = self._empty(x_shape, gy.dtype)
        self._run("pool.adaptive_max_backward", gy.dtype, gx.size, self._planes(gy),
                  self._planes(indices), self._planes(gx))
        return gx

    def upsample_nearest2d(self, x, out_hw, scales):
        n, c = tuple(x.shape)[:2]
        y = self._empty((n * c,) + tuple(out_hw), x.dtype)
        self._run("pool.upsample", x.dtype, y.size, self._planes(x), np.float32(scales[0]),
                  np.float32(scales[1]), y)
        return y.reshape((n, c) + tuple(out_hw))

    def upsample_nearest2d_backward(self, gy, x_shape, scales):
        gx = self._empty(x_shape, gy.dtype)
        self._run("pool.upsample_backward", gy.dtype, gx.size, self._planes(gy),
                  np.float32(scales[0]), np.float32(scales[1]), self._planes(gx))
        return gx

    def local_response_norm(self, x, size, alpha, beta, k):
        shape = tuple(x.shape)
        x3 = x.reshape((shape[0], shape[1], int(np.prod(shape[2:]))))
        y = self._empty(x3.shape, x.dtype)
        scale = self._empty(x3.shape, x.dtype)
        t = x.dtype.type
        self._run("norm.lrn", x.dtype, y.size, x3, np.int64(size), t(alpha), t(beta), t(k),
                  y, scale)
        return y.reshape(shape), scale.reshape(shape)

    def local_response_norm_backward(self, gy, x, y, scale, size, alpha, beta, k):
        shape = tuple(x.shape)
        s3 = (shape[0], shape[1], int(np.prod(shape[2:])))
        gx = self._empty(s3, x.dtype)
        t = x.dtype.type
        self._run("norm.lrn_backward", x.dtype, gx.size, gy.reshape(s3), x.reshape(s3),
                  y.reshape(s3), scale.reshape(s3), np.int64(size), t(alpha), t(beta), gx)
        return gx.reshape(shape)

    # ------------------------------------------------------------ normalisation, dropout
    def batch_norm_stats(self, x3, eps, running_mean=None, running_var=None, momentum=0.1):
        return norm_k.batch_stats(self, x3, eps, running_mean, running_var, momentum)

    def batch_norm_invstd(self, var, eps):
        out = self._empty(var.shape, var.dtype)
        self._run("norm.invstd_from_var", var.dtype, var.size, var, var.dtype.type(eps), out)
        return out

    def batch_norm(self, x3, mean, invstd, weight, bias, relu=False):
        y = self._empty(x3.shape, x3.dtype)
        self._run("norm.normalize", x3.dtype, y.size, x3, mean, invstd, weight, bias,
                  bool(relu), y)
        return y

    def batch_norm_backward(self, g3, x3, mean, invstd, weight, training, relu_out=None):
        if x3.size == 0:
            c = x3.shape[1]
            return self.empty(x3.shape, x3.dtype), self.zeros((c,), x3.dtype), \
                self.zeros((c,), x3.dtype)
        return norm_k.batch_norm_backward(self, g3, x3, mean, invstd, weight, training,
                                          relu_out)

    def dropout_mask(self, shape, p, dtype):
        out = self._empty(shape, dtype)
        t = np.dtype(dtype).type
        self._run("ew.dropout_mask", dtype, out.size, *self._draw(out.size), t(p),
                  t(1.0 / (1.0 - p)), self._flat(out))
        return out

    # ------------------------------------------------------------ losses
    def nll(self, logp, target, weight, ignore_index):
        rows = logp.shape[0]
        losses = self._empty((rows,), logp.dtype)
        row_w = self._empty((rows,), logp.dtype)
        w = weight if weight is not None else self.dummy(logp.dtype)
        self._run("loss.nll_rows", logp.dtype, rows, logp, target, w, weight is not None,
                  np.int64(ignore_index), losses, row_w, self._target_flag())
        return losses, row_w

    def nll_backward(self, g_rows, target, row_weights, n_classes):
        out = self.zeros((len(target), n_classes), g_rows.dtype)
        self._run("loss.nll_rows_backward", g_rows.dtype, len(target), g_rows, target,
                  row_weights, out)
        return out

    # ------------------------------------------------------------ optimizers
    def sgd_step(self, p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
        t = p.dtype.type
        use_buf = buf is not None
        self._run("optim.sgd_step", p.dtype, p.size, self._flat(p), self._flat(g),
                  self._flat(buf if use_buf else p), t(lr), t(momentum), t(dampening),
                  bool(nesterov), t(weight_decay), bool(first), use_buf)

    def adam_step(self, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled,
                  bias1, bias2_sqrt):
        t = p.dtype.type
        amsgrad = vmax is not None
        self._run("optim.adam_step", p.dtype, p.size, self._flat(p), self._flat(g), self._flat(m),
                  self._flat(v), self._flat(vmax if amsgrad else v), t(lr), t(beta1), t(beta2),
                  t(eps), t(weight_decay), bool(decoupled), amsgrad, t(bias1), t(bias2_sqrt))
