"""im2col + BLAS: strided layers, weight gradients, and anything where implicit GEMM cannot call
BLAS.

One ``prange`` task per thread takes a contiguous range of images; it packs a chunk of them at
a time into a ``(C_g*kH*kW + 1, chunk*M)`` column matrix small enough to stay in its L2
cache, multiplies it by ``[W | b]`` with NumPy's own single-threaded BLAS, called from inside
the kernel (see ``../blas.py``; the ones row adds the bias), and unpacks the result to NCHW.
With stride 1 every packed row is one contiguous slice of the padded plane (the flat layout,
see layout.py); otherwise rows are strided gathers. Backward packs the output gradient the
same way, accumulates ``[dW | db]`` per task (summed after the kernel: no shared writes) and
scatters the column gradient back with col2im, each task into its own images only. Products
are cut to sizes that OpenBLAS runs with its small-matrix kernels (plan.SMALL_GEMM): weight
gradients one image and ~100 columns at a time as a plain product of a transposed block of dY
(gemm_grad_weight), strided layers in blocks of output rows. Where NumPy's BLAS cannot be
called from a kernel, the same steps run on Python worker threads (threads.pool) with the
serial ``nogil`` layout helpers and ``np.matmul`` (the ``work`` functions of :func:`forward`
and :func:`backward`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import blas as blas_k
from ..blas import gemm, gemm_at
from ..jit import PARALLEL, ZERO, U, njit
from ..threads import blas_threads, pool, split, task_ranges, workspace
from .layout import (
    col2im_flat,
    col2im_strided,
    columns_to_nchw,
    flat_geometry,
    im2col_flat,
    im2col_strided,
    nchw_to_columns,
    output_positions,
    pad_flat_into,
    pad_into,
    params_from_parts,
    unpad_flat_into,
    unpad_into,
)
from .plan import SMALL_GEMM


@njit(**PARALLEL)
def gemm_forward(x, w_aug, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, flat, chunk, ranges, y3):
    """im2col + GEMM forward: task t packs chunks of its images ranges[t] and multiplies them
    by [W | b] per group (the ones row of the columns adds the bias)."""
    n_img, n_in, h, wd = x.shape
    groups, og, kk1 = w_aug.shape
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    pitch, plane, m = flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    if not flat:
        pitch, plane, m = ow_n, hp * wp, oh_n * ow_n
    dense = pitch == ow_n
    padded = ph > 0 or pw > 0
    for t in prange(ranges.shape[0]):
        # the padded images (flat: their zeros are written once, here)
        xp_buf = np.zeros(chunk * n_in * plane if padded else 1, dtype=x.dtype)
        col_buf = np.empty(kk1 * chunk * m, dtype=x.dtype)
        out_buf = np.empty(og * chunk * m, dtype=x.dtype)
        for a in range(ranges[t, 0], ranges[t, 1], chunk):
            z = min(a + chunk, ranges[t, 1])
            nb = z - a
            xp = x[a:z]
            xq = x[a:z].reshape((nb, n_in, h * wd))
            if padded and flat:
                xq = xp_buf[:nb * n_in * plane].reshape((nb, n_in, plane))
                pad_flat_into(x, a, z, ph, pw, pitch, xq)
            elif padded:
                xp = xp_buf[:nb * n_in * hp * wp].reshape((nb, n_in, hp, wp))
                pad_into(x, a, z, ph, pw, xp)
            cols = col_buf[:kk1 * nb * m].reshape((kk1, nb * m))
            for g in range(groups):
                if flat:
                    im2col_flat(xq, g * cg, cg, kh, kw, dh, dw, pitch, m, cols, True)
                else:
                    im2col_strided(xp, g * cg, cg, kh, kw, sh, sw, dh, dw, ZERO, oh_n, ow_n,
                                   cols, True)
                if dense and nb == 1:  # the product is this image's output already
                    gemm(False, False, w_aug[g], cols, 0, y3[a, g * og:(g + 1) * og])
                else:
                    out = out_buf[:og * nb * m].reshape((og, nb * m))
                    gemm(False, False, w_aug[g], cols, 0, out)
                    columns_to_nchw(out, a, g * og, pitch, m, oh_n, ow_n, y3)


@njit(**PARALLEL)
def gemm_forward_rows(x, w_aug, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, rows, ranges, y3):
    """gemm_forward for a strided layer whose image is too large for one product: one image at
    a time, ``rows`` output rows per product (see _gemm_rows), written straight into the
    output. A kernel of its own (as gemm_backward_input_rows), so that a network compiles only
    the paths its layers take."""
    n_img, n_in, h, wd = x.shape
    groups, og, kk1 = w_aug.shape
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = oh_n * ow_n
    padded = ph > 0 or pw > 0
    for t in prange(ranges.shape[0]):
        xp_buf = np.zeros(n_in * hp * wp if padded else 1, dtype=x.dtype)
        col_buf = np.empty(kk1 * rows * ow_n, dtype=x.dtype)
        for a in range(ranges[t, 0], ranges[t, 1]):
            xp = x[a:a + 1]
            if padded:
                xp = xp_buf.reshape((1, n_in, hp, wp))
                pad_into(x, a, a + 1, ph, pw, xp)
            for g in range(groups):
                for r0 in range(0, oh_n, rows):
                    r1 = min(r0 + rows, oh_n)
                    nq = (r1 - r0) * ow_n
                    cols = col_buf[:kk1 * nq].reshape((kk1, nq))
                    im2col_strided(xp, g * cg, cg, kh, kw, sh, sw, dh, dw, r0, r1, ow_n,
                                   cols, True)
                    # straight into output rows r0:r1 of the group's channels (ldc = OH*OW)
                    gemm_at(False, False, og, nq, kk1, w_aug[g], 0, kk1, cols, 0, nq, 0,
                             y3[a], g * og * m + r0 * ow_n, m)


@njit(**PARALLEL)
def gemm_backward(gy3, x, w2, n_in, h, wd, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, flat,
                  chunk, ranges, need_input, need_weight, need_bias, gx, parts):
    """im2col + GEMM backward. Task t, over chunks of its images ranges[t]: [dW | db] of each
    group accumulates, transposed, into parts[t] (G, C_g*kH*kW + 1, O_g; the caller sums the
    tasks), the column gradient W^T dY is
    scattered back (col2im) into gx for its own images. ``x`` is read only for the weight
    gradient and ``gx`` written only for the input gradient (the input gradient alone goes
    through gemm_backward_input)."""
    groups, og, kk = w2.shape
    kk1 = kk + 1
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    pitch, plane, m = flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    if flat:  # the input gradient's rows beyond the output (output_padding) are not reached
        m = (oh_n - 1) * pitch + ow_n
    else:
        pitch, plane, m = ow_n, hp * wp, oh_n * ow_n
    dense = pitch == ow_n
    padded = ph > 0 or pw > 0
    zero = gy3.dtype.type(0)
    for t in prange(ranges.shape[0]):
        gyt_buf = np.empty(og * chunk * m, dtype=gy3.dtype)
        col_buf = np.empty(kk1 * chunk * m if need_weight else 1, dtype=gy3.dtype)
        gcol_buf = np.empty(kk * chunk * m if need_input else 1, dtype=gy3.dtype)
        # the padded images (flat: their zeros are written once, here)
        xp_buf = np.zeros(chunk * n_in * plane if padded and need_weight else 1,
                          dtype=gy3.dtype)
        gxp_buf = np.empty(chunk * n_in * plane if padded and need_input else 1,
                           dtype=gy3.dtype)
        for a in range(ranges[t, 0], ranges[t, 1], chunk):
            z = min(a + chunk, ranges[t, 1])
            nb = z - a
            xp = x[a:z]
            xq = xp_buf[:1].reshape((1, 1, 1))
            if need_weight and flat and padded:
                xq = xp_buf[:nb * n_in * plane].reshape((nb, n_in, plane))
                pad_flat_into(x, a, z, ph, pw, pitch, xq)
            elif need_weight and flat:
                xq = x[a:z].reshape((nb, n_in, plane))
            elif need_weight and padded:
                xp = xp_buf[:nb * n_in * hp * wp].reshape((nb, n_in, hp, wp))
                pad_into(x, a, z, ph, pw, xp)
            gxp = gx[a:z]
            gxq = gxp_buf[:1].reshape((1, 1, 1))
            if need_input and flat and padded:
                gxq = gxp_buf[:nb * n_in * plane].reshape((nb, n_in, plane))
            elif need_input and flat:
                gxq = gx[a:z].reshape((nb, n_in, plane))
            elif need_input and padded:
                gxp = gxp_buf[:nb * n_in * hp * wp].reshape((nb, n_in, hp, wp))
            for g in range(groups):
                gyt = gy3[a, g * og:(g + 1) * og]
                if not (dense and nb == 1):
                    gyt = gyt_buf[:og * nb * m].reshape((og, nb * m))
                    nchw_to_columns(gy3, a, nb, g * og, pitch, m, oh_n, ow_n, gyt)
                if need_weight:
                    cols = col_buf[:kk1 * nb * m].reshape((kk1, nb * m))
                    if flat:
                        im2col_flat(xq, g * cg, cg, kh, kw, dh, dw, pitch, m, cols, True)
                    else:
                        im2col_strided(xp, g * cg, cg, kh, kw, sh, sw, dh, dw, ZERO, oh_n,
                                       ow_n, cols, True)
                    # [dW | db]^T += cols @ dY^T: 1.5-2x the speed of dY @ cols^T in OpenBLAS
                    gemm(False, True, cols, gyt, 1, parts[t, g])
                elif need_bias:
                    for o in range(og):
                        acc = zero
                        for q in range(U(nb * m)):
                            acc += gyt[o, q]
                        parts[t, g, kk, o] += acc
                if need_input:
                    gcols = gcol_buf[:kk * nb * m].reshape((kk, nb * m))
                    gemm(True, False, w2[g], gyt, 0, gcols)
                    if flat:
                        col2im_flat(gcols, g * cg, cg, kh, kw, dh, dw, pitch, m, gxq)
                        if padded:
                            unpad_flat_into(gxq, a, g * cg, cg, ph, pw, pitch, gx)
                    else:
                        col2im_strided(gcols, g * cg, cg, kh, kw, sh, sw, dh, dw, ZERO, oh_n,
                                       ow_n, gxp)
                        if padded:
                            unpad_into(gxp, a, g * cg, cg, ph, pw, gx)


@njit(**PARALLEL)
def gemm_backward_input(gy3, w2, n_in, h, wd, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, flat,
                        chunk, ranges, gx):
    """The input gradient alone, as :func:`gemm_backward` computes it: its common use (weight
    gradients mostly have kernels of their own), in a kernel of its own, because a first run
    compiles this path alone in a third of gemm_backward's time."""
    groups, og, kk = w2.shape
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    pitch, plane, m = flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    if flat:  # the input gradient's rows beyond the output (output_padding) are not reached
        m = (oh_n - 1) * pitch + ow_n
    else:
        pitch, plane, m = ow_n, hp * wp, oh_n * ow_n
    dense = pitch == ow_n
    padded = ph > 0 or pw > 0
    for t in prange(ranges.shape[0]):
        gyt_buf = np.empty(og * chunk * m, dtype=gy3.dtype)
        gcol_buf = np.empty(kk * chunk * m, dtype=gy3.dtype)
        gxp_buf = np.empty(chunk * n_in * plane if padded else 1, dtype=gy3.dtype)
        for a in range(ranges[t, 0], ranges[t, 1], chunk):
            z = min(a + chunk, ranges[t, 1])
            nb = z - a
            gxp = gx[a:z]
            gxq = gxp_buf[:1].reshape((1, 1, 1))
            if flat and padded:
                gxq = gxp_buf[:nb * n_in * plane].reshape((nb, n_in, plane))
            elif flat:
                gxq = gx[a:z].reshape((nb, n_in, plane))
            elif padded:
                gxp = gxp_buf[:nb * n_in * hp * wp].reshape((nb, n_in, hp, wp))
            for g in range(groups):
                gyt = gy3[a, g * og:(g + 1) * og]
                if not (dense and nb == 1):
                    gyt = gyt_buf[:og * nb * m].reshape((og, nb * m))
                    nchw_to_columns(gy3, a, nb, g * og, pitch, m, oh_n, ow_n, gyt)
                gcols = gcol_buf[:kk * nb * m].reshape((kk, nb * m))
                gemm(True, False, w2[g], gyt, 0, gcols)
                if flat:
                    col2im_flat(gcols, g * cg, cg, kh, kw, dh, dw, pitch, m, gxq)
                    if padded:
                        unpad_flat_into(gxq, a, g * cg, cg, ph, pw, pitch, gx)
                else:
                    col2im_strided(gcols, g * cg, cg, kh, kw, sh, sw, dh, dw, ZERO, oh_n,
                                   ow_n, gxp)
                    if padded:
                        unpad_into(gxp, a, g * cg, cg, ph, pw, gx)


