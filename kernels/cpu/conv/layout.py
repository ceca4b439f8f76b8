"""Layout helpers of the convolution strategies: padding, packing into columns (im2col) and
back (col2im), the "flat" layout of stride-1 convolutions, the stride phases of strided ones,
and the conversions between GEMM columns and NCHW. Serial: each runs inside one task.
"""

from __future__ import annotations

import numpy as np

from ..jit import INLINE, SERIAL, U, njit

# Packed-column layouts. With stride 1 the receptive field of output (oh, ow) at tap (i, j) is
# the padded input plane, flattened, at  oh*Wp + ow + (i*dh*Wp + j*dw): every row of the column
# matrix is then one contiguous slice of the plane ("flat" layout, M = (OH-1)*Wp + OW columns per
# image, of which the Wp-OW at the end of each output row are junk that is never read back).
# With a larger stride the columns are the dense (oh, ow) grid and each row is a strided gather.


@njit(**SERIAL)
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
                    for b in range(U(w)):
                        row[U(pw) + b] = src[b]
                    for b in range(pw + w, wp):
                        dst[a, b] = zero


@njit(**SERIAL)
def im2col_flat(xp3, c0, cg, kh, kw, dh, dw, wp, m, cols, ones_row):
    """cols[(c*kh+i)*kw+j, n*M + q] = xp3[n, c0+c, q + i*dh*Wp + j*dw] (stride 1).

    With ``ones_row`` the last row is all ones: it multiplies the bias column of [W | b], so the
    GEMM adds the bias too.
    """
    for n in range(xp3.shape[0]):
        dst = U(n * m)
        for c in range(cg):
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    off = U(i * dh * wp + j * dw)
                    for q in range(U(m)):
                        cols[r, dst + q] = xp3[n, c0 + c, off + q]
    if ones_row:
        one = cols.dtype.type(1)
        last = cols.shape[0] - 1
        for q in range(cols.shape[1]):
            cols[last, q] = one


@njit(**SERIAL)
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
                        dst = U(n * L + (oh - r0) * ow_n)
                        ih = oh * sh + i * dh
                        jd, s = U(j * dw), U(sw)
                        for ow in range(U(ow_n)):
                            cols[r, dst + ow] = xp[n, c0 + c, ih, ow * s + jd]
    if ones_row:
        one = cols.dtype.type(1)
        last = cols.shape[0] - 1
        for q in range(cols.shape[1]):
            cols[last, q] = one


@njit(**SERIAL)
def col2im_flat(cols, c0, cg, kh, kw, dh, dw, wp, m, gxp3):
    """The adjoint of im2col_flat: gxp3[n, c0+c] = sum of the column entries that read it."""
    zero = gxp3.dtype.type(0)
    for n in range(gxp3.shape[0]):
        src = U(n * m)
        for c in range(cg):
            plane = gxp3[n, c0 + c]
            for q in range(U(plane.shape[0])):
                plane[q] = zero
            for i in range(kh):
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    off = U(i * dh * wp + j * dw)
                    for q in range(U(m)):
                        plane[off + q] += cols[r, src + q]


@njit(**SERIAL)
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
                        src = U(n * L + (oh - r0) * ow_n)
                        ih = oh * sh + i * dh
                        jd, s = U(j * dw), U(sw)
                        for ow in range(U(ow_n)):
                            plane[ih, ow * s + jd] += cols[r, src + ow]


@njit(**SERIAL)
def unpad_into(gxp, n0, c0, cg, ph, pw, gx):
    """gx[n0+n, c0+c] = gxp[n, c0+c] without its padding border."""
    h, w = gx.shape[2], gx.shape[3]
    for n in range(gxp.shape[0]):
        for c in range(c0, c0 + cg):
            for a in range(h):
                src = gxp[n, c, ph + a]
                dst = gx[n0 + n, c, a]
                for b in range(U(w)):
                    dst[b] = src[U(pw) + b]


@njit(**INLINE)
def flat_geometry(h, wd, kh, kw, ph, pw, dh, dw):
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


@njit(**SERIAL)
def pad_flat_into(x, n0, n1, ph, pw, pitch, xq3):
    """xq3[n-n0, c] = x[n, c] in the flat padded layout of flat_geometry. Writes the values
    only: the padding must be zero already (it is never written)."""
    h, wd = x.shape[2], x.shape[3]
    for n in range(n0, n1):
        for c in range(x.shape[1]):
            dst = xq3[n - n0, c]
            for r in range(h):
                d0 = U((r + ph) * pitch + pw)
                row = x[n, c, r]
                for s in range(U(wd)):
                    dst[d0 + s] = row[s]


@njit(**SERIAL)
def unpad_flat_into(gxq3, n0, c0, cg, ph, pw, pitch, gx):
    """gx[n0+n, c] for c in c0 .. c0+cg-1 from the flat padded layout (what lands on the
    padding is dropped)."""
    h, wd = gx.shape[2], gx.shape[3]
    for n in range(gxq3.shape[0]):
        for c in range(c0, c0 + cg):
            src = gxq3[n, c]
            for r in range(h):
                s0 = U((r + ph) * pitch + pw)
                row = gx[n0 + n, c, r]
                for s in range(U(wd)):
                    row[s] = src[s0 + s]


