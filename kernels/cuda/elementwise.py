"""Elementwise, layout and random kernels (one thread per output element).

Layout is handled by two strided kernels: ``gather`` reads a strided view of a flat source into
a contiguous output (transpose, broadcast, slicing, padding's interior) and ``scatter`` writes a
contiguous source into a strided view of a flat output (concatenation, slicing's gradient).
Random numbers come from a counter-based hash (SplitMix64 of seed and element index), so a
launch needs no generator state on the device and every stream is reproducible.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

U64 = numba.uint64


@cuda.jit(device=True, inline=True)
def _offset(i, shape, strides, base):
    """Flat source offset of element i of a C-ordered ``shape`` viewed with ``strides``."""
    off = base
    r = i
    for d in range(len(shape) - 1, -1, -1):
        n = shape[d]
        off += (r % n) * strides[d]
        r //= n
    return off


@cuda.jit(device=True, inline=True)
def _mix(z):
    """SplitMix64's finaliser: a bijective hash of a 64-bit counter."""
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


# Layout kernels never need a typed constant: one definition serves every dtype (Numba
# specialises them per argument type at launch).
@cuda.jit
def fill(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


@cuda.jit
def gather(src, base, strides, shape, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = src[_offset(i, shape, strides, base)]


@cuda.jit
def scatter(src, base, strides, shape, out):
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        out[_offset(i, shape, strides, base)] = src[i]


@cuda.jit
def cast(src, out):
    """out[i] = src[i] converted to out's dtype."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = src[i]


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    mantissa = 24 if np.dtype(dtype) == np.float32 else 53
    # the random mantissa bits convert through a signed int that holds them exactly: int64
    # to float32 would go through float64 in the generated code
    Bits = numba.int32 if mantissa == 24 else numba.int64
    scale = 1.0 / (1 << mantissa)
    zero, one, half = T(0), T(1), T(0.5)
    ns = SimpleNamespace()

    @cuda.jit
    def uniform(seed, counter, out):
        """out[i] in [0, 1): the top mantissa bits of hash(seed, counter + i)."""
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            h = _mix(U64(seed) * U64(0x9E3779B97F4A7C15) + U64(counter) + U64(i))
            out[i] = T(Bits(h >> U64(64 - mantissa))) * T(scale)

    # fastmath: the hardware's cosf/logf. Their arguments here are bounded (angle in [0, 2pi),
    # u1 in (0, 1]), and libdevice's accurate cosf carries a float64 range-reduction path.
    @cuda.jit(fastmath=True)
    def normal(seed, counter, out):
        """Box-Muller on two hashed uniforms per element (u1 in (0, 1], never 0)."""
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            base = U64(seed) * U64(0x9E3779B97F4A7C15) + U64(counter) + U64(2) * U64(i)
            u1 = (T(Bits(_mix(base) >> U64(64 - mantissa))) + one) * T(scale)
            u2 = T(Bits(_mix(base + U64(1)) >> U64(64 - mantissa))) * T(scale)
            out[i] = math.sqrt(T(-2) * math.log(u1)) * math.cos(T(2 * math.pi) * u2)

    @cuda.jit
    def dropout_mask(seed, counter, p, keep_scale, out):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            h = _mix(U64(seed) * U64(0x9E3779B97F4A7C15) + U64(counter) + U64(i))
            u = T(Bits(h >> U64(64 - mantissa))) * T(scale)
            out[i] = keep_scale if u >= p else zero

    def unary(f):
        @cuda.jit
        def k(x, out):
            for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
                out[i] = f(x[i])
        return k

    @cuda.jit(device=True, inline=True)
    def _relu(v):
        return zero if v <= zero else v

    @cuda.jit(device=True, inline=True)
    def _sigmoid(v):
        if v >= zero:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)

    @cuda.jit(device=True, inline=True)
    def _sign(v):
        return one if v > zero else (-one if v < zero else (v if v != v else zero))

    dev = cuda.jit(device=True, inline=True)
    ns.unary = {
        "neg": unary(dev(lambda v: -v)), "exp": unary(dev(lambda v: math.exp(v))),
        "log": unary(dev(lambda v: math.log(v) if v > zero else (
            -T(math.inf) if v == zero else T(math.nan)))),
        "sqrt": unary(dev(lambda v: math.sqrt(v) if v >= zero else T(math.nan))),
        "abs": unary(dev(lambda v: abs(v))), "sign": unary(_sign),
        "tanh": unary(dev(lambda v: math.tanh(v))), "relu": unary(_relu),
        "sigmoid": unary(_sigmoid), "floor": unary(dev(lambda v: math.floor(v))),
    }

    def binary(f):
        @cuda.jit
        def k(a, sa, b, sb, shape, out):
            for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
                out[i] = f(a[_offset(i, shape, sa, 0)], b[_offset(i, shape, sb, 0)])
        return k

    # Without broadcasting (or against one element) no index needs taking apart: the general
    # kernel's per-dimension divisions cost more than the memory traffic on large tensors.
    def binary_same(f):
        @cuda.jit
        def k(a, b, out):
            for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
                out[i] = f(a[i], b[i])
        return k

    def binary_scalar(f):
        @cuda.jit
        def k(a, b, scalar_left, out):
            """one operand has a single element; ``scalar_left``: it is a."""
            for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
                if scalar_left:
                    out[i] = f(a[0], b[i])
                else:
                    out[i] = f(a[i], b[0])
        return k

    @cuda.jit(device=True, inline=True)
    def _maximum(x, y):
        return x if (x > y or x != x) else y

    @cuda.jit(device=True, inline=True)
    def _minimum(x, y):
        return x if (x < y or x != x) else y

    @cuda.jit(device=True, inline=True)
    def _pow(x, y):
        return math.pow(x, y)

    binary_fns = {
        "add": dev(lambda x, y: x + y), "sub": dev(lambda x, y: x - y),
        "mul": dev(lambda x, y: x * y), "div": dev(lambda x, y: x / y),
        "pow": _pow, "maximum": _maximum, "minimum": _minimum,
        "eq": dev(lambda x, y: x == y), "ne": dev(lambda x, y: x != y),
        "lt": dev(lambda x, y: x < y), "le": dev(lambda x, y: x <= y),
        "gt": dev(lambda x, y: x > y), "ge": dev(lambda x, y: x >= y),
        # the share of maximum's / minimum's gradient that goes to x: 1, 0, or 1/2 at ties
        "max_weight": dev(lambda x, y: one if x > y else (half if x == y else zero)),
        "min_weight": dev(lambda x, y: one if x < y else (half if x == y else zero)),
        # activation gradients from the output y: g * f'(y)
        "relu_backward": dev(lambda g, y: g if y > zero else zero),
        "sigmoid_backward": dev(lambda g, y: g * y * (one - y)),
        "tanh_backward": dev(lambda g, y: g * (one - y * y)),
    }
    ns.binary = {k: binary(f) for k, f in binary_fns.items()}
    ns.binary_same = {k: binary_same(f) for k, f in binary_fns.items()}
    ns.binary_scalar = {k: binary_scalar(f) for k, f in binary_fns.items()}

    @cuda.jit
    def mul_scalar(x, factor, out):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] = x[i] * factor

    @cuda.jit
    def where(c, sc, a, sa, b, sb, shape, out):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            if c[_offset(i, shape, sc, 0)]:
                out[i] = a[_offset(i, shape, sa, 0)]
            else:
                out[i] = b[_offset(i, shape, sb, 0)]

    @cuda.jit
    def index_gather(src, row_offsets, row_len, out):
        """out[r, j] = src_flat[row_offsets[r] + j] (advanced indexing, one thread each)."""
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            r = i // row_len
            out[i] = src[row_offsets[r] + i - r * row_len]

    @cuda.jit
    def index_scatter_add(g, row_offsets, row_len, out):
        """The adjoint: repeated rows accumulate, so atomics are needed (a gather cannot know
        which rows repeat)."""
        for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
            r = i // row_len
            cuda.atomic.add(out, row_offsets[r] + i - r * row_len, g[i])

    @cuda.jit
    def take_rows(x, idx, out):
        """out[r] = x[r, idx[r]] for x (rows, K)."""
        for r in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[r] = x[r, idx[r]]

    @cuda.jit
    def put_rows(v, idx, out):
        """out[r, idx[r]] = v[r] (out zeroed by the caller)."""
        for r in range(cuda.grid(1), v.size, cuda.gridsize(1)):
            out[r, idx[r]] = v[r]

    @cuda.jit
    def map_gather(src, maps, map_starts, shape, src_strides, out):
        """Padding with a per-dim source index map: out[i] = src[sum_d maps[d][i_d]*stride_d]."""
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            r = i
            off = 0
            for d in range(len(shape) - 1, -1, -1):
                n = shape[d]
                off += maps[map_starts[d] + r % n] * src_strides[d]
                r //= n
            out[i] = src[off]

    @cuda.jit
    def map_scatter_add(g, maps, map_starts, shape, src_strides, out):
        for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
            r = i
            off = 0
            for d in range(len(shape) - 1, -1, -1):
                n = shape[d]
                off += maps[map_starts[d] + r % n] * src_strides[d]
                r //= n
            cuda.atomic.add(out, off, g[i])

    for k in (fill, gather, scatter, cast, uniform, normal, dropout_mask, mul_scalar, where,
              index_gather,
              index_scatter_add, take_rows, put_rows, map_gather, map_scatter_add):
        setattr(ns, getattr(k, "__name__", None) or k.py_func.__name__, k)
    return ns
