"""The CUDA backend: numba.cuda device arrays and the kernels of ``numbaconv.kernels.cuda``.

Every array this backend returns is a C-contiguous device array; views (transposes, slices,
broadcasts) are materialised by one strided gather kernel, so kernels only ever see contiguous
memory. Nothing goes back to the host between ops, except where an op's result size depends on
data (boolean masks, integer-array indexing with index arrays that live on the host).
Scalars reach kernels as NumPy scalars of the array's dtype, never as Python floats (which
Numba would compile as float64). With ``NUMBA_ENABLE_CUDASIM=1`` everything runs on Numba's
CUDA simulator (slow: for tests on tiny shapes).
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..kernels.cuda import conv as conv_k
from ..kernels.cuda import elementwise as ew_k
from ..kernels.cuda import matmul as mm_k
from ..kernels.cuda import pool as pool_k
from ..kernels.cuda import reduce as red_k

try:
    from numba import cuda
except ImportError:  # pragma: no cover - numba always ships a cuda module
    cuda = None

_MODULES = {"ew": ew_k.kernels, "red": red_k.kernels,
            "mm": mm_k.kernels, "conv": conv_k.kernels, "pool": pool_k.kernels}
# threads per block; the simulator runs every thread of a block in Python, so it gets fewer
SIMULATOR = cuda is not None and cuda.config.ENABLE_CUDASIM
THREADS = 64 if SIMULATOR else 256
# every kernel loops over its elements with a grid stride, so the grid can be capped: the
# simulator runs two blocks (each simulated thread costs far more than a loop iteration)
MAX_BLOCKS = 2 if SIMULATOR else 65535

# Launch recording, for the PTX check: (kernel key, dtype, argument descriptions)
RECORD: list | None = [] if os.environ.get("NUMBACONV_RECORD_KERNELS") else None


def kernel(key: str, dtype):
    """The kernel named ``module.path`` (e.g. ``ew.binary.add``) specialised to ``dtype``."""
    mod, *path = key.split(".")
    obj = _MODULES[mod](np.dtype(dtype))
    for part in path:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


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

    def __init__(self):
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

        seed = initial_seed()
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.counter = 0

    # ------------------------------------------------------------ launching
    def _run(self, key, dtype, n, *args, grid=None, block=None):
        if grid is None:
            if n == 0:
                return
            block = THREADS
            grid = min((n + THREADS - 1) // THREADS, MAX_BLOCKS)  # kernels grid-stride
        if RECORD is not None:
            RECORD.append((key, str(np.dtype(dtype)), [describe(a) for a in args]))
        kernel(key, dtype)[grid, block](*args)

    def _empty(self, shape, dtype):
        return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))

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

    def to_numpy(self, a):
        return a.copy_to_host()

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
        ks = _kshape(shape)
        fam = a.dtype if self._is_float(a.dtype) else self._fam(a.dtype)
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
        x2, kept, k = self._rows(a, axes)
        out = self._empty((x2.shape[0],), a.dtype)
        kop = "sum" if op == "mean" else op
        self._run(f"red.{kop}", a.dtype, 0, x2, out, grid=x2.shape[0], block=red_k.BLOCK)
        if op == "mean":
            out = self.binary("div", out, self.full((), k, a.dtype))
        return self._keep(out, a.shape, axes, keepdims)

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
        out = self._empty((nb, m, n), np.result_type(A.dtype, B.dtype))
        self._mm(A, (sa, k, 1), B, (sb, n, 1), m, n, k, out)
        shape = batch + (m, n)
        if a1 and b1:
            shape = ()
        elif a1:
            shape = batch + (n,)
        elif b1:
            shape = batch + (m,)
        return out.reshape(shape)

    def _mm(self, a, a_strides, b, b_strides, m, n, k, out):
        """out (batch, m, n) = a @ b with explicit (batch, row, col) element strides."""
        tile = mm_k.TILE
        cap = 2 if SIMULATOR else 65535
        grid = (min((n + tile - 1) // tile, cap), min((m + tile - 1) // tile, cap), out.shape[0])
        self._run("mm", out.dtype, 0, self._flat(a), tuple(a_strides), self._flat(b),
                  tuple(b_strides), np.int64(m), np.int64(n), np.int64(k), out,
                  grid=grid, block=(tile, tile))

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
        n_img, _, h, wd = x.shape
        n_out, cg, kh, kw = w.shape
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        og, kk, L = n_out // groups, cg * kh * kw, oh * ow
        y = self._empty((n_img, n_out, oh, ow), x.dtype)
        if y.size == 0:
            return y
        cols = self._empty((kk, n_img * L), x.dtype)
        tmp = self._empty((1, og, n_img * L), x.dtype)
        w2 = w.reshape((n_out, kk))
        bias = b if b is not None else self.zeros((1,), x.dtype)
        i64 = np.int64
        for g in range(groups):
            self._run("conv.im2col", x.dtype, cols.size, x, i64(g * cg), i64(cg), i64(kh),
                      i64(kw), i64(sh), i64(sw), i64(ph), i64(pw), i64(dh), i64(dw), i64(oh),
                      i64(ow), cols)
            wg = w2[g * og:(g + 1) * og]
            self._mm(wg, (0, kk, 1), cols, (0, n_img * L, 1), og, n_img * L, kk, tmp)
            self._run("conv.gemm_to_nchw", x.dtype, tmp.size, tmp.reshape((og, n_img * L)),
                      i64(g * og), bias, b is not None, y.reshape((n_img, n_out, L)))
        return y

    def conv2d_backward(self, gy, x, w, stride, padding, dilation, groups, needs,
                        x_shape=None):
        need_x, need_w, need_b = needs
        n_out, cg, kh, kw = w.shape
        x_shape = tuple(x.shape) if x is not None else tuple(x_shape)
        n_img = x_shape[0]
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        oh, ow = gy.shape[2], gy.shape[3]
        og, kk, L = n_out // groups, cg * kh * kw, oh * ow
        dt = gy.dtype
        gx = self._empty(x_shape, dt) if need_x else None
        gw = self._empty((n_out, kk), dt) if need_w else None
        gb = self._empty((n_out,), dt) if need_b else None
        if gy.size == 0:
            return (self.zeros(x_shape, dt) if need_x else None,
                    self.zeros(w.shape, dt) if need_w else None,
                    self.zeros((n_out,), dt) if need_b else None)
        i64 = np.int64
        geom = (i64(kh), i64(kw), i64(sh), i64(sw), i64(ph), i64(pw), i64(dh), i64(dw),
                i64(oh), i64(ow))
        gyt = self._empty((og, n_img * L), dt)
        cols = self._empty((kk, n_img * L), dt)
        w2 = w.reshape((n_out, kk))
        gy3 = gy.reshape((n_img, n_out, L))
        for g in range(groups):
            self._run("conv.nchw_to_gemm", dt, gyt.size, gy3, i64(g * og), gyt)
            if need_b:
                self._run("red.sum", dt, 0, gyt, gb[g * og:(g + 1) * og], grid=og,
                          block=red_k.BLOCK)
            if need_w:
                self._run("conv.im2col", dt, cols.size, x, i64(g * cg), i64(cg), *geom, cols)
                # dW_g = gyt @ cols^T: cols read transposed through its strides
                self._mm(gyt, (0, n_img * L, 1), cols, (0, 1, n_img * L), og, kk, n_img * L,
                         gw[g * og:(g + 1) * og].reshape((1, og, kk)))
            if need_x:
                # dcols = W_g^T @ gyt, then each input pixel gathers its column entries
                self._mm(w2[g * og:(g + 1) * og], (0, 1, kk), gyt, (0, n_img * L, 1), kk,
                         n_img * L, og, cols.reshape((1, kk, n_img * L)))
                self._run("conv.col2im", dt, n_img * cg * x_shape[2] * x_shape[3], cols,
                          i64(g * cg), i64(cg), *geom, gx)
        return gx, gw.reshape(w.shape) if need_w else None, gb

    def conv2d_grad_input(self, gy, w, x_shape, stride, padding, dilation, groups):
        return self.conv2d_backward(gy, None, w, stride, padding, dilation, groups,
                                    (True, False, False), x_shape=x_shape)[0]

    def conv2d_grad_weight(self, gy, x, w_shape, stride, padding, dilation, groups):
        w = self._empty(w_shape, gy.dtype)  # only its shape is read
        return self.conv2d_backward(gy, x, w, stride, padding, dilation, groups,
                                    (False, True, False))[1]

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
        x3 = x.reshape((shape[0], shape[1], x.size // (shape[0] * shape[1])))
        y = self._empty(x3.shape, x.dtype)
        scale = self._empty(x3.shape, x.dtype)
        t = x.dtype.type
        self._run("pool.lrn", x.dtype, y.size, x3, np.int64(size), t(alpha), t(beta), t(k),
                  y, scale)
        return y.reshape(shape), scale.reshape(shape)

    def local_response_norm_backward(self, gy, x, y, scale, size, alpha, beta, k):
        shape = tuple(x.shape)
        s3 = (shape[0], shape[1], x.size // (shape[0] * shape[1]))
        gx = self._empty(s3, x.dtype)
        t = x.dtype.type
        self._run("pool.lrn_backward", x.dtype, gx.size, gy.reshape(s3), x.reshape(s3),
                  y.reshape(s3), scale.reshape(s3), np.int64(size), t(alpha), t(beta), gx)
        return gx.reshape(shape)

    # ------------------------------------------------------------ normalisation, dropout
    def batch_stats(self, x3):
        mean = self._empty((x3.shape[1],), x3.dtype)
        var = self._empty((x3.shape[1],), x3.dtype)
        self._run("red.channel_stats", x3.dtype, 0, x3, mean, var, grid=x3.shape[1],
                  block=red_k.BLOCK)
        return mean, var

    def batch_norm(self, x3, mean, invstd, weight, bias, relu=False):
        y = self._empty(x3.shape, x3.dtype)
        self._run("pool.bn_normalize", x3.dtype, y.size, x3, mean, invstd, weight, bias,
                  bool(relu), y)
        return y

    def batch_norm_backward(self, g3, x3, mean, invstd, weight, training, relu_out=None):
        if relu_out is not None:
            g3 = self.activation_backward("relu", self.ascontiguous(g3), relu_out)
        c = x3.shape[1]
        sg = self._empty((c,), x3.dtype)
        sgx = self._empty((c,), x3.dtype)
        self._run("red.channel_grad_sums", x3.dtype, 0, g3, x3, mean, sg, sgx, grid=c,
                  block=red_k.BLOCK)
        gx = self._empty(x3.shape, x3.dtype)
        self._run("pool.bn_backward", x3.dtype, gx.size, g3, x3, mean, invstd, weight, sg, sgx,
                  bool(training), gx)
        return gx, self.binary("mul", sgx, invstd), sg

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
        w = weight if weight is not None else self.zeros((1,), logp.dtype)
        self._run("red.nll_rows", logp.dtype, rows, logp, target, w, weight is not None,
                  np.int64(ignore_index), losses, row_w)
        return losses, row_w

    def nll_backward(self, g_rows, target, row_weights, n_classes):
        out = self.zeros((len(target), n_classes), g_rows.dtype)
        self._run("red.nll_rows_backward", g_rows.dtype, len(target), g_rows, target,
                  row_weights, out)
        return out

    # ------------------------------------------------------------ optimizers
    def sgd_step(self, p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
        t = p.dtype.type
        use_buf = buf is not None
        self._run("ew.sgd_step", p.dtype, p.size, self._flat(p), self._flat(g),
                  self._flat(buf if use_buf else p), t(lr), t(momentum), t(dampening),
                  bool(nesterov), t(weight_decay), bool(first), use_buf)

    def adam_step(self, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled,
                  bias1, bias2_sqrt):
        t = p.dtype.type
        amsgrad = vmax is not None
        self._run("ew.adam_step", p.dtype, p.size, self._flat(p), self._flat(g), self._flat(m),
                  self._flat(v), self._flat(vmax if amsgrad else v), t(lr), t(beta1), t(beta2),
                  t(eps), t(weight_decay), bool(decoupled), amsgrad, t(bias1), t(bias2_sqrt))
