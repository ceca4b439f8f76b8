"""Batched matrix products C[z] = A[z] @ B[z]: a register-blocked shared-memory GEMM, with
K split across blocks where the output alone would leave the GPU idle.

Layout of the work (GPU sizes; the simulator, which runs each thread in Python, gets 8x8
tiles of 4x4 threads):

- a block of TX x TY = 16 x 16 threads computes a BM x BN = 64 x 64 tile of C; each thread owns
  RM x RN = 4 x 4 outputs, rows ``ty + 16*i`` and columns ``tx + 16*j``, so that a warp's
  shared-memory reads are broadcasts and its stores to C are contiguous runs;
- K advances BK = 16 at a time through shared memory (A's tile stored transposed, As[k, row],
  with one column of padding so that the transposing stores do not collide on banks). The next
  tile's global loads are issued into registers before the current tile is multiplied, so their
  latency hides behind the arithmetic;
- each operand is read through (batch, row, column) strides, so a transposed or broadcast
  operand needs no copy. Which index runs along a warp's loads (``kfast``: K; otherwise the row
  or column) is chosen per call from the strides, so the loads are coalesced either way;
- split-K: blockIdx.z = batch * splits + split, each split walks its own range of K and writes
  its partial tile to a workspace; :func:`kernels` ``.splitk_sum`` adds the partials in split
  order. No atomics: the same bits every run.

Stores: ``plain`` writes C[z, row, col]; ``nchw`` writes a convolution's output straight into
NCHW with its bias, C being y viewed flat and column = n * L + p (geometry ``gc = (L, C_out,
rows per group, has bias)``), so the GEMM's result needs no reshaping pass.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

if cuda.config.ENABLE_CUDASIM:  # small tiles: the simulator's cost is every padded FMA
    TX = TY = 4
    BK = 4
    RM = RN = 2
else:
    TX = TY = 16
    BK = 16
    RM = RN = 4
BM, BN = TY * RM, TX * RN
NT = TX * TY
BM_PAD, BN_PAD = BM + 1, BN + 1  # shared tiles' row length (constants: a kernel's shared
# array shape must be literal)
LA = BM * BK // NT   # A elements each thread loads per K tile
LB = BK * BN // NT


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)

    def make(a_kfast, b_kfast, nchw):
        @cuda.jit(device=True, inline=True)
        def a_pos(e):
            """(row, k) inside the tile of A that load slot e covers."""
            if a_kfast:
                return e // BK, e % BK
            return e % BM, e // BM

        @cuda.jit(device=True, inline=True)
        def b_pos(e):
            """(k, col) inside the tile of B that load slot e covers."""
            if b_kfast:
                return e % BK, e // BK
            return e // BN, e % BN

        @cuda.jit
        def gemm(a, ga, b, gb, c, gc, bias, m, n, k, splits, kchunk, nz):
            As = cuda.shared.array((BK, BM_PAD), T)
            Bs = cuda.shared.array((BK, BN_PAD), T)
            ra = cuda.local.array(LA, T)
            rb = cuda.local.array(LB, T)
            acc = cuda.local.array((RM, RN), T)
            av = cuda.local.array(RM, T)
            bv = cuda.local.array(RN, T)
            tx = cuda.threadIdx.x
            ty = cuda.threadIdx.y
            tid = ty * TX + tx
            n_z = cuda.gridDim.z
            tiles_m = (m + BM - 1) // BM
            tiles_n = (n + BN - 1) // BN
            for z in range(cuda.blockIdx.z, nz, n_z):
                bz = z // splits
                s = z - bz * splits
                k_lo = s * kchunk
                k_hi = min(k, k_lo + kchunk)
                a0 = bz * ga[0]
                b0 = bz * gb[0]
                for by in range(cuda.blockIdx.y, tiles_m, cuda.gridDim.y):
                    for bx in range(cuda.blockIdx.x, tiles_n, cuda.gridDim.x):
                        row0 = by * BM
                        col0 = bx * BN
                        for i in range(RM):
                            for j in range(RN):
                                acc[i, j] = zero
                        # first tile into registers
                        for q in range(LA):
                            r, kk = a_pos(tid + q * NT)
                            gr = row0 + r
                            gk = k_lo + kk
                            ra[q] = a[a0 + gr * ga[1] + gk * ga[2]] if (
                                gr < m and gk < k_hi) else zero
                        for q in range(LB):
                            kk, cc = b_pos(tid + q * NT)
                            gk = k_lo + kk
                            gcol = col0 + cc
                            rb[q] = b[b0 + gk * gb[1] + gcol * gb[2]] if (
                                gk < k_hi and gcol < n) else zero
                        for t0 in range(k_lo, k_hi, BK):
                            for q in range(LA):
                                r, kk = a_pos(tid + q * NT)
                                As[kk, r] = ra[q]
                            for q in range(LB):
                                kk, cc = b_pos(tid + q * NT)
                                Bs[kk, cc] = rb[q]
                            cuda.syncthreads()
                            t1 = t0 + BK
                            if t1 < k_hi:  # the next tile's loads fly during the products
                                for q in range(LA):
                                    r, kk = a_pos(tid + q * NT)
                                    gr = row0 + r
                                    gk = t1 + kk
                                    ra[q] = a[a0 + gr * ga[1] + gk * ga[2]] if (
                                        gr < m and gk < k_hi) else zero
                                for q in range(LB):
                                    kk, cc = b_pos(tid + q * NT)
                                    gk = t1 + kk
                                    gcol = col0 + cc
                                    rb[q] = b[b0 + gk * gb[1] + gcol * gb[2]] if (
                                        gk < k_hi and gcol < n) else zero
                            for kk in range(BK):
                                for i in range(RM):
                                    av[i] = As[kk, ty + i * TY]
                                for j in range(RN):
                                    bv[j] = Bs[kk, tx + j * TX]
                                for i in range(RM):
                                    for j in range(RN):
                                        acc[i, j] += av[i] * bv[j]
                            cuda.syncthreads()
                        for i in range(RM):
                            row = row0 + ty + i * TY
                            if row >= m:
                                continue
                            for j in range(RN):
                                col = col0 + tx + j * TX
                                if col >= n:
                                    continue
                                if nchw:
                                    # gc = (L, C_out, rows per group, has bias)
                                    L = gc[0]
                                    img = col // L
                                    p = col - img * L
                                    ch = bz * gc[2] + row
                                    v = acc[i, j]
                                    if gc[3]:
                                        v += bias[ch]
                                    c[(img * gc[1] + ch) * L + p] = v
                                elif gc[0]:  # gc = (has bias,): a linear layer's
                                    c[z, row, col] = acc[i, j] + bias[col]
                                else:
                                    c[z, row, col] = acc[i, j]
        return gemm

    ns = SimpleNamespace()
    ns.gemm = {variant(ak, bk, "plain"): make(ak, bk, False)
               for ak in (False, True) for bk in (False, True)}
    # a convolution's forward: W along K, the column matrix along its columns
    ns.gemm[variant(True, False, "nchw")] = make(True, False, True)

    @cuda.jit
    def splitk_sum(ws, splits, bias, has_bias, out):
        """out[b, i, j] = sum over s of ws[b * splits + s, i, j], in split order
        (+ bias[j])."""
        per = out.shape[1] * out.shape[2]
        for q in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            bz = q // per
            r = q - bz * per
            i = r // out.shape[2]
            j = r - i * out.shape[2]
            v = zero
            for s in range(splits):
                v += ws[bz * splits + s, i, j]
            if has_bias:
                v += bias[j]
            out[bz, i, j] = v

    TB = 32 if cuda.config.ENABLE_CUDASIM else 128

    @cuda.jit
    def splitk_sum_tree(ws, splits, bias, has_bias, out):
        """As splitk_sum, one block per output element for many splits: each thread adds
        a fixed stride of the splits, then a tree (the same order every run)."""
        buf = cuda.shared.array(TB, T)
        t = cuda.threadIdx.x
        per = out.shape[1] * out.shape[2]
        for q in range(cuda.blockIdx.x, out.size, cuda.gridDim.x):
            bz = q // per
            r = q - bz * per
            i = r // out.shape[2]
            j = r - i * out.shape[2]
            v = zero
            for s in range(t, splits, TB):
                v += ws[bz * splits + s, i, j]
            buf[t] = v
            cuda.syncthreads()
            h = TB // 2
            while h > 0:
                if t < h:
                    buf[t] += buf[t + h]
                cuda.syncthreads()
                h //= 2
            if t == 0:
                v = buf[0]
                if has_bias:
                    v += bias[j]
                out[bz, i, j] = v
            cuda.syncthreads()

    ns.splitk_sum, ns.splitk_sum_tree = splitk_sum, splitk_sum_tree
    ns.tree_block = TB
    return ns


def variant(a_kfast: bool, b_kfast: bool, store: str) -> str:
    """The name of a GEMM variant: which index runs along A's and B's loads, and the store
    (``kn_plain``: A loaded along K, B along its columns, C written as is)."""
    return f"{'k' if a_kfast else 'm'}{'k' if b_kfast else 'n'}_{store}"


MAX_WORKSPACE = 1 << 26  # elements of split-K partials


def plan(m: int, n: int, k: int, batch: int, blocks_wanted: int, max_splits: int = 4096):
    """(splits, kchunk) for a product: split K only where the output's tiles alone give
    fewer blocks than ``blocks_wanted`` and each split keeps at least four K tiles; kchunk is
    a multiple of BK. A weight gradient's tile is often mostly empty (6 or 16 rows of 64), so
    each block has little in flight: many blocks are what keeps the loads coming."""
    tiles = -(-m // BM) * -(-n // BN) * batch
    k_tiles = -(-k // BK)
    splits = 1
    if tiles < blocks_wanted and k_tiles >= 8:
        splits = min(-(-blocks_wanted // tiles), k_tiles // 4, max_splits,
                     max(1, MAX_WORKSPACE // max(m * n * batch, 1)))
        splits = max(splits, 1)
    kchunk = -(-k_tiles // splits) * BK
    splits = -(-k // kchunk) if k else 1
    return splits, kchunk


def gemm(ctx, a, a_strides, b, b_strides, m, n, k, batch, out, dtype, *, nchw=None,
         splits=None, bias=None):
    """out = a @ b over ``batch`` (grid z), operands read through (batch, row, col) strides.
    ``out`` is (batch, m, n) contiguous, or with ``nchw=(y_flat, L, C_out, bias)`` the
    convolution output written in place (no split-K then). ``splits`` overrides :func:`plan`."""
    i64 = np.int64
    # the index along which each operand is contiguous runs along a warp's loads
    a_kfast = a_strides[2] == 1 and (a_strides[1] != 1 or m == 1)
    b_kfast = b_strides[1] == 1 and (b_strides[2] != 1 or n == 1)
    if nchw is not None:
        assert a_kfast and not b_kfast, "the NCHW store serves W @ cols only"
        splits, kchunk = 1, -(-max(k, 1) // BK) * BK
    elif splits is None:
        splits, kchunk = plan(m, n, k, batch, ctx.blocks_wanted)
    else:
        per_split = -(-k // splits)
        kchunk = -(-per_split // BK) * BK
        splits = -(-k // kchunk)
    nz = batch * splits
    grid = (ctx.cap(-(-n // BN)), ctx.cap(-(-m // BM)), ctx.cap(nz))
    block = (TX, TY)
    strides = (tuple(i64(s) for s in a_strides), tuple(i64(s) for s in b_strides))
    if nchw is not None:
        y_flat, L, c_out, bias = nchw
        has_bias = bias is not None
        if bias is None:
            bias = ctx.dummy(dtype)
        ctx.launch(f"mm.gemm.{variant(a_kfast, b_kfast, 'nchw')}", dtype, grid, block,
                   (a, strides[0], b, strides[1], y_flat,
                    (i64(L), i64(c_out), i64(m), i64(has_bias)), bias, i64(m), i64(n), i64(k),
                    i64(1), i64(kchunk), i64(nz)))
        return
    # the bias (one per column) is added by the GEMM's store, or by the split-K sum
    fused = bias is not None and splits == 1
    gc = (i64(fused), i64(0), i64(0), i64(0))
    target = out if splits == 1 else ctx.empty((nz, m, n), dtype)
    ctx.launch(f"mm.gemm.{variant(a_kfast, b_kfast, 'plain')}", dtype, grid, block,
               (a, strides[0], b, strides[1], target, gc,
                bias if fused else ctx.dummy(dtype), i64(m), i64(n), i64(k), i64(splits),
                i64(kchunk), i64(nz)))
    if splits > 1:
        has_bias = bias is not None
        args = (target, i64(splits), bias if has_bias else ctx.dummy(dtype), has_bias, out)
        if splits >= 64:
            ctx.launch("mm.splitk_sum_tree", dtype, ctx.cap(out.size),
                       kernels(np.dtype(dtype)).tree_block, args)
        else:
            ctx.launch("mm.splitk_sum", dtype, ctx.n_blocks(out.size), ctx.threads, args)
