"""Implicit GEMM: a convolution as one BLAS product per kernel tap, read in place from the
(padded, or stride-phase) planes of each image, accumulated over the taps; no packed columns.

With stride 1 the input of tap (i, j) for all output positions is the padded image shifted by
i*dh*Wp + j*dw (the flat layout, see layout.py); with a larger stride each image is first
split into its stride phases (layout.phases_into), in which every tap is again a shift. The
input gradient of a stride-1 convolution is the forward convolution of the output gradient
with the flipped, channel-swapped kernel; of a strided one, a product per tap scattered back
into the phases (implicit_grad_input). The weight gradient is one product per tap of the
planes by the transposed output gradient (implicit_grad_weight). NumPy's own BLAS is called
from inside the kernels (``blas.gemm_at``); the caller holds BLAS at one thread.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..blas import gemm_at
from ..jit import INLINE, PARALLEL, U, njit
from ..threads import blas_threads, task_ranges
from .layout import (
    flat_geometry,
    output_positions,
    pad_flat_into,
    params_from_parts,
    phase_geometry,
    phases_into,
    unphase_into,
)


@njit(**INLINE)
def implicit_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw):
    """(pitch, Q, plane, M) of the planes the implicit GEMMs read: the flat layout at stride 1
    (one plane per channel, Q = plane), else the stride phases (sh*sw planes of Q floats)."""
    if sh > 1 or sw > 1:
        return phase_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    pitch, plane, m = flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    return pitch, plane, plane, m


@njit(**INLINE)
def tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch):
    """Where tap (i, j) starts reading in a channel's planes (implicit_geometry): its phase
    plane, shifted by (i*dh // sh) rows and (j*dw // sw) columns."""
    ai, bj = (tap // kw) * dh, (tap % kw) * dw
    return ((ai % sh) * sw + bj % sw) * q_sz + (ai // sh) * pitch + bj // sw


@njit(**INLINE)
def image_planes(x, xf, xp, n, kh, kw, sh, sw, ph, pw, dh, dw, pitch, plane):
    """(array, offset) of image n's planes for the implicit GEMMs: x itself where unpadded at
    stride 1, else its copy in xp (padded, or split into its stride phases)."""
    n_in = x.shape[1]
    if sh > 1 or sw > 1:
        phases_into(x, n, kh, kw, sh, sw, ph, pw, dh, dw, xp.reshape((n_in, plane)))
        return xp, 0
    if ph > 0 or pw > 0:
        pad_flat_into(x, n, n + 1, ph, pw, pitch, xp.reshape((1, n_in, plane)))
        return xp, 0
    return xf, n * n_in * plane


@njit(**PARALLEL)
def implicit_grad_weight(gy3, x, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, ranges,
                         parts):
    """[dW | db]^T of a convolution with no packed columns, the weight-gradient twin of
    implicit_forward: per image and group, the output gradient is transposed once to (M,
    O_g) (zeros on the junk columns; its column sums are db), and tap (i, j) adds
    ``shifted planes (C_g x M) @ dY^T`` to the rows c*kH*kW + i*kW + j of parts[t, g] (G,
    C_g*kH*kW + 1, O_g; the caller sums the tasks): one plain product per tap, read in place
    from the padded planes (with a stride, their stride phases: see phases_into), which
    OpenBLAS's small-matrix kernels run at near peak."""
    n_img, n_in, h, wd = x.shape
    kk1, og = parts.shape[2], parts.shape[3]
    taps = kh * kw
    cg = n_in // groups
    pitch, q_sz, plane, m = implicit_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    # the output's rows, from dY: x may have rows that no output reads (conv_transpose2d's
    # output_padding)
    m = (oh_n - 1) * pitch + ow_n
    copied = ph > 0 or pw > 0 or sh > 1 or sw > 1  # padded, or split into its stride phases
    zero = x.dtype.type(0)
    xf = x.reshape(x.size)
    src = output_positions(m, pitch, ow_n)
    for t in prange(ranges.shape[0]):
        xp = np.zeros(n_in * plane if copied else 1, dtype=x.dtype)  # borders stay zero
        gyt = np.empty((m, og), dtype=x.dtype)
        for n in range(ranges[t, 0], ranges[t, 1]):
            xs, base = image_planes(x, xf, xp, n, kh, kw, sh, sw, ph, pw, dh, dw, pitch, plane)
            gyn = gy3[n]
            for g in range(groups):
                db = parts[t, g, kk1 - 1]
                for q in range(m):
                    p = src[q]
                    if p >= 0:
                        for o in range(og):
                            v = gyn[g * og + o, p]
                            gyt[q, o] = v
                            db[o] += v
                    else:
                        for o in range(og):
                            gyt[q, o] = zero
                for tap in range(taps):
                    shift = tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch)
                    gemm_at(False, False, cg, og, m, xs, base + g * cg * plane + shift, plane,
                             gyt, 0, og, 1, parts[t, g], tap * og, taps * og)


@njit(**PARALLEL)
def implicit_grad_input(gy3, wt, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, ranges, gx):
    """The input gradient of a strided convolution with no packed columns, on the stride
    phases of each image's padded gradient (see phases_into): tap (i, j) adds
    ``W_tap^T (C_g x O_g) @ dY`` (dY laid out with the phase planes' row pitch, zeros on the
    junk columns) into one phase plane at that tap's shift, a product written in place;
    then the phases go back to NCHW. ``wt`` is (G, kH*kW, O_g, C_g); dY has (oh_n, ow_n)
    pixels (gx may have rows no output reaches: conv_transpose2d's output_padding)."""
    n_img, n_in, h, wd = gx.shape
    groups, taps, og, cg = wt.shape
    pitch, q_sz, plane, m = phase_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    m = (oh_n - 1) * pitch + ow_n
    zero = gy3.dtype.type(0)
    for t in prange(ranges.shape[0]):
        gxq = np.empty(n_in * plane, dtype=gy3.dtype)
        gyf = np.zeros(og * m, dtype=gy3.dtype)  # its junk columns stay zero
        for n in range(ranges[t, 0], ranges[t, 1]):
            for q in range(gxq.shape[0]):
                gxq[q] = zero
            for g in range(groups):
                for o in range(og):
                    src = gy3[n, g * og + o]
                    for r in range(oh_n):
                        d0, s0 = U(o * m + r * pitch), U(r * ow_n)
                        for c in range(U(ow_n)):
                            gyf[d0 + c] = src[s0 + c]
                for tap in range(taps):
                    shift = tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch)
                    gemm_at(True, False, cg, m, og, wt, (g * taps + tap) * og * cg, cg, gyf, 0,
                             m, 1, gxq, g * cg * plane + shift, plane)
            unphase_into(gxq.reshape((n_in, plane)), n, sh, sw, ph, pw, gx)


@njit(**PARALLEL)
def implicit_forward(x, wt, trans, bias, has_bias, kh, kw, sh, sw, ph, pw, dh, dw, ranges, y3):
    """Stride-1 convolution as kH*kW GEMMs per image with no packed columns ("implicit GEMM").

    In the flat layout (see above) tap (i, j) of a group's C_g input channels is the padded
    image shifted by i*dh*Wp + j*dw: a matrix BLAS reads in place (C_g rows, one plane apart),
    so Y_g = sum over taps of wt[g, i*kW + j] @ shifted planes, accumulated in one buffer;
    ``wt`` is (G, kH*kW, O_g, C_g). With ``trans`` (``wt`` then (G, kH*kW, C_g, O_g)) the
    products are computed transposed, Y_g^T = sum of shifted planes^T @ wt[g, tap], which
    OpenBLAS runs faster for 64+ output channels (see _implicit_trans). Task t does the images
    ranges[t]; only the padding copy and the unpacking of the junk columns move data outside
    BLAS (without padding the input is read in place, and 1x1 products are the output already,
    unless transposed). The padded rows share their padding columns (see flat_geometry).

    With a stride (sh, sw) > 1 each image is first split into its stride phases (see
    phases_into): tap (i, j) then reads one phase plane, shifted, in place just the same."""
    n_img, n_in, h, wd = x.shape
    groups, taps, og, cg = wt.shape
    if trans:
        cg, og = og, cg
    n_out = groups * og
    oh_n = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow_n = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    pitch, q_sz, plane, m = implicit_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    copied = ph > 0 or pw > 0 or sh > 1 or sw > 1  # padded, or split into its stride phases
    dense = pitch == ow_n  # no junk columns
    zero = x.dtype.type(0)
    xf, yf = x.reshape(x.size), y3.reshape(y3.size)
    direct = dense and not trans  # the product is this image's output already
    for t in prange(ranges.shape[0]):
        xp = np.zeros(n_in * plane if copied else 1, dtype=x.dtype)  # borders stay zero
        out = np.empty(1 if direct else og * m, dtype=x.dtype)
        for n in range(ranges[t, 0], ranges[t, 1]):
            src, base = image_planes(x, xf, xp, n, kh, kw, sh, sw, ph, pw, dh, dw, pitch, plane)
            for g in range(groups):
                res, r_off = out, 0
                if direct:
                    res, r_off = yf, (n * n_out + g * og) * m
                for tap in range(taps):
                    shift = tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch)
                    beta = 0 if tap == 0 else 1
                    w_off = (g * taps + tap) * og * cg
                    x_off = base + g * cg * plane + shift
                    if trans:  # (M x O_g) = shifted planes^T @ W_tap^T
                        gemm_at(True, False, m, og, cg, src, x_off, plane, wt, w_off, og, beta,
                                 res, r_off, og)
                    else:
                        gemm_at(False, False, og, m, cg, wt, w_off, cg, src, x_off, plane, beta,
                                 res, r_off, m)
                if trans:  # pixel by pixel: contiguous reads of the transposed product
                    yn = y3[n]
                    for r in range(oh_n):
                        for s in range(ow_n):
                            q = (r * pitch + s) * og
                            d = r * ow_n + s
                            for o in range(og):
                                yn[g * og + o, d] = out[q + o] + (bias[g * og + o] if has_bias
                                                                  else zero)
                    continue
                for o in range(og):
                    b = bias[g * og + o] if has_bias else zero
                    dst = y3[n, g * og + o]
                    if direct:
                        if has_bias:
                            for q in range(U(m)):
                                dst[q] += b
                    else:
                        for r in range(oh_n):
                            src_q = U(o * m + r * pitch)
                            d0 = U(r * ow_n)
                            for s in range(U(ow_n)):
                                dst[d0 + s] = out[src_q + s] + b


