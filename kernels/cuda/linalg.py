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
# how B is read: a strided matrix, or a convolution's column matrix computed from the image
# as it is loaded (implicit GEMM), or that matrix's transpose
PLAIN, IM2COL, IM2COL_T = 0, 1, 2
assert NT % BN == 0 and NT % BK == 0  # a thread's B column (n-fast) or K index (k-fast) is
# the same in each of its load slots, so an implicit B position is computed once per tile

BM_PAD, BN_PAD = BM + 1, BN + 1  # shared tiles' row length (constants: a kernel's shared
# array shape must be literal)
LA = BM * BK // NT   # A elements each thread loads per K tile
LB = BK * BN // NT


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)

    def make(a_kfast, b_kfast, nchw, b_mode=PLAIN):
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

        @cuda.jit(device=True, inline=True)
        def load_a(a, ga, a0, gr, gk, m, k_hi):
            if gr < m and gk < k_hi:
                return a[a0 + gr * ga[1] + gk * ga[2]]
            return zero

        @cuda.jit(device=True, inline=True)
        def position(gb, col):
            """(image offset, top row, left column) of output position ``col`` = n*L + p."""
            L = gb[10]
            img = col // L
            p = col - img * L
            oh = p // gb[5]
            ow = p - oh * gb[5]
            return img * gb[1], oh * gb[6] - gb[8], ow * gb[7] - gb[9]

        @cuda.jit(device=True, inline=True)
        def load_b(b, gb, tab, b0, gk, gcol, k_hi, n, base, top, left, tap_off, tap_i, tap_j):
            """B[gk, gcol]. PLAIN: strided. IM2COL: the column matrix of an NCHW input read in
            place: gk is a tap (table ``tab`` = offsets | rows | columns), gcol an output
            position whose (base, top, left) the caller computed once. IM2COL_T: its
            transpose: gk the output position (base, top, left), gcol the tap (tap_*)."""
            if b_mode == PLAIN:
                if gk < k_hi and gcol < n:
                    return b[b0 + gk * gb[1] + gcol * gb[2]]
                return zero
            if gk >= k_hi or gcol >= n:
                return zero
            if b_mode == IM2COL:
                kk = gb[11]
                ih = top + tab[kk + gk]
                iw = left + tab[2 * kk + gk]
                off = tab[gk]
            else:
                ih = top + tap_i
                iw = left + tap_j
                off = tap_off
            if 0 <= ih < gb[2] and 0 <= iw < gb[3]:
                return b[b0 + base + off + top * gb[3] + left]
            return zero

        @cuda.jit
        def gemm(a, ga, b, gb, tab, c, gc, bias, m, n, k, splits, kchunk, nz):
            As = cuda.shared.array((BK, BM_PAD), T)
            Bs = cuda.shared.array((BK, BN_PAD), T)
            ra = cuda.local.array(LA, T)
            rb = cuda.local.array(LB, T)
            acc = cuda.local.array((RM, RN), T)
            av = cuda.local.array(RM, T)
            bv = cuda.local.array(RN, T)
            t_off = cuda.local.array(LB, numba.int64)
            t_i = cuda.local.array(LB, numba.int64)
            t_j = cuda.local.array(LB, numba.int64)
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
                        base = top = left = 0
                        if b_mode == IM2COL:
                            # n-fast loads: this thread's B column is the same in every slot
                            # and every K tile: its position is taken apart once
                            kk0, cc0 = b_pos(tid)
                            if col0 + cc0 < n:
                                base, top, left = position(gb, col0 + cc0)
                        if b_mode == IM2COL_T:
                            # k-fast loads: each slot's column (a tap) is fixed over K
                            for q in range(LB):
                                kk, cc = b_pos(tid + q * NT)
                                r = min(col0 + cc, n - 1)
                                t_off[q] = tab[r]
                                t_i[q] = tab[gb[11] + r]
                                t_j[q] = tab[2 * gb[11] + r]
                        # first tile into registers
                        for q in range(LA):
                            r, kk = a_pos(tid + q * NT)
                            ra[q] = load_a(a, ga, a0, row0 + r, k_lo + kk, m, k_hi)
                        if b_mode == IM2COL_T:
                            kk0, cc0 = b_pos(tid)  # every slot's K index: the same
                            if k_lo + kk0 < k_hi:
                                base, top, left = position(gb, k_lo + kk0)
                        for q in range(LB):
                            kk, cc = b_pos(tid + q * NT)
                            rb[q] = load_b(b, gb, tab, b0, k_lo + kk, col0 + cc, k_hi, n, base,
                                           top, left, t_off[q], t_i[q], t_j[q])
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
                                    ra[q] = load_a(a, ga, a0, row0 + r, t1 + kk, m, k_hi)
                                if b_mode == IM2COL_T:
                                    kk0, cc0 = b_pos(tid)
                                    if t1 + kk0 < k_hi:
                                        base, top, left = position(gb, t1 + kk0)
                                for q in range(LB):
                                    kk, cc = b_pos(tid + q * NT)
                                    rb[q] = load_b(b, gb, tab, b0, t1 + kk, col0 + cc, k_hi, n,
                                                   base, top, left, t_off[q], t_i[q], t_j[q])
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
    # a convolution's forward: W along K, the column matrix along its columns, read from
    # the materialised matrix or (implicit GEMM) from the image itself
    ns.gemm[variant(True, False, "nchw")] = make(True, False, True)
    ns.gemm[variant(True, False, "nchw", IM2COL)] = make(True, False, True, IM2COL)
    # a convolution's weight gradient: dY rows along K, the image's columns transposed
    ns.gemm[variant(True, True, "plain", IM2COL_T)] = make(True, True, False, IM2COL_T)

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