@njit(**INLINE)
def phase_geometry(h, wd, kh, kw, sh, sw, ph, pw, dh, dw):
    """(Wq, Q, plane, M) of the phase layout of a strided convolution's padded planes (see
    phases_into): phase-plane width and size, floats per channel (sh*sw phase planes), and
    columns per image (output rows Wq apart)."""
    hp, wp = h + 2 * ph, wd + 2 * pw
    oh_n = (hp - dh * (kh - 1) - 1) // sh + 1
    ow_n = (wp - dw * (kw - 1) - 1) // sw + 1
    hq, wq = (hp + sh - 1) // sh, (wp + sw - 1) // sw
    return wq, hq * wq, sh * sw * hq * wq, (oh_n - 1) * wq + ow_n


@njit(**INLINE)
def _pair_phases(a, sh, pw, q_sz, wq):
    """With a column stride of 2: where padded row ``a``'s even input columns (s = 0, 2, ...)
    and odd ones start in its phase planes (s + pw even or odd picks the column phase)."""
    base = (a % sh) * 2 * q_sz + (a // sh) * wq
    pe = pw % 2  # the column phase of the even input columns
    return (U(base + pe * q_sz) + U(pw // 2), U(base + (1 - pe) * q_sz) + U((pw + 1) // 2))


@njit(**SERIAL)
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
                for k in range(U(wd // 2)):
                    dst[de + k] = row[U(2) * k]
                    dst[do + k] = row[U(2) * k + U(1)]
                if wd % 2:
                    dst[de + U(wd // 2)] = row[wd - 1]
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
            s0, st = U(c_lo * sw + pj - pw), U(sw)
            for c in range(x.shape[1]):
                dst = xq[c]
                for qr in range(hq):
                    r = qr * sh + pi - ph
                    if r < 0 or r >= h:
                        continue
                    row = x[n, c, r]
                    d0 = U((pi * sw + pj) * q_sz + qr * wq + c_lo)
                    # unsigned indices: no wrap-around guards, so the copy vectorises
                    for k in range(U(c_hi - c_lo)):
                        dst[d0 + k] = row[s0 + k * st]

@njit(**INLINE)
def output_positions(m, pitch, ow_n):
    """For each of the M columns of a flat (pitch-wide) layout, its position in the output
    plane, or -1 for a junk column."""
    src = np.empty(m, dtype=np.int64)
    for q in range(m):
        r, s = q // pitch, q % pitch
        src[q] = r * ow_n + s if s < ow_n else -1
    return src


@njit(**SERIAL)
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
                for k in range(U(wd // 2)):
                    row[U(2) * k] = src[de + k]
                    row[U(2) * k + U(1)] = src[do + k]
                if wd % 2:
                    row[wd - 1] = src[de + U(wd // 2)]
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
                q0 = U(((a % sh) * sw + pj) * q_sz + (a // sh) * wq + (s0 + pw) // sw)
                st, s0u = U(sw), U(s0)
                for k in range(U((wd - s0 + sw - 1) // sw)):
                    row[s0u + k * st] = src[q0 + k]


@njit(**SERIAL)
def columns_to_nchw(out, n0, o0, pitch, m, oh_n, ow_n, y3):
    """y3[n0+n, o0+o, oh*W_out+ow] = out[o, n*M + oh*pitch + ow] (pitch = Wp or W_out)."""
    n_img = out.shape[1] // m
    for n in range(n_img):
        for o in range(out.shape[0]):
            for oh in range(oh_n):
                src = U(n * m + oh * pitch)
                dst = U(oh * ow_n)
                for ow in range(U(ow_n)):
                    y3[n0 + n, o0 + o, dst + ow] = out[o, src + ow]


@njit(**SERIAL)
def nchw_to_columns(gy3, n0, n_img, o0, pitch, m, oh_n, ow_n, out):
    """The inverse of columns_to_nchw; the junk columns between output rows become zeros."""
    zero = out.dtype.type(0)
    for n in range(n_img):
        for o in range(out.shape[0]):
            for oh in range(oh_n):
                dst = U(n * m + oh * pitch)
                src = U(oh * ow_n)
                for ow in range(U(ow_n)):
                    out[o, dst + ow] = gy3[n0 + n, o0 + o, src + ow]
                if oh < oh_n - 1:
                    for ow in range(ow_n, pitch):
                        out[o, dst + ow] = zero


# ---------------------------------------------------------------------- host side
def params_from_parts(total, w_shape, need_weight, need_bias):
    """(dW, db) from [dW | db]^T summed over the tasks, (G, C_g*kH*kW + 1, O_g)."""
    kk = total.shape[1] - 1
    total = total.transpose(0, 2, 1).reshape(w_shape[0], kk + 1)
    gw = np.ascontiguousarray(total[:, :kk]).reshape(w_shape) if need_weight else None
    gb = np.ascontiguousarray(total[:, kk]) if need_bias else None
    return gw, gb