@njit(**PARALLEL)
def gemm_backward_input_rows(gy3, w2, n_in, h, wd, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n,
                             rows, ranges, gx):
    """gemm_backward_input for a strided layer whose image is too large for one product: one
    image at a time, ``rows`` output rows per product (as gemm_forward_rows)."""
    groups, og, kk = w2.shape
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = oh_n * ow_n
    padded = ph > 0 or pw > 0
    for t in prange(ranges.shape[0]):
        gcol_buf = np.empty(kk * rows * ow_n, dtype=gy3.dtype)
        gxp_buf = np.empty(n_in * hp * wp if padded else 1, dtype=gy3.dtype)
        for a in range(ranges[t, 0], ranges[t, 1]):
            gxp = gx[a:a + 1]
            if padded:
                gxp = gxp_buf.reshape((1, n_in, hp, wp))
            for g in range(groups):
                for r0 in range(0, oh_n, rows):
                    r1 = min(r0 + rows, oh_n)
                    nq = (r1 - r0) * ow_n
                    gcols = gcol_buf[:kk * nq].reshape((kk, nq))
                    # W_g^T @ (the group's output-gradient rows r0:r1, read in place)
                    gemm_at(True, False, kk, nq, og, w2[g], 0, kk, gy3[a],
                             g * og * m + r0 * ow_n, m, 0, gcols, 0, nq)
                    col2im_strided(gcols, g * cg, cg, kh, kw, sh, sw, dh, dw, r0, r1, ow_n, gxp)
                if padded:
                    unpad_into(gxp, a, g * cg, cg, ph, pw, gx)


