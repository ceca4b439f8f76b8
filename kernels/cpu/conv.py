"""2-D convolution (cross-correlation, NCHW) and its gradients on the CPU.

Five strategies, chosen per call by :func:`conv2d_forward` / :func:`conv2d_backward` (the
measurements behind the choice are beside :func:`winograd.use_winograd`, :func:`_use_implicit`,
:func:`_use_flat`, :func:`_use_implicit_weight` and :func:`_grad_weight_block`):

* **Winograd's F(2x2, 3x3)** (3x3 stride-1 layers with 16+ channels: ResNet's and VGG's
  32- to 512-channel layers, forward and both gradients; see ``winograd.py``): 16 products
  per set of 2x2 output tiles instead of 36 multiply-adds per output, 2.25x fewer FLOPs, at the
  cost of transforms that move every value twice.
* **implicit GEMM** (stride 1 with 8+ input channels per group: VGG, ResNet and Inception
  layers, forward and input gradient). With stride 1 the input of tap (i, j) for all output
  positions is the padded image shifted by i*dh*Wp + j*dw (the "flat" layout, see below), so
  each tap is one BLAS product read in place from the padded planes, accumulated over the taps:
  no packed columns at all. The input gradient is the same forward convolution of the output
  gradient with the flipped kernel, and the weight gradient of the wider layers one product
  per tap of the planes by the (once transposed) output gradient (implicit_grad_weight).
* **flat direct kernels** (stride 1, few channels: LeNet, depthwise layers).
  One ``prange`` task per image pads it into a small plane; output unit q reads tap (i, j) at
  ``q + i*dh*Wp + j*dw`` of the flattened plane, so every tap is one long contiguous
  multiply-add, done for four output channels and three taps per pass. The input gradient is the
  same forward kernel run on the output gradient with the flipped, channel-swapped kernel; the
  weight gradient sums twelve dot products per pass into per-task partials.
* **im2col + BLAS** (strided layers, weight gradients, anything when implicit GEMM cannot call
  BLAS). One ``prange`` task per thread takes a contiguous range of images; it packs a chunk of
  them at a time into a ``(C_g*kH*kW + 1, chunk*M)`` column matrix small enough to stay in its
  L2 cache, multiplies it by ``[W | b]`` with NumPy's own single-threaded BLAS, called from
  inside the kernel (see ``blas.py``; the ones row adds the bias), and unpacks the result to
  NCHW. With stride 1 every packed row is one contiguous
  slice of the padded plane (the "flat" layout, see below); otherwise rows are strided gathers.
  Backward packs the output gradient the same way, accumulates ``[dW | db]`` per task (summed
  after the kernel: no shared writes) and scatters the column gradient back with col2im, each
  task into its own images only. Products are cut to sizes that OpenBLAS runs with its
  small-matrix kernels (M*N*K <= 10^6, see _SMALL_GEMM): weight gradients one image and ~100
  columns at a time as a plain product of a transposed block of dY (gemm_grad_weight), strided
  layers in blocks of output rows. Where NumPy's BLAS cannot be called from a kernel, the same
  steps run on Python worker threads (threads.pool) with serial ``nogil`` kernels.
* **direct row loops** (depthwise-like groups, where a GEMM would have one row): one ``prange`` task
  per output plane (forward), per input plane (input gradient) or per filter slice (weight
  gradient), so each task owns what it writes.

Scratch matrices are reused between calls, or allocated per task and recycled by the allocator
(page faults on fresh buffers cost more than the packing itself). Shapes, strides, padding and
dilation arrive already validated.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import blas as blas_k
from . import winograd
from .blas import gemm, gemm_at
from .threads import blas_threads, pool, split, task_ranges, workspace

_opts = dict(parallel=True, cache=True, fastmath={"contract"})
# a zero typed int64 where a literal 0 would make Numba compile a helper a second time, for
# Literal[int](0)
_ZERO = np.int64(0)


# ---------------------------------------------------------------------- helpers
@njit(cache=True, inline="always")
def _valid_range(off, stride, size, n_out):
    """[lo, hi): the outputs o with 0 <= o*stride + off < size."""
    lo = 0
    if off < 0:
        lo = (-off + stride - 1) // stride
    hi = (size - off + stride - 1) // stride
    if hi > n_out:
        hi = n_out
    if lo > n_out:
        lo = n_out
    if hi < lo:
        hi = lo
    return lo, hi


_serial = dict(cache=True, nogil=True, fastmath={"contract"})

# Inner loops index with unsigned integers: Numba must guard every signed index against negative
# (wrap-around) values, and those guards stop LLVM from vectorising the loop (8x slower copies).
_u = np.uint64

# Packed-column layouts. With stride 1 the receptive field of output (oh, ow) at tap (i, j) is
# the padded input plane, flattened, at  oh*Wp + ow + (i*dh*Wp + j*dw): every row of the column
# matrix is then one contiguous slice of the plane ("flat" layout, M = (OH-1)*Wp + OW columns per
# image, of which the Wp-OW at the end of each output row are junk that is never read back).
# With a larger stride the columns are the dense (oh, ow) grid and each row is a strided gather.


@njit(**_serial)
def pad_into(x, n0, n1, ph, pw, xp):
    """xp[n-n0, c] = x[n, c] with ph rows and pw columns of zeros around it."""
    h, w = x.shape[2], x.shape[3]
    zero = xp.dtype.type(0)
    hp, wp = xp.shape[2], xp.shape[3]
    for n in range(n0, n1):
        for c in range(x.shape[1]):
            dst = xp[n - n0, c]
            for a in range(hp):
                ih = a - ph
                if ih < 0 or ih >= h:
                    for b in range(wp):
                        dst[a, b] = zero
                else:
                    for b in range(pw):
                        dst[a, b] = zero
                    src = x[n, c, ih]
                    row = dst[a]
                    for b in range(_u(w)):
                        row[_u(pw) + b] = src[b]
                    for b in range(pw + w, wp):
                        dst[a, b] = zero


@njit(**_serial)
def im2col_flat(xp3, c0, cg, kh, kw, dh, dw, wp, m, cols, ones_row):
    """cols[(c*kh+i)*kw+j, n*M + q] = xp3[n, c0+c, q + i*dh*Wp + j*dw] (stride 1).

    With ``ones_row`` the last row is all ones: it multiplies the bias column of [W | b], so the
    GEMM adds the bias too.
    """
    for n in range(xp3.shape[0]):
        dst = _u(n * m)
        for c in range(cg):
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    off = _u(i * dh * wp + j * dw)
                    for q in range(_u(m)):
                        cols[r, dst + q] = xp3[n, c0 + c, off + q]
    if ones_row:
        one = cols.dtype.type(1)
        last = cols.shape[0] - 1
        for q in range(cols.shape[1]):
            cols[last, q] = one


@njit(**_serial)
def im2col_strided(xp, c0, cg, kh, kw, sh, sw, dh, dw, r0, r1, ow_n, cols, ones_row):
    """cols[(c*kh+i)*kw+j, n*L + (oh-r0)*W_out + ow] = xp[n, c0+c, oh*sh + i*dh, ow*sw + j*dw]
    for the output rows r0 <= oh < r1 (L = (r1-r0)*W_out columns per image)."""
    L = (r1 - r0) * ow_n
    for n in range(xp.shape[0]):
        for c in range(cg):
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    for oh in range(r0, r1):
                        dst = _u(n * L + (oh - r0) * ow_n)
                        ih = oh * sh + i * dh
                        jd, s = _u(j * dw), _u(sw)
                        for ow in range(_u(ow_n)):
                            cols[r, dst + ow] = xp[n, c0 + c, ih, ow * s + jd]
    if ones_row:
        one = cols.dtype.type(1)
        last = cols.shape[0] - 1
        for q in range(cols.shape[1]):
            cols[last, q] = one


@njit(**_serial)
def col2im_flat(cols, c0, cg, kh, kw, dh, dw, wp, m, gxp3):
    """The adjoint of im2col_flat: gxp3[n, c0+c] = sum of the column entries that read it."""
    zero = gxp3.dtype.type(0)
    for n in range(gxp3.shape[0]):
        src = _u(n * m)
        for c in range(cg):
            plane = gxp3[n, c0 + c]
            for q in range(_u(plane.shape[0])):
                plane[q] = zero
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    off = _u(i * dh * wp + j * dw)
                    for q in range(_u(m)):
                        plane[off + q] += cols[r, src + q]


@njit(**_serial)
def col2im_strided(cols, c0, cg, kh, kw, sh, sw, dh, dw, r0, r1, ow_n, gxp):
    """The adjoint of im2col_strided for the output rows r0 <= oh < r1: adds what those
    columns read into gxp, after zeroing its planes if r0 == 0 (the first block)."""
    L = (r1 - r0) * ow_n
    zero = gxp.dtype.type(0)
    for n in range(gxp.shape[0]):
        for c in range(cg):
            plane = gxp[n, c0 + c]
            if r0 == 0:
                for a in range(plane.shape[0]):
                    for b in range(plane.shape[1]):
                        plane[a, b] = zero
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    for oh in range(r0, r1):
                        src = _u(n * L + (oh - r0) * ow_n)
                        ih = oh * sh + i * dh
                        jd, s = _u(j * dw), _u(sw)
                        for ow in range(_u(ow_n)):
                            plane[ih, ow * s + jd] += cols[r, src + ow]


@njit(**_serial)
def unpad_into(gxp, n0, c0, cg, ph, pw, gx):
    """gx[n0+n, c0+c] = gxp[n, c0+c] without its padding border."""
    h, w = gx.shape[2], gx.shape[3]
    for n in range(gxp.shape[0]):
        for c in range(c0, c0 + cg):
            for a in range(h):
                src = gxp[n, c, ph + a]
                dst = gx[n0 + n, c, a]
                for b in range(_u(w)):
                    dst[b] = src[_u(pw) + b]


@njit(cache=True, inline="always")
def _flat_geometry(h, wd, kh, kw, ph, pw, dh, dw):
    """(pitch, plane, M) of the flat layout of a stride-1 convolution's padded planes: floats
    from one padded row to the next, per plane, and columns per image (output rows ``pitch``
    apart). The rows share their padding columns where pw <= dw*(kW-1): each row is [pw zeros |
    W values], the right-hand taps of a row's last outputs read the next row's leading zeros,
    and pw more zeros follow the last row; so every output row has pw fewer junk columns (3x3
    on 7x7 maps: 55 columns per image instead of 61, for 49 outputs)."""
    hp = h + 2 * ph
    oh_n, ow_n = hp - dh * (kh - 1), wd + 2 * pw - dw * (kw - 1)
    shared = pw <= dw * (kw - 1)
    pitch = wd + pw if shared else wd + 2 * pw
    plane = hp * pitch + (pw if shared else 0)
    return pitch, plane, (oh_n - 1) * pitch + ow_n


@njit(**_serial)
def pad_flat_into(x, n0, n1, ph, pw, pitch, xq3):
    """xq3[n-n0, c] = x[n, c] in the flat padded layout of _flat_geometry. Writes the values
    only: the padding must be zero already (it is never written)."""
    h, wd = x.shape[2], x.shape[3]
    for n in range(n0, n1):
        for c in range(x.shape[1]):
            dst = xq3[n - n0, c]
            for r in range(h):
                d0 = _u((r + ph) * pitch + pw)
                row = x[n, c, r]
                for s in range(_u(wd)):
                    dst[d0 + s] = row[s]


@njit(**_serial)
def unpad_flat_into(gxq3, n0, c0, cg, ph, pw, pitch, gx):
    """gx[n0+n, c] for c in c0 .. c0+cg-1 from the flat padded layout (what lands on the
    padding is dropped)."""
    h, wd = gx.shape[2], gx.shape[3]
    for n in range(gxq3.shape[0]):
        for c in range(c0, c0 + cg):
            src = gxq3[n, c]
            for r in range(h):
                s0 = _u((r + ph) * pitch + pw)
                row = gx[n0 + n, c, r]
                for s in range(_u(wd)):
                    row[s] = src[s0 + s]


@njit(cache=True, inline="always")
def _phase_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw):
    """(Wq, Q, plane, M) of the phase layout of a strided convolution's padded planes (see
    phases_into): phase-plane width and size, floats per channel (sh*sw phase planes), and
    columns per image (output rows Wq apart)."""
    hp, wp = h + 2 * ph, wd + 2 * pw
    oh_n = (hp - dh * (kh - 1) - 1) // sh + 1
    ow_n = (wp - dw * (kw - 1) - 1) // sw + 1
    hq, wq = (hp + sh - 1) // sh, (wp + sw - 1) // sw
    return wq, hq * wq, sh * sw * hq * wq, (oh_n - 1) * wq + ow_n


@njit(cache=True, inline="always")
def _pair_phases(a, sh, pw, q_sz, wq):
    """With a column stride of 2: where padded row ``a``'s even input columns (s = 0, 2, ...)
    and odd ones start in its phase planes (s + pw even or odd picks the column phase)."""
    base = (a % sh) * 2 * q_sz + (a // sh) * wq
    pe = pw % 2  # the column phase of the even input columns
    return (_u(base + pe * q_sz) + _u(pw // 2), _u(base + (1 - pe) * q_sz) + _u((pw + 1) // 2))


@njit(**_serial)
def phases_into(x, n, kh, kw, sh, sw, ph, pw, dh, dw, xq):
    """Image n of x, padded, split into its stride phases: padded pixel (a, b) goes to phase
    plane (a % sh, b % sw) at (a // sh, b // sw), so that with stride (sh, sw) the input of tap
    (i, j) for all outputs is one phase plane shifted by (i*dh // sh, j*dw // sw): a contiguous
    flat slice, as in the stride-1 flat layout. Only the phases some tap reads are written
    (with sw = 2, all); xq[c] holds channel c's sh*sw planes; the padding must be zero
    already."""
    h, wd = x.shape[2], x.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    hq, wq = (hp + sh - 1) // sh, (wp + sw - 1) // sw
    q_sz = hq * wq
    if sw == 2:
        # each input row once, its column pairs split between the two column phases in one
        # contiguous loop (2.8x faster on 16 channels of 32x32 than phase by phase; phases no
        # tap reads are written too, harmlessly)
        for c in range(x.shape[1]):
            dst = xq[c]
            for r in range(h):
                row = x[n, c, r]
                de, do = _pair_phases(r + ph, sh, pw, q_sz, wq)
                for k in range(_u(wd // 2)):
                    dst[de + k] = row[_u(2) * k]
                    dst[do + k] = row[_u(2) * k + _u(1)]
                if wd % 2:
                    dst[de + _u(wd // 2)] = row[wd - 1]
        return
    for pi in range(sh):
        used_i = False
        for i in range(kh):
            used_i = used_i or (i * dh) % sh == pi
        for pj in range(sw):
            used = False
            for j in range(kw):
                used = used or (j * dw) % sw == pj
            if not (used and used_i):
                continue
            # phase columns qc with 0 <= qc*sw + pj - pw < W
            c_lo = (pw - pj + sw - 1) // sw if pw > pj else 0
            c_hi = min(wq, (wd + pw - pj + sw - 1) // sw)
            s0, st = _u(c_lo * sw + pj - pw), _u(sw)
            for c in range(x.shape[1]):
                dst = xq[c]
                for qr in range(hq):
                    r = qr * sh + pi - ph
                    if r < 0 or r >= h:
                        continue
                    row = x[n, c, r]
                    d0 = _u((pi * sw + pj) * q_sz + qr * wq + c_lo)
                    # unsigned indices: no wrap-around guards, so the copy vectorises
                    for k in range(_u(c_hi - c_lo)):
                        dst[d0 + k] = row[s0 + k * st]


@njit(cache=True, inline="always")
def _implicit_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw):
    """(pitch, Q, plane, M) of the planes the implicit GEMMs read: the flat layout at stride 1
    (one plane per channel, Q = plane), else the stride phases (sh*sw planes of Q floats)."""
    if sh > 1 or sw > 1:
        return _phase_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    pitch, plane, m = _flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    return pitch, plane, plane, m


@njit(cache=True, inline="always")
def _tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch):
    """Where tap (i, j) starts reading in a channel's planes (_implicit_geometry): its phase
    plane, shifted by (i*dh // sh) rows and (j*dw // sw) columns."""
    ai, bj = (tap // kw) * dh, (tap % kw) * dw
    return ((ai % sh) * sw + bj % sw) * q_sz + (ai // sh) * pitch + bj // sw


@njit(cache=True, inline="always")
def _image_planes(x, xf, xp, n, kh, kw, sh, sw, ph, pw, dh, dw, pitch, plane):
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


@njit(cache=True, inline="always")
def _output_positions(m, pitch, ow_n):
    """For each of the M columns of a flat (pitch-wide) layout, its position in the output
    plane, or -1 for a junk column."""
    src = np.empty(m, dtype=np.int64)
    for q in range(m):
        r, s = q // pitch, q % pitch
        src[q] = r * ow_n + s if s < ow_n else -1
    return src


@njit(**_serial)
def unphase_into(xq, n, sh, sw, ph, pw, gx):
    """gx[n] from its padded stride phases in xq (n_in, sh*sw phase planes), the inverse of
    phases_into (what lands on the padding is dropped)."""
    h, wd = gx.shape[2], gx.shape[3]
    hq, wq = (h + 2 * ph + sh - 1) // sh, (wd + 2 * pw + sw - 1) // sw
    q_sz = hq * wq
    if sw == 2:  # column pairs from the two column phases in one loop (see phases_into)
        for c in range(gx.shape[1]):
            src = xq[c]
            for r in range(h):
                row = gx[n, c, r]
                de, do = _pair_phases(r + ph, sh, pw, q_sz, wq)
                for k in range(_u(wd // 2)):
                    row[_u(2) * k] = src[de + k]
                    row[_u(2) * k + _u(1)] = src[do + k]
                if wd % 2:
                    row[wd - 1] = src[de + _u(wd // 2)]
        return
    for c in range(gx.shape[1]):
        src = xq[c]
        for r in range(h):
            a = r + ph
            row = gx[n, c, r]
            for pj in range(sw):
                # columns s with (s + pw) % sw == pj: s = s0, s0 + sw, ...
                s0 = (pj - pw) % sw
                if s0 >= wd:
                    continue
                q0 = _u(((a % sh) * sw + pj) * q_sz + (a // sh) * wq + (s0 + pw) // sw)
                st, s0u = _u(sw), _u(s0)
                for k in range(_u((wd - s0 + sw - 1) // sw)):
                    row[s0u + k * st] = src[q0 + k]


@njit(**_serial)
def columns_to_nchw(out, n0, o0, pitch, m, oh_n, ow_n, y3):
    """y3[n0+n, o0+o, oh*W_out+ow] = out[o, n*M + oh*pitch + ow] (pitch = Wp or W_out)."""
    n_img = out.shape[1] // m
    for n in range(n_img):
        for o in range(out.shape[0]):
            for oh in range(oh_n):
                src = _u(n * m + oh * pitch)
                dst = _u(oh * ow_n)
                for ow in range(_u(ow_n)):
                    y3[n0 + n, o0 + o, dst + ow] = out[o, src + ow]


@njit(**_serial)
def nchw_to_columns(gy3, n0, n_img, o0, pitch, m, oh_n, ow_n, out):
    """The inverse of columns_to_nchw; the junk columns between output rows become zeros."""
    zero = out.dtype.type(0)
    for n in range(n_img):
        for o in range(out.shape[0]):
            for oh in range(oh_n):
                dst = _u(n * m + oh * pitch)
                src = _u(oh * ow_n)
                for ow in range(_u(ow_n)):
                    out[o, dst + ow] = gy3[n0 + n, o0 + o, src + ow]
                if oh < oh_n - 1:
                    for ow in range(ow_n, pitch):
                        out[o, dst + ow] = zero


@njit(**_opts)
def gemm_forward(x, w_aug, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, flat, chunk, ranges, y3):
    """im2col + GEMM forward: task t packs chunks of its images ranges[t] and multiplies them
    by [W | b] per group (the ones row of the columns adds the bias)."""
    n_img, n_in, h, wd = x.shape
    groups, og, kk1 = w_aug.shape
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    pitch, plane, m = _flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
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
                    im2col_strided(xp, g * cg, cg, kh, kw, sh, sw, dh, dw, _ZERO, oh_n, ow_n,
                                   cols, True)
                if dense and nb == 1:  # the product is this image's output already
                    gemm(False, False, w_aug[g], cols, 0, y3[a, g * og:(g + 1) * og])
                else:
                    out = out_buf[:og * nb * m].reshape((og, nb * m))
                    gemm(False, False, w_aug[g], cols, 0, out)
                    columns_to_nchw(out, a, g * og, pitch, m, oh_n, ow_n, y3)


@njit(**_opts)
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


@njit(**_opts)
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
    pitch, plane, m = _flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
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
                        im2col_strided(xp, g * cg, cg, kh, kw, sh, sw, dh, dw, _ZERO, oh_n,
                                       ow_n, cols, True)
                    # [dW | db]^T += cols @ dY^T: 1.5-2x the speed of dY @ cols^T in OpenBLAS
                    gemm(False, True, cols, gyt, 1, parts[t, g])
                elif need_bias:
                    for o in range(og):
                        acc = zero
                        for q in range(_u(nb * m)):
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
                        col2im_strided(gcols, g * cg, cg, kh, kw, sh, sw, dh, dw, _ZERO, oh_n,
                                       ow_n, gxp)
                        if padded:
                            unpad_into(gxp, a, g * cg, cg, ph, pw, gx)


@njit(**_opts)
def gemm_backward_input(gy3, w2, n_in, h, wd, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, flat,
                        chunk, ranges, gx):
    """The input gradient alone, as :func:`gemm_backward` computes it: its common use (weight
    gradients mostly have kernels of their own), in a kernel of its own, because a first run
    compiles this path alone in a third of gemm_backward's time."""
    groups, og, kk = w2.shape
    cg = n_in // groups
    hp, wp = h + 2 * ph, wd + 2 * pw
    pitch, plane, m = _flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
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
                    col2im_strided(gcols, g * cg, cg, kh, kw, sh, sw, dh, dw, _ZERO, oh_n,
                                   ow_n, gxp)
                    if padded:
                        unpad_into(gxp, a, g * cg, cg, ph, pw, gx)


@njit(**_opts)
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


@njit(**_opts)
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
    pitch, plane, m = _flat_geometry(h, wd, kh, kw, ph, pw, dh, dw)
    # the output's rows, from dY: x may have rows that no output reads (conv_transpose2d's
    # output_padding)
    m = (oh_n - 1) * pitch + ow_n
    if not flat:
        pitch, plane, m = ow_n, hp * wp, oh_n * ow_n
    padded = ph > 0 or pw > 0
    nq_max = block if flat else block * ow_n
    zero, one = x.dtype.type(0), x.dtype.type(1)
    src = _output_positions(m, pitch, ow_n)  # for the flat layout
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
                                    off = _u(i * dh * pitch + j * dw + q0)
                                    for q in range(_u(nq)):
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


@njit(**_opts)
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
    pitch, q_sz, plane, m = _implicit_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    # the output's rows, from dY: x may have rows that no output reads (conv_transpose2d's
    # output_padding)
    m = (oh_n - 1) * pitch + ow_n
    copied = ph > 0 or pw > 0 or sh > 1 or sw > 1  # padded, or split into its stride phases
    zero = x.dtype.type(0)
    xf = x.reshape(x.size)
    src = _output_positions(m, pitch, ow_n)
    for t in prange(ranges.shape[0]):
        xp = np.zeros(n_in * plane if copied else 1, dtype=x.dtype)  # borders stay zero
        gyt = np.empty((m, og), dtype=x.dtype)
        for n in range(ranges[t, 0], ranges[t, 1]):
            xs, base = _image_planes(x, xf, xp, n, kh, kw, sh, sw, ph, pw, dh, dw, pitch, plane)
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
                    shift = _tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch)
                    gemm_at(False, False, cg, og, m, xs, base + g * cg * plane + shift, plane,
                             gyt, 0, og, 1, parts[t, g], tap * og, taps * og)


@njit(**_opts)
def implicit_grad_input(gy3, wt, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, ranges, gx):
    """The input gradient of a strided convolution with no packed columns, on the stride
    phases of each image's padded gradient (see phases_into): tap (i, j) adds
    ``W_tap^T (C_g x O_g) @ dY`` (dY laid out with the phase planes' row pitch, zeros on the
    junk columns) into one phase plane at that tap's shift, a product written in place;
    then the phases go back to NCHW. ``wt`` is (G, kH*kW, O_g, C_g); dY has (oh_n, ow_n)
    pixels (gx may have rows no output reaches: conv_transpose2d's output_padding)."""
    n_img, n_in, h, wd = gx.shape
    groups, taps, og, cg = wt.shape
    pitch, q_sz, plane, m = _phase_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
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
                        d0, s0 = _u(o * m + r * pitch), _u(r * ow_n)
                        for c in range(_u(ow_n)):
                            gyf[d0 + c] = src[s0 + c]
                for tap in range(taps):
                    shift = _tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch)
                    gemm_at(True, False, cg, m, og, wt, (g * taps + tap) * og * cg, cg, gyf, 0,
                             m, 1, gxq, g * cg * plane + shift, plane)
            unphase_into(gxq.reshape((n_in, plane)), n, sh, sw, ph, pw, gx)


@njit(**_opts)
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
    unless transposed). The padded rows share their padding columns (see _flat_geometry).

    With a stride (sh, sw) > 1 each image is first split into its stride phases (see
    phases_into): tap (i, j) then reads one phase plane, shifted, in place just the same."""
    n_img, n_in, h, wd = x.shape
    groups, taps, og, cg = wt.shape
    if trans:
        cg, og = og, cg
    n_out = groups * og
    oh_n = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow_n = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    pitch, q_sz, plane, m = _implicit_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw)
    copied = ph > 0 or pw > 0 or sh > 1 or sw > 1  # padded, or split into its stride phases
    dense = pitch == ow_n  # no junk columns
    zero = x.dtype.type(0)
    xf, yf = x.reshape(x.size), y3.reshape(y3.size)
    direct = dense and not trans  # the product is this image's output already
    for t in prange(ranges.shape[0]):
        xp = np.zeros(n_in * plane if copied else 1, dtype=x.dtype)  # borders stay zero
        out = np.empty(1 if direct else og * m, dtype=x.dtype)
        for n in range(ranges[t, 0], ranges[t, 1]):
            src, base = _image_planes(x, xf, xp, n, kh, kw, sh, sw, ph, pw, dh, dw, pitch, plane)
            for g in range(groups):
                res, r_off = out, 0
                if direct:
                    res, r_off = yf, (n * n_out + g * og) * m
                for tap in range(taps):
                    shift = _tap_offset(tap, kw, sh, sw, dh, dw, q_sz, pitch)
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
                            for q in range(_u(m)):
                                dst[q] += b
                    else:
                        for r in range(oh_n):
                            src_q = _u(o * m + r * pitch)
                            d0 = _u(r * ow_n)
                            for s in range(_u(ow_n)):
                                dst[d0 + s] = out[src_q + s] + b


@njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})
def bias_grad(gy, db):
    """db[o] = sum over n, p of gy[n, o, p] (gy viewed as N, C, L); blocked per image."""
    n_img, n_out, L = gy.shape
    for o in prange(n_out):
        total = gy.dtype.type(0)
        for n in range(n_img):
            part = gy.dtype.type(0)
            row = gy[n, o]
            for p in range(_u(L)):
                part += row[p]
            total += part
        db[o] = total


# ---------------------------------------------------------------------- direct kernels
@njit(**_opts)
def direct_forward(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, groups, y):
    """y[n,o] = b[o] + sum_{ci,i,j} w[o,ci,i,j] * x[n, g*C_g+ci, oh*sh-ph+i*dh, ow*sw-pw+j*dw]."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = y.shape[2], y.shape[3]
    for task in prange(n_img * n_out):
        n = task // n_out
        o = task - n * n_out
        g = o // og
        plane = y[n, o]
        bv = bias[o] if has_bias else y.dtype.type(0)
        for a in range(oh_n):
            for b in range(ow_n):
                plane[a, b] = bv
        for ci in range(cg):
            c = g * cg + ci
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, ci, i, j]
                    off_w = j * dw - pw
                    lo, hi = _valid_range(off_w, sw, wd, ow_n)
                    base, s, lo_u = _u(lo * sw + off_w), _u(sw), _u(lo)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        src = x[n, c, ih]
                        dst = plane[oh]
                        if sw == 1:  # contiguous: vectorises
                            for q in range(_u(hi - lo)):
                                dst[lo_u + q] += wv * src[base + q]
                        else:
                            for q in range(_u(hi - lo)):
                                dst[lo_u + q] += wv * src[base + q * s]


@njit(**_opts)
def direct_grad_input(gy, w, sh, sw, ph, pw, dh, dw, groups, gx):
    """gx[n,c] = sum over the outputs that read it; one task per input plane (its only writer)."""
    n_img, n_in, h, wd = gx.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    zero = gx.dtype.type(0)
    for task in prange(n_img * n_in):
        n = task // n_in
        c = task - n * n_in
        g = c // cg
        ci = c - g * cg
        plane = gx[n, c]
        for a in range(h):
            for b in range(wd):
                plane[a, b] = zero
        for o in range(g * og, (g + 1) * og):
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, ci, i, j]
                    off_w = j * dw - pw
                    lo, hi = _valid_range(off_w, sw, wd, ow_n)
                    base, s, lo_u = _u(lo * sw + off_w), _u(sw), _u(lo)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        src = gy[n, o, oh]
                        dst = plane[ih]
                        if sw == 1:
                            for q in range(_u(hi - lo)):
                                dst[base + q] += wv * src[lo_u + q]
                        else:
                            for q in range(_u(hi - lo)):
                                dst[base + q * s] += wv * src[lo_u + q]


@njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})  # reassoc: vector sums
def direct_grad_weight(gy, x, sh, sw, ph, pw, dh, dw, groups, gw):
    """gw[o,ci,i,j] = sum_{n,oh,ow} gy[n,o,oh,ow] * x[n, c, ...]; one task per (o, ci)."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = gw.shape
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    for task in prange(n_out * cg):
        o = task // cg
        ci = task - o * cg
        c = (o // og) * cg + ci
        for i in range(kh):
            for j in range(kw):
                off_w = j * dw - pw
                lo, hi = _valid_range(off_w, sw, wd, ow_n)
                base, s, lo_u = _u(lo * sw + off_w), _u(sw), _u(lo)
                total = gw.dtype.type(0)
                for n in range(n_img):
                    part = gw.dtype.type(0)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        g_row = gy[n, o, oh]
                        x_row = x[n, c, ih]
                        acc = gw.dtype.type(0)  # a fresh accumulator per row vectorises
                        if sw == 1:
                            for q in range(_u(hi - lo)):
                                acc += g_row[lo_u + q] * x_row[base + q]
                        else:
                            for q in range(_u(hi - lo)):
                                acc += g_row[lo_u + q] * x_row[base + q * s]
                        part += acc
                    total += part
                gw[o, ci, i, j] = total


# ---------------------------------------------------------------------- flat direct kernels
# Stride 1, few channels (LeNet-sized layers): one task per image, no im2col. The image is
# padded into a small per-task plane; with the "flat" indexing above, output unit q reads tap
# (i, j) at q + i*dh*Wp + j*dw, so each tap is one long contiguous multiply-add over the whole
# plane (M = (OH-1)*Wp + OW positions; the Wp-OW junk columns per row are never read back,
# and are kept at zero in gradients so that they add nothing).


@njit(**_serial)
def _flat_taps4(rows, w, ci0, cg, kh, kw, dh, dw, wp, o0, m, a0, a1, a2, a3):
    """a_r[q] += sum over channels and taps of w[o0+r, ci, i, j] * rows[ci0+ci, q + off]:
    four output channels and three (or two) taps of a kernel row per pass, so each accumulator
    load/store carries up to twelve multiply-adds (the passes are store-bound otherwise)."""
    for ci in range(cg):
        row = rows[ci0 + ci]
        for i in range(kh):
            j = 0
            while j < kw:
                off = _u(i * dh * wp + j * dw)
                if j + 3 <= kw:
                    d1, d2 = _u(dw), _u(2 * dw)
                    w00, w10 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    w20, w30 = w[o0 + 2, ci, i, j], w[o0 + 3, ci, i, j]
                    w01, w11 = w[o0, ci, i, j + 1], w[o0 + 1, ci, i, j + 1]
                    w21, w31 = w[o0 + 2, ci, i, j + 1], w[o0 + 3, ci, i, j + 1]
                    w02, w12 = w[o0, ci, i, j + 2], w[o0 + 1, ci, i, j + 2]
                    w22, w32 = w[o0 + 2, ci, i, j + 2], w[o0 + 3, ci, i, j + 2]
                    for q in range(_u(m)):
                        u = row[off + q]
                        v = row[off + d1 + q]
                        t = row[off + d2 + q]
                        a0[q] += w00 * u + w01 * v + w02 * t
                        a1[q] += w10 * u + w11 * v + w12 * t
                        a2[q] += w20 * u + w21 * v + w22 * t
                        a3[q] += w30 * u + w31 * v + w32 * t
                    j += 3
                elif j + 2 <= kw:
                    d1 = _u(dw)
                    w00, w10 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    w20, w30 = w[o0 + 2, ci, i, j], w[o0 + 3, ci, i, j]
                    w01, w11 = w[o0, ci, i, j + 1], w[o0 + 1, ci, i, j + 1]
                    w21, w31 = w[o0 + 2, ci, i, j + 1], w[o0 + 3, ci, i, j + 1]
                    for q in range(_u(m)):
                        u = row[off + q]
                        v = row[off + d1 + q]
                        a0[q] += w00 * u + w01 * v
                        a1[q] += w10 * u + w11 * v
                        a2[q] += w20 * u + w21 * v
                        a3[q] += w30 * u + w31 * v
                    j += 2
                else:
                    w0, w1 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    w2, w3 = w[o0 + 2, ci, i, j], w[o0 + 3, ci, i, j]
                    for q in range(_u(m)):
                        v = row[off + q]
                        a0[q] += w0 * v
                        a1[q] += w1 * v
                        a2[q] += w2 * v
                        a3[q] += w3 * v
                    j += 1


@njit(**_serial)
def _flat_taps2(rows, w, ci0, cg, kh, kw, dh, dw, wp, o0, m, a0, a1):
    """Two output channels (LeNet's conv1 has six: a block of four, then this), three taps of
    a kernel row per pass."""
    for ci in range(cg):
        row = rows[ci0 + ci]
        for i in range(kh):
            j = 0
            while j < kw:
                off = _u(i * dh * wp + j * dw)
                if j + 3 <= kw:
                    d1, d2 = _u(dw), _u(2 * dw)
                    w00, w01, w02 = w[o0, ci, i, j], w[o0, ci, i, j + 1], w[o0, ci, i, j + 2]
                    w10, w11 = w[o0 + 1, ci, i, j], w[o0 + 1, ci, i, j + 1]
                    w12 = w[o0 + 1, ci, i, j + 2]
                    for q in range(_u(m)):
                        u = row[off + q]
                        v = row[off + d1 + q]
                        t = row[off + d2 + q]
                        a0[q] += w00 * u + w01 * v + w02 * t
                        a1[q] += w10 * u + w11 * v + w12 * t
                    j += 3
                else:
                    w0, w1 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    for q in range(_u(m)):
                        v = row[off + q]
                        a0[q] += w0 * v
                        a1[q] += w1 * v
                    j += 1


@njit(**_serial)
def _flat_taps1(rows, w, ci0, cg, kh, kw, dh, dw, wp, o, m, acc):
    """One output channel (depthwise layers, the channels left over from blocks of four): three
    taps of a kernel row per pass."""
    for ci in range(cg):
        row = rows[ci0 + ci]
        for i in range(kh):
            j = 0
            while j < kw:
                off = _u(i * dh * wp + j * dw)
                if j + 3 <= kw:
                    d1, d2 = _u(dw), _u(2 * dw)
                    w0, w1, w2 = w[o, ci, i, j], w[o, ci, i, j + 1], w[o, ci, i, j + 2]
                    for q in range(_u(m)):
                        acc[q] += w0 * row[off + q] + w1 * row[off + d1 + q] + \
                            w2 * row[off + d2 + q]
                    j += 3
                else:
                    wv = w[o, ci, i, j]
                    for q in range(_u(m)):
                        acc[q] += wv * row[off + q]
                    j += 1


@njit(**_opts)
def flat_forward(x, w, bias, has_bias, ph, pw, dh, dw, groups, y):
    """y = conv2d(x, w) + b, stride 1; parallel over images."""
    n_img, n_in, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = y.shape[2], y.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = (oh_n - 1) * wp + ow_n
    zero = y.dtype.type(0)
    for n in prange(n_img):
        xp = np.zeros((n_in, hp * wp), dtype=x.dtype)
        for c in range(n_in):
            for a in range(h):
                dst = _u((a + ph) * wp + pw)
                for b in range(_u(wd)):
                    xp[c, dst + b] = x[n, c, a, b]
        acc = np.empty((4, m), dtype=y.dtype)
        for g in range(groups):
            o = g * og
            while o < (g + 1) * og:
                left = (g + 1) * og - o
                nb = 4 if left >= 4 else (2 if left >= 2 else 1)
                for r in range(nb):
                    bv = bias[o + r] if has_bias else zero
                    for q in range(_u(m)):
                        acc[r, q] = bv
                if nb == 4:
                    _flat_taps4(xp, w, g * cg, cg, kh, kw, dh, dw, wp, o, m,
                                acc[0], acc[1], acc[2], acc[3])
                elif nb == 2:
                    _flat_taps2(xp, w, g * cg, cg, kh, kw, dh, dw, wp, o, m, acc[0], acc[1])
                else:
                    _flat_taps1(xp, w, g * cg, cg, kh, kw, dh, dw, wp, o, m, acc[0])
                for r in range(nb):
                    for a in range(oh_n):
                        src = _u(a * wp)
                        for b in range(_u(ow_n)):
                            y[n, o + r, a, b] = acc[r, src + b]
                o += nb


@njit(**_opts)
def flat_grad_input(gy, w, ph, pw, dh, dw, groups, gx):
    """conv2d's input gradient by scattering, one tap at a time (4, 2 or 1 input channels per
    pass); parallel over images, each writing its own. The fallback of :func:`_flat_input`."""
    n_img, n_in, h, wd = gx.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = (oh_n - 1) * wp + ow_n
    zero = gx.dtype.type(0)
    for n in prange(n_img):
        gyf = np.zeros((n_out, m), dtype=gy.dtype)
        for o in range(n_out):
            for a in range(oh_n):
                dst = _u(a * wp)
                for b in range(_u(ow_n)):
                    gyf[o, dst + b] = gy[n, o, a, b]
        planes = np.empty((4, hp * wp), dtype=gx.dtype)
        for g in range(groups):
            ci = 0
            while ci < cg:
                nb = 4 if cg - ci >= 4 else (2 if cg - ci >= 2 else 1)
                for r in range(nb):
                    for q in range(_u(hp * wp)):
                        planes[r, q] = zero
                p0, p1, p2, p3 = planes[0], planes[1], planes[2], planes[3]
                for o in range(g * og, (g + 1) * og):
                    src = gyf[o]
                    for i in range(kh):
                        for j in range(kw):
                            off = _u(i * dh * wp + j * dw)
                            if nb == 4:
                                w0, w1 = w[o, ci, i, j], w[o, ci + 1, i, j]
                                w2, w3 = w[o, ci + 2, i, j], w[o, ci + 3, i, j]
                                for q in range(_u(m)):
                                    v = src[q]
                                    p0[off + q] += w0 * v
                                    p1[off + q] += w1 * v
                                    p2[off + q] += w2 * v
                                    p3[off + q] += w3 * v
                            elif nb == 2:
                                w0, w1 = w[o, ci, i, j], w[o, ci + 1, i, j]
                                for q in range(_u(m)):
                                    v = src[q]
                                    p0[off + q] += w0 * v
                                    p1[off + q] += w1 * v
                            else:
                                wv = w[o, ci, i, j]
                                for q in range(_u(m)):
                                    p0[off + q] += wv * src[q]
                for r in range(nb):
                    c = g * cg + ci + r
                    for a in range(h):
                        s0 = _u((a + ph) * wp + pw)
                        for b in range(_u(wd)):
                            gx[n, c, a, b] = planes[r, s0 + b]
                ci += nb


@njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})  # reassoc: vector sums
def flat_grad_params(gy, x, ph, pw, dh, dw, groups, ranges, gw_parts, gb_parts):
    """Per-task partial weight and bias gradients, stride 1: task t sums over the images
    ranges[t, 0]:ranges[t, 1] into gw_parts[t] and gb_parts[t] (summed by the caller)."""
    n_img, n_in, h, wd = x.shape
    n_out, cg, kh, kw = gw_parts.shape[1:]
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = (oh_n - 1) * wp + ow_n
    for t in prange(ranges.shape[0]):
        xp = np.zeros((n_in, hp * wp), dtype=x.dtype)
        gyf = np.zeros((n_out, m), dtype=gy.dtype)  # junk columns stay zero
        gw = gw_parts[t]
        gb = gb_parts[t]
        for n in range(ranges[t, 0], ranges[t, 1]):
            for c in range(n_in):
                for a in range(h):
                    dst = _u((a + ph) * wp + pw)
                    for b in range(_u(wd)):
                        xp[c, dst + b] = x[n, c, a, b]
            for o in range(n_out):
                total = gy.dtype.type(0)
                for a in range(oh_n):
                    dst = _u(a * wp)
                    for b in range(_u(ow_n)):
                        v = gy[n, o, a, b]
                        gyf[o, dst + b] = v
                        total += v
                gb[o] += total
            o = _ZERO  # an int64, not Literal[int](0): one specialisation of the helpers
            while o < n_out:
                g = o // og
                four = o + 4 <= (g + 1) * og  # four outputs of one group share the input loads
                for ci in range(cg):
                    row = xp[g * cg + ci]
                    for i in range(kh):
                        j = _ZERO
                        while j < kw:
                            if four and j + 3 <= kw:
                                _grad_w_block(gyf, row, o, ci, i, j, dh, dw, wp, m, gw)
                                j += 3
                            elif four and j + 2 <= kw:
                                _grad_w_block2(gyf, row, o, ci, i, j, dh, dw, wp, m, gw)
                                j += 2
                            else:
                                off = _u(i * dh * wp + j * dw)
                                for r in range(4 if four else 1):
                                    src = gyf[o + r]
                                    acc = gw.dtype.type(0)
                                    for q in range(_u(m)):
                                        acc += src[q] * row[off + q]
                                    gw[o + r, ci, i, j] += acc
                                j += 1
                o += 4 if four else 1


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _grad_w_block(gyf, row, o, ci, i, j, dh, dw, wp, m, gw):
    """gw[o+r, ci, i, j+t] += sum_q gyf[o+r, q] * row[off_t + q] for r < 4, t < 3: twelve sums
    in one pass (7 loads per 12 multiply-adds instead of 2 per 1)."""
    off = _u(i * dh * wp + j * dw)
    d1, d2 = _u(dw), _u(2 * dw)
    g0, g1, g2, g3 = gyf[o], gyf[o + 1], gyf[o + 2], gyf[o + 3]
    z = gw.dtype.type(0)
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = z
    for q in range(_u(m)):
        a, b, c = row[off + q], row[off + d1 + q], row[off + d2 + q]
        e0, e1, e2, e3 = g0[q], g1[q], g2[q], g3[q]
        s00 += e0 * a
        s01 += e0 * b
        s02 += e0 * c
        s10 += e1 * a
        s11 += e1 * b
        s12 += e1 * c
        s20 += e2 * a
        s21 += e2 * b
        s22 += e2 * c
        s30 += e3 * a
        s31 += e3 * b
        s32 += e3 * c
    gw[o, ci, i, j] += s00
    gw[o, ci, i, j + 1] += s01
    gw[o, ci, i, j + 2] += s02
    gw[o + 1, ci, i, j] += s10
    gw[o + 1, ci, i, j + 1] += s11
    gw[o + 1, ci, i, j + 2] += s12
    gw[o + 2, ci, i, j] += s20
    gw[o + 2, ci, i, j + 1] += s21
    gw[o + 2, ci, i, j + 2] += s22
    gw[o + 3, ci, i, j] += s30
    gw[o + 3, ci, i, j + 1] += s31
    gw[o + 3, ci, i, j + 2] += s32


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _grad_w_block2(gyf, row, o, ci, i, j, dh, dw, wp, m, gw):
    """As :func:`_grad_w_block` for two taps (the tail of a 5-wide kernel row): eight sums."""
    off = _u(i * dh * wp + j * dw)
    d1 = _u(dw)
    g0, g1, g2, g3 = gyf[o], gyf[o + 1], gyf[o + 2], gyf[o + 3]
    z = gw.dtype.type(0)
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = z
    for q in range(_u(m)):
        a, b = row[off + q], row[off + d1 + q]
        e0, e1, e2, e3 = g0[q], g1[q], g2[q], g3[q]
        s00 += e0 * a
        s01 += e0 * b
        s10 += e1 * a
        s11 += e1 * b
        s20 += e2 * a
        s21 += e2 * b
        s30 += e3 * a
        s31 += e3 * b
    gw[o, ci, i, j] += s00
    gw[o, ci, i, j + 1] += s01
    gw[o + 1, ci, i, j] += s10
    gw[o + 1, ci, i, j + 1] += s11
    gw[o + 2, ci, i, j] += s20
    gw[o + 2, ci, i, j + 1] += s21
    gw[o + 3, ci, i, j] += s30
    gw[o + 3, ci, i, j + 1] += s31


# ---------------------------------------------------------------------- orchestration
def output_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _use_direct(cg, og, stride, n_img, n_threads, junk):
    """Depthwise-like groups (one input channel per group, few outputs): a GEMM would be a
    single row, so direct loops win, except at stride 1, where the flat kernels run the same
    taps as long contiguous passes (1.7-2x faster: forward, input and weight gradients)."""
    return cg == 1 and og <= 2 and not (stride == (1, 1) and n_img >= n_threads and junk <= 1.2)


# When the flat direct kernels beat im2col + GEMM (stride 1), measured on the 2-core development
# machine with a Numba kernel before each call, as inside a training step. Their inner loops
# carry four channels and three taps per pass over the padded plane, junk columns included
# (M / (OH*OW): 1.07 for 28x28 maps with padding 1, 1.36 for LeNet's conv2 on 14x14 maps):
# * forward: up to 16x16 channel pairs with little junk (ResNet-mini 16->16 at 28x28: 1.26x
#   faster than the GEMM path; LeNet conv1 1.6x); the GEMM path wins on 32->32 (1.15x) and on
#   LeNet's conv2 (1.15x, its junk);
# * input gradient (a forward convolution of the output gradient, see _flat_input): up to
#   16x16 pairs with channels in fours or one (16->16 1.1x, depthwise 1.6x faster than its
#   direct loops); the GEMM path wins on 32->32 (1.4x) and
#   LeNet's conv2 (6 input channels: 2.1x at batch 64, 2.8x at 256);
# * weight gradient: likewise (16->16 1.3x faster, LeNet's conv1 2x); the GEMM path (which
#   computes [dW | db]^T = columns @ dY^T) wins on 32->32 (1.3x) and LeNet's conv2 (1.3x).
def _flat_junk(x_shape, w_shape, padding, dilation):
    """M / (OH*OW) of the flat layout: the share of wasted positions."""
    (ph, pw), (dh, dw) = padding, dilation
    h, wd = x_shape[2] + 2 * ph, x_shape[3] + 2 * pw
    oh, ow = h - dh * (w_shape[2] - 1), wd - dw * (w_shape[3] - 1)
    return ((oh - 1) * wd + ow) / max(oh * ow, 1)


def _use_flat(stride, cg, og, kh, kw, n_img, n_threads, junk):
    return (stride == (1, 1) and n_img >= n_threads and cg * kh * kw <= 288 and og * cg <= 256
            and junk <= 1.2)


def _use_flat_input(stride, cg, og, kh, kw, n_img, n_threads):
    return (stride == (1, 1) and n_img >= n_threads and max(cg, og) * kh * kw <= 400
            and og * cg <= 256 and (cg % 4 == 0 or cg == 1))


def _flat_input(gy, w, ph, pw, dh, dw, groups, gx):
    """The input gradient of a stride-1 convolution is itself a stride-1 convolution of the
    output gradient with the kernel flipped and its channel axes swapped (per group), padded by
    d*(k-1) - p: the forward kernel, with its multi-tap blocks, does it 1.3-3x faster than
    scattering. With more padding than d*(k-1) (rare), or rows that no output reaches, the
    scatter kernel does it."""
    n_out, cg, kh, kw = w.shape
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    # exact: every input row and column is reached by some output (not so for the rows that
    # conv_transpose2d's output_padding adds)
    exact = (gx.shape[2] == gy.shape[2] + 2 * qh - dh * (kh - 1)
             and gx.shape[3] == gy.shape[3] + 2 * qw - dw * (kw - 1))
    if exact and qh >= 0 and qw >= 0:
        og = n_out // groups
        wt = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1]
                                  .transpose(0, 2, 1, 3, 4).reshape(groups * cg, og, kh, kw))
        flat_forward(gy, wt, np.zeros(1, gx.dtype), False, qh, qw, dh, dw, groups, gx)
    else:
        flat_grad_input(gy, w, ph, pw, dh, dw, groups, gx)


def _use_implicit(stride, cg, og):
    """Stride-1 convolutions with 8+ input and 4+ output channels per group run as implicit
    GEMMs (implicit_forward), forward and input gradient, where NumPy's BLAS can be called from
    a kernel. Against im2col + GEMM and the flat kernels, forward, 2 threads: 3x3 16->16 at
    28x28 and 32x32 1.3x faster, 32->32 at 14x14 and 16x16 1.6-2.7x, 64->64 at 7x7 and 8x8
    1.1-1.3x, 1x1 64->128 1.4x; input gradient 1.1-1.3x. With fewer input channels BLAS's
    inner dimension (C_g per tap) is too short: 4->64 at 32x32 runs 1.1x slower, 3->64 1.5x."""
    return stride == (1, 1) and cg >= 8 and og >= 4 and blas_k.ready()


def _use_implicit_strided(stride, cg, og, kh, kw):
    """Strided forwards with 8+ input channels per group run as implicit GEMMs on the stride
    phases of each image (see phases_into) where NumPy's BLAS can be called from a kernel.
    Against im2col + GEMM in row blocks, 2 threads: 16->32 3x3 stride 2 on 32x32 and 28x28
    maps 0.80x the time, 32->64 on 14x14 0.68x."""
    return stride != (1, 1) and cg >= _STRIDED_MIN_CHANNELS and og >= 4 and blas_k.ready()


_STRIDED_MIN_CHANNELS = 8


def _implicit_trans(og, kw, junk):
    """Whether implicit_forward computes its products transposed for ``og`` outputs per
    group. The per-tap OpenBLAS products at 3x3 (single thread), plain vs transposed, GFLOP/s:
    64->64 on 7x7 maps 183 vs 248, 64->128 187 vs 255, 32->32 on 14x14 221 vs 250, 16->16 on
    28x28 208 vs 168. But the transposed product is unpacked with strided writes: whole
    forward convolutions, 64->64 at 7x7 and 8x8 are 1.05-1.3x faster transposed, 32->32 at 14x14
    and 16x16 1.1-1.25x slower. Not where the plain product has no junk columns (kW = 1, or
    pw = dw*(kW-1)): it is the output already (transposed, 1x1 64->128 ran 1.8x slower)."""
    return og >= 64 and og % 16 == 0 and kw > 1 and junk


def _implicit_conv(x, w, b, stride, padding, dilation, groups, y):
    """y = conv2d(x, w) + b by implicit_forward (see there)."""
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    # junk columns: the flat layout's rows (stride 1) or phase rows are wider than the output
    if stride == (1, 1):
        junk = padding[1] != dilation[1] * (kw - 1)
    else:
        junk = -(-(x.shape[3] + 2 * padding[1]) // stride[1]) != y.shape[3]
    trans = _implicit_trans(og, kw, junk)
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


def _implicit_input(gy, w, padding, dilation, groups, gx):
    """The input gradient of a stride-1 convolution, as the forward convolution of the output
    gradient with the flipped, channel-swapped kernel (see _flat_input), by implicit_forward.
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
    trans = _implicit_trans(cg, kw, qw != dw * (kw - 1))
    wt = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1]
                              .transpose((0, 3, 4, 1, 2) if trans else (0, 3, 4, 2, 1))
                              .reshape((groups, kh * kw) + ((og, cg) if trans else (cg, og))))
    n_img = gy.shape[0]
    with blas_threads.single_thread():
        implicit_forward(gy, wt, trans, np.zeros(1, gy.dtype), False, kh, kw, 1, 1, qh, qw, dh,
                         dw, task_ranges(n_img), gx.reshape(n_img, gx.shape[1], -1))
    return True


def _use_implicit_input_strided(stride, cg, og, kh, kw):
    """Strided input gradients by implicit_grad_input (on the stride phases) for kernels
    larger than 1x1 with up to 32 output channels per group. Against im2col's column
    gradients in row blocks, 2 threads: 16->32 3x3 stride 2 on 32x32 and 28x28 maps
    0.84-0.93x the time, 5x5 stride 3 0.70x; where excluded: 32->64 1.09x, 64->128 1.03x, 1x1
    shortcuts 2.7x (the whole phase buffer is zeroed and read back for one phase)."""
    return (stride != (1, 1) and kh * kw > 1 and cg >= 8 and og <= 32 and og >= 4
            and blas_k.ready())


def _implicit_strided_input(gy, w, stride, padding, dilation, groups, gx):
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


def _use_flat_params(stride, cg, og, n_img, n_threads):
    return (stride == (1, 1) and n_img >= n_threads and og * cg <= 256
            and (cg % 4 == 0 or cg == 1))


# OpenBLAS (its SkylakeX kernels, which NumPy's wheels run on AVX-512 machines) computes
# products of up to M*N*K = 10^6 with small-matrix kernels that read the operands in place;
# above, it packs both operands first. Single thread, operands in cache, GFLOP/s: the 16->32
# stride-2 forward's (32 x 145) @ (145 x N): N = 64 268, N = 256 154; a 32->32 weight gradient
# (289 x K) @ (K x 32): K = 64 251, K = 271 194 (and transposed as before, (289 x K) @ (32 x
# K)^T, 188-191 at any K).
_SMALL_GEMM = 1_000_000


def _gemm_rows(og, kk1, oh_n, ow_n):
    """Output rows per product of the strided im2col forward: one image's whole output where
    its product is small already or its operands are large (blocks of a 32->64 or an AlexNet
    conv1 product ran 1.1-1.6x slower), else as many rows as keep it small. The 16->32 stride-2
    layer on 32x32 maps (256 columns per image): 0.82 -> 0.70 ms per batch of 64, 2 threads."""
    if og * kk1 > 8192 or og * kk1 * oh_n * ow_n <= _SMALL_GEMM:
        return oh_n
    return max(1, _SMALL_GEMM // (og * kk1 * ow_n))


def _use_implicit_weight(cg, og, kh, kw, stride, m):
    """Weight gradients by implicit_grad_weight (no packed columns). Stride 1: where packing
    would be large (C_g*kH*kW >= 288, or a 5x5 kernel) and each tap's (C_g x M) @ (M x O_g)
    stays within OpenBLAS's small-matrix kernels. Against gemm_grad_weight, 2 threads: 32->32
    at 16x16 and 14x14 0.90-0.93x the time, 64->64 at 8x8 and 7x7 0.84, 32->16 0.90, 16->32
    5x5 0.90, LeNet's conv2 0.82; where excluded: 3->16 2.9x slower, 16->64 1.13x, 64->64 at
    16x16 (M*N*K = 1.1e6) 1.08x. Strided, on the stride phases, from 16 channels: 16->32 3x3
    stride 2 0.79-0.84x, 32->64 0.79x, 64->128 0.91x, 5x5 stride 3 0.75x; excluded: 1x1
    shortcuts 1.1x slower, AlexNet's conv1 (3 input channels) 1.6x."""
    if stride != (1, 1):  # on the stride phases: every tap's product is short
        return cg >= 16 and og >= 16 and kh * kw > 1
    return ((cg * kh * kw >= 288 or kh * kw >= 25) and og >= 16
            and cg * og * m <= _SMALL_GEMM)


def _grad_weight_block(flat, m, ow_n):
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
# faster than with the whole L2), but at least _MIN_COLUMNS columns (with fewer, BLAS runs
# slowly: the 64-channel 8x8 layer 1.2x slower at one image per product; with 256, ResNet-mini's
# 16->32 stride-2 layer, 196 columns per image, ran its forward 1.25x slower in pairs).
_COLUMN_BUDGET = 1 << 16
_MIN_COLUMNS = 192


class _Plan:
    """Everything about one convolution's geometry that the per-chunk loops need."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, out_hw):
        n_img, n_in, h, wd = x_shape
        n_out, cg, kh, kw = w_shape
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
        the budget, but at least _MIN_COLUMNS columns (narrower products run BLAS slowly)."""
        fit = _COLUMN_BUDGET // (rows * self.m)
        return max(1, min(self.n_img, max(fit, -(-_MIN_COLUMNS // self.m))))

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


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """y = conv2d(x, w) + b for NCHW ``x`` and ``w`` of shape (O, C/groups, kH, kW)."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = output_size(h, kh, sh, ph, dh), output_size(wd, kw, sw, pw, dw)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    og = n_out // groups
    y = np.empty((n_img, n_out, oh_n, ow_n), dtype=x.dtype)
    if y.size == 0:
        return y
    if winograd.use_winograd(kh, kw, stride, dilation, cg, og):
        return winograd.conv(x, w, b, padding, groups, y)
    if _use_implicit(stride, cg, og) or _use_implicit_strided(stride, cg, og, kh, kw):
        return _implicit_conv(x, w, b, stride, padding, dilation, groups, y)
    n_threads, junk = numba.get_num_threads(), _flat_junk(x.shape, w.shape, padding, dilation)
    direct = _use_direct(cg, og, stride, n_img, n_threads, junk)
    if direct or _use_flat(stride, cg, og, kh, kw, n_img, n_threads, junk):
        has_bias = b is not None
        bias = np.ascontiguousarray(b) if has_bias else np.zeros(1, x.dtype)
        if direct:
            direct_forward(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, groups, y)
        else:
            flat_forward(x, w, bias, has_bias, ph, pw, dh, dw, groups, y)
        return y
    plan = _Plan(x.shape, w.shape, stride, padding, dilation, groups, (oh_n, ow_n))
    kk, m = plan.kk, plan.m
    # [W | b] per group: the ones row of the packed columns adds the bias inside the GEMM
    w_aug = np.zeros((groups, og, kk + 1), dtype=x.dtype)
    w_aug[:, :, :kk] = w.reshape(groups, og, kk)
    if b is not None:
        w_aug[:, :, kk] = np.asarray(b).reshape(groups, og)
    y3 = y.reshape(n_img, n_out, oh_n * ow_n)
    if blas_k.ready():  # all on Numba's threads, BLAS called from the kernel
        with blas_threads.single_thread():
            rows = oh_n if plan.flat else _gemm_rows(og, kk + 1, oh_n, ow_n)
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


def conv2d_backward(gy, x, w, stride, padding, dilation, groups, need_input, need_weight,
                    need_bias, x_shape=None):
    """(grad_input, grad_weight, grad_bias) of conv2d; ``x`` may be None if no weight grad."""
    gy = np.ascontiguousarray(gy)
    w = np.ascontiguousarray(w)
    n_out, cg, kh, kw = w.shape
    if x is not None:
        x = np.ascontiguousarray(x)
        x_shape = x.shape
    n_img = x_shape[0]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    og = n_out // groups
    dtype = gy.dtype
    gx = np.empty(x_shape, dtype=dtype) if need_input else None
    gw = gb = None
    gy3 = gy.reshape(n_img, n_out, oh_n * ow_n)
    if gy.size == 0 or n_img == 0:
        gx = np.zeros(x_shape, dtype) if need_input else None
        return (gx, np.zeros(w.shape, dtype) if need_weight else None,
                np.zeros(n_out, dtype) if need_bias else None)
    # F(2x2, 3x3) for the input and for the weight gradient, each where it pays (see there)
    wino_x = (need_input and winograd.use_winograd(kh, kw, stride, dilation, og, cg)
              and winograd.grad_input(gy, w, padding, groups, gx))
    wino_w = need_weight and winograd.use_winograd(kh, kw, stride, dilation, cg, og,
                                                   weight=True)
    if wino_x or wino_w:
        if need_input and not wino_x:
            gx = conv2d_backward(gy, None, w, stride, padding, dilation, groups, True, False,
                                 False, x_shape)[0]
        if wino_w:
            gw, gb = winograd.grad_weight(gy, x, padding, groups, need_bias)
        elif need_weight or need_bias:
            gw, gb = conv2d_backward(gy, x, w, stride, padding, dilation, groups, False,
                                     need_weight, need_bias, x_shape)[1:]
        return gx, gw, gb
    if need_input and (_use_implicit(stride, cg, og) and _implicit_input(gy, w, padding,
                                                                         dilation, groups, gx)
                       or _use_implicit_input_strided(stride, cg, og, kh, kw)
                       and _implicit_strided_input(gy, w, stride, padding, dilation, groups,
                                                   gx)):
        if need_weight or need_bias:
            gw, gb = conv2d_backward(gy, x, w, stride, padding, dilation, groups, False,
                                     need_weight, need_bias, x_shape)[1:]
        return gx, gw, gb
    n_threads = numba.get_num_threads()
    if _use_direct(cg, og, stride, n_img, n_threads,
                   _flat_junk(x_shape, w.shape, padding, dilation)):
        if need_bias:
            gb = np.empty(n_out, dtype=dtype)
            bias_grad(gy3, gb)
        if need_input:
            direct_grad_input(gy, w, sh, sw, ph, pw, dh, dw, groups, gx)
        if need_weight:
            gw = np.empty(w.shape, dtype=dtype)
            direct_grad_weight(gy, x, sh, sw, ph, pw, dh, dw, groups, gw)
        return gx, gw, gb
    if need_weight and _use_flat_params(stride, cg, og, n_img, n_threads):
        if need_input and not _use_flat_input(stride, cg, og, kh, kw, n_img, n_threads):
            gx = conv2d_backward(gy, None, w, stride, padding, dilation, groups, True, False,
                                 False, x_shape)[0]
        elif need_input:
            _flat_input(gy, w, ph, pw, dh, dw, groups, gx)
        ranges = np.array(split(n_img, n_threads), dtype=np.int64)
        gw_parts = np.zeros((len(ranges),) + w.shape, dtype=dtype)
        gb_parts = np.zeros((len(ranges), n_out), dtype=dtype)
        flat_grad_params(gy, x, ph, pw, dh, dw, groups, ranges, gw_parts, gb_parts)
        gw = gw_parts.sum(axis=0)
        gb = gb_parts.sum(axis=0) if need_bias else None
        return gx, gw, gb
    if need_input and _use_flat_input(stride, cg, og, kh, kw, n_img, n_threads) and not (
            need_weight or need_bias):
        _flat_input(gy, w, ph, pw, dh, dw, groups, gx)
        return gx, None, None
    plan = _Plan(x_shape, w.shape, stride, padding, dilation, groups, (oh_n, ow_n))
    kk, m = plan.kk, plan.m
    # weight (and bias) gradients by a per-image kernel, the input gradient by its own path
    implicit_w = (need_weight and blas_k.ready()
                  and _use_implicit_weight(cg, og, kh, kw, stride, m))
    block = 0
    if need_weight and blas_k.ready() and not implicit_w:
        block = _grad_weight_block(plan.flat, m, ow_n)
    if implicit_w or block:
        if need_input:
            gx = conv2d_backward(gy, None, w, stride, padding, dilation, groups, True, False,
                                 False, x_shape)[0]
        ranges = task_ranges(n_img)
        parts = np.zeros((len(ranges), groups, kk + 1, og), dtype=dtype)
        with blas_threads.single_thread():
            if implicit_w:
                implicit_grad_weight(gy3, x, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n,
                                     ranges, parts)
            else:
                gemm_grad_weight(gy3, x, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n,
                                 plan.flat, block, ranges, parts)
        gw, gb = _params_from_parts(parts.sum(axis=0), w.shape, True, need_bias)
        return gx, gw, gb
    w2 = w.reshape(groups, og, kk)
    want_params = need_weight or need_bias
    # rows of M floats live per image: output-gradient columns, input columns, column gradient
    chunk = plan.chunk_for(og + (kk + 1 if need_weight else 0) + (kk if need_input else 0))
    if blas_k.ready():  # all on Numba's threads, BLAS called from the kernel
        ranges = task_ranges(n_img)
        parts = np.zeros((len(ranges) if want_params else 1, groups, kk + 1, og), dtype=dtype)
        dummy = np.zeros((1, 1, 1, 1), dtype=dtype)
        rows = oh_n if plan.flat else _gemm_rows(og, kk + 1, oh_n, ow_n)
        with blas_threads.single_thread():
            if want_params:
                gemm_backward(gy3, x if need_weight else dummy, w2, x_shape[1], x_shape[2],
                              x_shape[3], kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n,
                              plan.flat, chunk, ranges, need_input, need_weight, need_bias,
                              gx if need_input else dummy, parts)
            elif rows < oh_n:
                gemm_backward_input_rows(gy3, w2, x_shape[1], x_shape[2], x_shape[3], kh, kw,
                                         sh, sw, ph, pw, dh, dw, oh_n, ow_n, rows, ranges, gx)
            else:
                gemm_backward_input(gy3, w2, x_shape[1], x_shape[2], x_shape[3], kh, kw, sh,
                                    sw, ph, pw, dh, dw, oh_n, ow_n, plan.flat, chunk, ranges,
                                    gx)
        if want_params:
            gw, gb = _params_from_parts(parts.sum(axis=0), w.shape, need_weight, need_bias)
        return gx, gw, gb

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
        gw, gb = _params_from_parts(total, w.shape, need_weight, need_bias)
    return gx, gw, gb


def _params_from_parts(total, w_shape, need_weight, need_bias):
    """(dW, db) from [dW | db]^T summed over the tasks, (G, C_g*kH*kW + 1, O_g)."""
    kk = total.shape[1] - 1
    total = total.transpose(0, 2, 1).reshape(w_shape[0], kk + 1)
    gw = np.ascontiguousarray(total[:, :kk]).reshape(w_shape) if need_weight else None
    gb = np.ascontiguousarray(total[:, kk]) if need_bias else None
    return gw, gb