# ---------------------------------------------------------------------- host side
def transposed(og, kw, junk):
    """Whether implicit_forward computes its products transposed for ``og`` outputs per
    group. The per-tap OpenBLAS products at 3x3 (single thread), plain vs transposed, GFLOP/s:
    64->64 on 7x7 maps 183 vs 248, 64->128 187 vs 255, 32->32 on 14x14 221 vs 250, 16->16 on
    28x28 208 vs 168. But the transposed product is unpacked with strided writes: whole
    forward convolutions, 64->64 at 7x7 and 8x8 are 1.05-1.3x faster transposed, 32->32 at 14x14
    and 16x16 1.1-1.25x slower. Not where the plain product has no junk columns (kW = 1, or
    pw = dw*(kW-1)): it is the output already (transposed, 1x1 64->128 ran 1.8x slower)."""
    return og >= 64 and og % 16 == 0 and kw > 1 and junk


def forward(x, w, b, stride, padding, dilation, groups, y):
    """y = conv2d(x, w) + b by implicit_forward (see there)."""
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    # junk columns: the flat layout's rows (stride 1) or phase rows are wider than the output
    if stride == (1, 1):
        junk = padding[1] != dilation[1] * (kw - 1)
    else:
        junk = -(-(x.shape[3] + 2 * padding[1]) // stride[1]) != y.shape[3]
    trans = transposed(og, kw, junk)
    wt = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)
                              .transpose((0, 3, 4, 2, 1) if trans else (0, 3, 4, 1, 2))
                              .reshape((groups, kh * kw) + ((cg, og) if trans else (og, cg))))
    has_bias = b is not None
    bias = np.ascontiguousarray(b) if has_bias else np.zeros(1, x.dtype)
    n_img = x.shape[0]
    with blas_threads.single_thread():
        implicit_forward(x, wt, trans, bias, has_bias, kh, kw, stride[0], stride[1],
                         padding[0], padding[1], dilation[0], dilation[1], task_ranges(n_img),
                         y.reshape(n_img, n_out, y.shape[2] * y.shape[3]))
    return y