@njit(**PARALLEL)
def gemm_grad_weight(gy3, x, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, flat, block,
                     ranges, parts):
    """[dW | db]^T of each group, summed over task t's images ranges[t] into parts[t] (G,
    C_g*kH*kW + 1, O_g; the caller sums the tasks), one image and one block of its columns at
    a time: ``block`` columns of the flat layout (stride 1), or ``block`` output rows (strided).
    Each block is packed (kk+1, nq) as in gemm_backward, its output gradient transposed to
    (nq, O_g) (zeros on the flat layout's junk columns), and ``parts[t, g] += cols @ dY^T``
    runs as a plain product small enough for OpenBLAS's small-matrix kernels (see
    _grad_weight_block)."""
    n_img, n_in, h, wd = x.shape
    kk1, og = parts.shape[2], parts.shape[3]
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    pitch, plane, m = flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    # the output's rows, from dY: x may have rows that no output reads (conv_transpose2d's
    # output_padding)
    m = (oh_n - 1) * pitch + ow_n
    if not flat:
        pitch, plane, m = ow_n, hp * wp, oh_n * ow_n
    padded = ph > 0 or pw > 0
    nq_max = block if flat else block * ow_n
    zero, one = x.dtype.type(0), x.dtype.type(1)
    src = output_positions(m, pitch, ow_n)  # for the flat layout
    for t in prange(ranges.shape[0]):
        # one padded image (its zeros are written once, here)
        xp_buf = np.zeros(n_in * plane if padded else 1, dtype=x.dtype)
        col_buf = np.empty(kk1 * nq_max, dtype=x.dtype)
        gyt_buf = np.empty(nq_max * og, dtype=x.dtype)
        for a in range(ranges[t, 0], ranges[t, 1]):
            xq = x[a:a + 1].reshape((1, n_in, h * wd))
            xp = x[a:a + 1]
            if padded and flat:
                xq = xp_buf.reshape((1, n_in, plane))
                pad_flat_into(x, a, a + 1, ph, pw, pitch, xq)
            elif padded:
                xp = xp_buf.reshape((1, n_in, hp, wp))
                pad_into(x, a, a + 1, ph, pw, xp)
            for g in range(groups):
                for b0 in range(0, m if flat else oh_n, block):
                    if flat:
                        q0 = b0
                        nq = min(block, m - q0)
                    else:
                        q0 = b0 * ow_n
                        nq = (min(b0 + block, oh_n) - b0) * ow_n
                    cols = col_buf[:kk1 * nq].reshape((kk1, nq))
                    if flat:
                        for c in range(cg):
                            for i in range(kh):
                                for j in range(kw):
                                    r = (c * kh + i) * kw + j
                                    off = U(i * dh * pitch + j * dw + q0)
                                    for q in range(U(nq)):
                                        cols[r, q] = xq[0, g * cg + c, off + q]
                        for q in range(nq):
                            cols[kk1 - 1, q] = one
                    else:
                        im2col_strided(xp, g * cg, cg, kh, kw, sh, sw, dh, dw, b0,
                                       b0 + nq // ow_n, ow_n, cols, True)
                    gyt = gyt_buf[:nq * og].reshape((nq, og))
                    gya = gy3[a]
                    for q in range(nq):
                        p = src[q0 + q] if flat else q0 + q
                        if p >= 0:
                            for o in range(og):
                                gyt[q, o] = gya[g * og + o, p]
                        else:
                            for o in range(og):
                                gyt[q, o] = zero
                    gemm_at(False, False, kk1, og, nq, cols, 0, nq, gyt, 0, og, 1, parts[t, g],
                             0, og)


# ---------------------------------------------------------------------- host side
def gemm_rows(og, kk1, oh_n, ow_n):
    """Output rows per product of the strided im2col forward: one image's whole output where
    its product is small already or its operands are large (blocks of a 32->64 or an AlexNet
    conv1 product ran 1.1-1.6x slower), else as many rows as keep it small. The 16->32 stride-2
    layer on 32x32 maps (256 columns per image): 0.82 -> 0.70 ms per batch of 64, 2 threads."""
    if og * kk1 > 8192 or og * kk1 * oh_n * ow_n <= SMALL_GEMM:
        return oh_n
    return max(1, SMALL_GEMM // (og * kk1 * ow_n))


def grad_weight_block(flat, m, ow_n):
    """Columns (flat layout) or output rows (strided) per product of gemm_grad_weight, or 0
    where one image has more than 1024 columns (AlexNet's conv1: its whole-image products
    run faster). Weight and bias gradients, 2 threads, old path -> blocks: 32->32 at 16x16
    1.09 -> 0.86 ms, 64->64 at 8x8 1.01 -> 0.90, LeNet's conv2 0.22 -> 0.18, 16->32 stride 2
    on 32x32 0.81 -> 0.77, ResNet-mini's stride-2 layers 1.38 -> 1.31 and 1.13 -> 1.05."""
    if m > 1024:
        return 0
    return 96 if flat else max(1, 128 // ow_n)


# Floats of packed columns (and of the other buffers live with them) per GEMM: a quarter of the
# 1 MiB L2 cache, so that OpenBLAS's own packed panels fit beside them (LeNet-5 steps 5-9%
# faster than with the whole L2), but at least MIN_COLUMNS columns (with fewer, BLAS runs
# slowly: the 64-channel 8x8 layer 1.2x slower at one image per product; with 256, ResNet-mini's
# 16->32 stride-2 layer, 196 columns per image, ran its forward 1.25x slower in pairs).
COLUMN_BUDGET = 1 << 16
MIN_COLUMNS = 192


class ColumnPlan:
    """Everything about one convolution's geometry that the per-chunk loops need."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, out_hw):
        n_img, n_in, h, wd = x_shape
        n_out, cg, kh, kw = self.w_shape = tuple(w_shape)
        self.n_img, self.n_in, self.cg, self.kh, self.kw = n_img, n_in, cg, kh, kw
        (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw) = stride, padding, dilation
        self.groups, self.og = groups, n_out // groups
        self.oh, self.ow = out_hw
        self.hp, self.wp = h + 2 * self.ph, wd + 2 * self.pw
        self.kk = cg * kh * kw
        self.flat = self.sh == 1 and self.sw == 1
        if self.flat:
            self.pitch, self.m = self.wp, (self.oh - 1) * self.wp + self.ow
        else:
            self.pitch, self.m = self.ow, self.oh * self.ow
        # no junk columns and no packing: the GEMM result is NCHW already
        self.dense = self.pitch == self.ow
        self.padded = self.ph > 0 or self.pw > 0
        self.chunk = self.chunk_for(self.kk + 1)

    def chunk_for(self, rows):
        """Images per chunk when ``rows`` rows of M floats per image are live at once: within
        the budget, but at least MIN_COLUMNS columns (narrower products run BLAS slowly)."""
        fit = COLUMN_BUDGET // (rows * self.m)
        return max(1, min(self.n_img, max(fit, -(-MIN_COLUMNS // self.m))))

    def padded_input(self, x, a, z):
        if not self.padded:
            return x[a:z]
        xp = workspace.get("xp", (z - a, self.n_in, self.hp, self.wp), x.dtype)
        pad_into(x, a, z, self.ph, self.pw, xp)
        return xp

    def pack(self, xp, g, cols):
        if self.flat:
            xp3 = xp.reshape(xp.shape[0], self.n_in, self.hp * self.wp)
            im2col_flat(xp3, g * self.cg, self.cg, self.kh, self.kw, self.dh, self.dw, self.wp,
                        self.m, cols, True)
        else:
            im2col_strided(xp, g * self.cg, self.cg, self.kh, self.kw, self.sh, self.sw,
                           self.dh, self.dw, 0, self.oh, self.ow, cols, True)

    def unpack_grad(self, gcols, g, gxp):
        if self.flat:
            gxp3 = gxp.reshape(gxp.shape[0], self.n_in, self.hp * self.wp)
            col2im_flat(gcols, g * self.cg, self.cg, self.kh, self.kw, self.dh, self.dw,
                        self.wp, self.m, gxp3)
        else:
            col2im_strided(gcols, g * self.cg, self.cg, self.kh, self.kw, self.sh, self.sw,
                           self.dh, self.dw, 0, self.oh, self.ow, gxp)



def forward(x, w, b, stride, padding, dilation, groups, y):
    """y = conv2d(x, w) + b by im2col + GEMM."""
    n_img = x.shape[0]
    n_out, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = y.shape[2], y.shape[3]
    og = n_out // groups
    plan = ColumnPlan(x.shape, w.shape, stride, padding, dilation, groups, (oh_n, ow_n))
    kk, m = plan.kk, plan.m
    # [W | b] per group: the ones row of the packed columns adds the bias inside the GEMM
    w_aug = np.zeros((groups, og, kk + 1), dtype=x.dtype)
    w_aug[:, :, :kk] = w.reshape(groups, og, kk)
    if b is not None:
        w_aug[:, :, kk] = np.asarray(b).reshape(groups, og)
    y3 = y.reshape(n_img, n_out, oh_n * ow_n)
    if blas_k.ready():  # all on Numba's threads, BLAS called from the kernel
        with blas_threads.single_thread():
            rows = oh_n if plan.flat else gemm_rows(og, kk + 1, oh_n, ow_n)
            if rows < oh_n:
                gemm_forward_rows(x, w_aug, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, rows,
                                  task_ranges(n_img), y3)
            else:
                gemm_forward(x, w_aug, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, plan.flat,
                             plan.chunk_for(kk + 1 + og), task_ranges(n_img), y3)
        return y

    def work(n0, n1):
        for a in range(n0, n1, plan.chunk):
            z = min(a + plan.chunk, n1)
            xp = plan.padded_input(x, a, z)
            cols = workspace.get("cols", (kk + 1, (z - a) * m), x.dtype)
            for g in range(groups):
                plan.pack(xp, g, cols)
                if plan.dense and z - a == 1:
                    np.matmul(w_aug[g], cols, out=y3[a, g * og:(g + 1) * og])
                    continue
                out = workspace.get("gemm", (og, (z - a) * m), x.dtype)
                np.matmul(w_aug[g], cols, out=out)
                columns_to_nchw(out, a, g * og, plan.pitch, m, oh_n, ow_n, y3)

    pool.map(work, split(n_img, pool.workers(n_img)))
    return y


def grad_weight(gy3, x, w_shape, stride, padding, dilation, groups, plan, block, need_bias):
    """(dW, db) by gemm_grad_weight, ``block`` columns or output rows per product."""
    n_out, cg, kh, kw = w_shape
    ranges = task_ranges(x.shape[0])
    parts = np.zeros((len(ranges), groups, plan.kk + 1, n_out // groups), dtype=gy3.dtype)
    with blas_threads.single_thread():
        gemm_grad_weight(gy3, x, groups, kh, kw, *stride, *padding, *dilation, plan.oh, plan.ow,
                         plan.flat, block, ranges, parts)
    return params_from_parts(parts.sum(axis=0), w_shape, True, need_bias)


def backward(gy3, x, w, stride, padding, dilation, groups, need_input, need_weight, need_bias,
             plan, gx):
    """(dW, db) by im2col + GEMM, and the input gradient into ``gx``: the column gradient
    scattered back with col2im, [dW | db] from the packed columns; each only where asked for.
    ``w`` is read for the input gradient only (else it may be None)."""
    n_out, cg, kh, kw = plan.w_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n_img, n_in, h, wd = plan.n_img, plan.n_in, plan.hp - 2 * ph, plan.wp - 2 * pw
    oh_n, ow_n = plan.oh, plan.ow
    og = n_out // groups
    dtype = gy3.dtype
    gw = gb = None
    kk, m = plan.kk, plan.m
    # gemm_backward takes its shape from w2 and reads its values for the input gradient only
    w2 = w.reshape(groups, og, kk) if need_input else np.empty((groups, og, kk), dtype)
    want_params = need_weight or need_bias
    # rows of M floats live per image: output-gradient columns, input columns, column gradient
    chunk = plan.chunk_for(og + (kk + 1 if need_weight else 0) + (kk if need_input else 0))
    if blas_k.ready():  # all on Numba's threads, BLAS called from the kernel
        ranges = task_ranges(n_img)
        parts = np.zeros((len(ranges) if want_params else 1, groups, kk + 1, og), dtype=dtype)
        dummy = np.zeros((1, 1, 1, 1), dtype=dtype)
        rows = oh_n if plan.flat else gemm_rows(og, kk + 1, oh_n, ow_n)
        with blas_threads.single_thread():
            if want_params:
                gemm_backward(gy3, x if need_weight else dummy, w2, n_in, h,
                              wd, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n,
                              plan.flat, chunk, ranges, need_input, need_weight, need_bias,
                              gx if need_input else dummy, parts)
            elif rows < oh_n:
                gemm_backward_input_rows(gy3, w2, n_in, h, wd, kh, kw,
                                         sh, sw, ph, pw, dh, dw, oh_n, ow_n, rows, ranges, gx)
            else:
                gemm_backward_input(gy3, w2, n_in, h, wd, kh, kw, sh,
                                    sw, ph, pw, dh, dw, oh_n, ow_n, plan.flat, chunk, ranges,
                                    gx)
        if want_params:
            gw, gb = params_from_parts(parts.sum(axis=0), plan.w_shape, need_weight, need_bias)
        return gw, gb

    def work(n0, n1):
        # this thread's share of [dW | db]^T: summed over its images, reduced after the join
        part = np.zeros((groups, kk + 1, og), dtype=dtype) if want_params else None
        for a in range(n0, n1, chunk):
            z = min(a + chunk, n1)
            xp = plan.padded_input(x, a, z) if need_weight else None
            if need_input:
                gxp = gx[a:z] if not plan.padded else workspace.get(
                    "gxp", (z - a, plan.n_in, plan.hp, plan.wp), dtype)
            for g in range(groups):
                if plan.dense and z - a == 1:
                    gyt = gy3[a, g * og:(g + 1) * og]
                else:
                    gyt = workspace.get("gyt", (og, (z - a) * m), dtype)
                    nchw_to_columns(gy3, a, z - a, g * og, plan.pitch, m, oh_n, ow_n, gyt)
                if need_weight:
                    cols = workspace.get("cols", (kk + 1, (z - a) * m), dtype)
                    plan.pack(xp, g, cols)
                    tmp = workspace.get("dw", (kk + 1, og), dtype)
                    np.matmul(cols, gyt.T, out=tmp)  # faster than gyt @ cols.T (see above)
                    part[g] += tmp
                elif need_bias:
                    part[g, kk] += gyt.sum(axis=1)
                if need_input:
                    gcols = workspace.get("gcols", (kk, (z - a) * m), dtype)
                    np.matmul(w2[g].T, gyt, out=gcols)
                    plan.unpack_grad(gcols, g, gxp)
                    if plan.padded:
                        unpad_into(gxp, a, g * cg, cg, ph, pw, gx)
        return part

    parts = pool.map(work, split(n_img, pool.workers(n_img)))
    if want_params:
        total = parts[0]
        for p in parts[1:]:
            total += p
        gw, gb = params_from_parts(total, plan.w_shape, need_weight, need_bias)
    return gw, gb