def variant(a_kfast: bool, b_kfast: bool, store: str, b_mode: int = 0) -> str:
    """The name of a GEMM variant: which index runs along A's and B's loads, the store
    (``kn_plain``: A loaded along K, B along its columns, C written as is) and, for an
    implicit GEMM, how B is read (``_im2col``, ``_im2colT``)."""
    return f"{'k' if a_kfast else 'm'}{'k' if b_kfast else 'n'}_{store}" + (
        "", "_im2col", "_im2colT")[b_mode]


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
         splits=None, bias=None, implicit=None):
    """out = a @ b over ``batch`` (grid z), operands read through (batch, row, col) strides.
    ``out`` is (batch, m, n) contiguous, or with ``nchw=(y_flat, L, C_out, bias)`` the
    convolution output written in place (no split-K then). ``splits`` overrides :func:`plan`.
    ``implicit=(mode, geometry, taps)``: B is a convolution's column matrix (IM2COL) or its
    transpose (IM2COL_T) read from the image ``b`` itself (see :func:`conv_geometry`)."""
    i64 = np.int64
    # the index along which each operand is contiguous runs along a warp's loads
    a_kfast = a_strides[2] == 1 and (a_strides[1] != 1 or m == 1)
    if implicit is None:
        b_mode, gb, tab = PLAIN, tuple(i64(s) for s in b_strides), ctx.dummy(np.int64)
        b_kfast = b_strides[1] == 1 and (b_strides[2] != 1 or n == 1)
    else:
        b_mode, gb, tab = implicit
        b_kfast = b_mode == IM2COL_T
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
    ga = tuple(i64(s) for s in a_strides)
    if nchw is not None:
        y_flat, L, c_out, bias = nchw
        has_bias = bias is not None
        if bias is None:
            bias = ctx.dummy(dtype)
        ctx.launch(f"mm.gemm.{variant(a_kfast, b_kfast, 'nchw', b_mode)}", dtype, grid, block,
                   (a, ga, b, gb, tab, y_flat,
                    (i64(L), i64(c_out), i64(m), i64(has_bias)), bias, i64(m), i64(n), i64(k),
                    i64(1), i64(kchunk), i64(nz)))
        return
    # the bias (one per column) is added by the GEMM's store, or by the split-K sum
    fused = bias is not None and splits == 1
    gc = (i64(fused), i64(0), i64(0), i64(0))
    target = out if splits == 1 else ctx.empty((nz, m, n), dtype)
    ctx.launch(f"mm.gemm.{variant(a_kfast, b_kfast, 'plain', b_mode)}", dtype, grid, block,
               (a, ga, b, gb, tab, target, gc,
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


def conv_geometry(x_shape, groups, kh, kw, stride, padding, dilation, oh, ow):
    """The implicit GEMM's B geometry (12 ints: group and image strides, H, W, H_out, W_out,
    strides, paddings, L, taps per group) and the host tap table (offsets | rows | columns of
    each of a group's C_in/groups * kH * kW taps)."""
    n_img, c_in, h, w = x_shape
    cg = c_in // groups
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    taps = cg * kh * kw
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    rows, cols = (i * dh).ravel(), (j * dw).ravel()
    table = np.concatenate([c.ravel() * h * w + rows * w + cols, rows, cols]).astype(np.int64)
    geom = tuple(np.int64(v) for v in (cg * h * w, c_in * h * w, h, w, oh, ow, sh, sw, ph, pw,
                                       oh * ow, taps))
    return geom, table