def grad_input(gy, w, padding, dilation, groups, gx):
    """The input gradient of a stride-1 convolution, as the forward convolution of the output
    gradient with the flipped, channel-swapped kernel (see flat.grad_input), by implicit_forward.
    False (gx untouched) where that convolution does not give it exactly."""
    n_out, cg, kh, kw = w.shape
    (ph, pw), (dh, dw) = padding, dilation
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    exact = (gx.shape[2] == gy.shape[2] + 2 * qh - dh * (kh - 1)
             and gx.shape[3] == gy.shape[3] + 2 * qw - dw * (kw - 1))
    if not (exact and qh >= 0 and qw >= 0):
        return False
    og = n_out // groups
    # this convolution has C_g outputs and O_g inputs per group
    trans = transposed(cg, kw, qw != dw * (kw - 1))
    wt = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1]
                              .transpose((0, 3, 4, 1, 2) if trans else (0, 3, 4, 2, 1))
                              .reshape((groups, kh * kw) + ((og, cg) if trans else (cg, og))))
    n_img = gy.shape[0]
    with blas_threads.single_thread():
        implicit_forward(gy, wt, trans, np.zeros(1, gy.dtype), False, kh, kw, 1, 1, qh, qw, dh,
                         dw, task_ranges(n_img), gx.reshape(n_img, gx.shape[1], -1))
    return True


def grad_input_strided(gy, w, stride, padding, dilation, groups, gx):
    """The input gradient of a strided convolution by implicit_grad_input (see there)."""
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    wt = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw).transpose(0, 3, 4, 1, 2)
                              .reshape(groups, kh * kw, og, cg))
    n_img = gy.shape[0]
    with blas_threads.single_thread():
        implicit_grad_input(gy.reshape(n_img, n_out, -1), wt, kh, kw, *stride, *padding,
                            *dilation, gy.shape[2], gy.shape[3], task_ranges(n_img), gx)
    return True



def grad_weight(gy, x, w_shape, stride, padding, dilation, groups, need_bias):
    """(dW, db) by implicit_grad_weight."""
    n_out, cg, kh, kw = w_shape
    n_img, _, oh_n, ow_n = gy.shape
    ranges = task_ranges(n_img)
    parts = np.zeros((len(ranges), groups, cg * kh * kw + 1, n_out // groups), dtype=gy.dtype)
    with blas_threads.single_thread():
        implicit_grad_weight(gy.reshape(n_img, n_out, oh_n * ow_n), x, groups, kh, kw, *stride,
                             *padding, *dilation, oh_n, ow_n, ranges, parts)
    return params_from_parts(parts.sum(axis=0), w_shape, True, need_bias)
