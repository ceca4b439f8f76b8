"""3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3), on the CPU.

A 2x2 block ("tile") of outputs of a 3x3 convolution needs a 4x4 patch of the padded input
``d``. Winograd's algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016) computes it from the transformed patch ``V = B^T d B`` and the transformed
kernel ``U = G g G^T`` (both 4x4) as ``Y = A^T (sum over input channels of U * V) A``, with
an elementwise product:

    B^T = [[1, 0, -1, 0],      G = [[1,    0,   0],      A^T = [[1, 1,  1,  0],
           [0, 1,  1, 0],           [1/2,  1/2, 1/2],           [0, 1, -1, -1]]
           [0, -1, 1, 0],           [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]          [0,    0,   1]]

For a whole layer, the channel sum at each of the 16 positions xi of the 4x4 grid is a
matrix product over all tiles: ``M[xi] (tiles x O) = V[xi] (tiles x C) @ U[xi] (C x O)``.
That is 16 * C * O multiply-adds per tile of 4 outputs, against 36 * C * O for the direct
convolution: 2.25x fewer FLOPs, at float32 rounding errors like the direct method's (the
transforms only add, subtract and halve). F(4x4, 3x3) would save 4x but loses about an order
of magnitude of float32 accuracy; F(2x2, 3x3) does not.

An infinity in the input turns into NaN (inf - inf) in the transformed values of the tiles it
falls in, and a NaN or infinity reaches every output of those tiles: up to a 4x4 block of
outputs instead of the 3x3 it reaches directly (as in cuDNN's and oneDNN's Winograd kernels).
A NaN input still gives a NaN loss.

Layout. The transforms work channels-last so that every loop runs along channels: each image is
first transposed into a zero-padded tile buffer ``xt[R, col % 2, col // 2, C]`` (its columns
split by parity, so that the 4 columns of every tile of a tile row are one shift apart), the
transforms then run one long contiguous loop per tile row and output row, and the output is
transposed back to NCHW at the end. The input, output and weight gradients are all this
kernel: the input gradient is the forward convolution of the output gradient with the
flipped, channel-swapped kernel (padding 2 - p), and the weight gradient is
``dU[xi] = V[xi]^T @ (A dY A^T)[xi]`` summed over tiles, then ``dW = G^T dU G``.

Each loop below reads at most 12 arrays and writes at most 4: LLVM's vectoriser checks every
written array against every read one at run time, and gives up on loops that need more than
128 such checks (one loop for all 16 transformed values did).

The GEMMs call NumPy's own BLAS from inside the kernels (``blas.gemm_at``),
sized for OpenBLAS's small-matrix kernels; the caller holds BLAS at one thread.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..blas import gemm_at
from ..jit import INLINE, PARALLEL, SERIAL, U, njit
from ..threads import blas_threads, task_ranges

# Floats between consecutive planes of the 16 transformed values: tile buffers whose planes are
# a multiple of 4 KiB apart map all 16 streams onto the same cache sets (the transforms ran
# 4.6x slower).
_PLANE_PAD = 16


@njit(**INLINE)
def _tiles(oh_n, ow_n):
    """Tile rows and columns (2x2 outputs each) that cover an oh_n x ow_n output."""
    return (oh_n + 1) // 2, (ow_n + 1) // 2


@njit(**INLINE)
def _geometry(oh_n, ow_n, block, rows, n_in, n_out):
    """(th, tw, sv, so, half): tile rows and columns; the strides of the 16 planes of
    transformed input and output values of one set of products (block images or rows tile
    rows, see _chunks); floats per output row of a tile buffer (one parity half)."""
    th, tw = _tiles(oh_n, ow_n)
    tiles = block * rows * tw
    return th, tw, tiles * n_in + _PLANE_PAD, tiles * n_out + _PLANE_PAD, tw * n_out


@njit(**SERIAL)
def to_tiles(x, n, ph, pw, cols, group, xt):
    """xt[R, col % 2, col // 2, c] = x[n, c, R - ph, col - pw] (channels last, columns split
    by parity into halves of ``cols`` columns) wherever that is inside x; the rest of xt (the
    padding) is left as it is. Pixel by pixel, ``group`` channels at a time (see _group)."""
    n_ch, h, wd = x.shape[1], x.shape[2], x.shape[3]
    half = cols * n_ch
    for c0 in range(0, n_ch, group):
        c1 = min(c0 + group, n_ch)
        for r in range(h):
            row = (r + ph) * 2 * half
            for s in range(wd):
                col = s + pw
                d = U(row + (col % 2) * half + (col // 2) * n_ch)
                src = x[n, :, r, s]
                for c in range(U(c0), U(c1)):
                    xt[d + c] = src[c]


@njit(**SERIAL)
def _in_row(xt, v, rp, rq, sign, row_w, n_ch, t_off, k, sv, tw):
    """Transformed values 4k .. 4k+3 of one tile row: the row combination
    ``xt row rp + sign * xt row rq`` (B^T's row k), then B^T's columns along it."""
    one = U(n_ch)
    p0, q0 = U(rp * 2 * row_w), U(rq * 2 * row_w)
    p1, q1 = p0 + U(row_w), q0 + U(row_w)  # odd columns
    d = U(4 * k * sv + t_off)
    s = U(sv)
    for j in range(U(tw * n_ch)):
        c0 = xt[p0 + j] + sign * xt[q0 + j]
        c1 = xt[p1 + j] + sign * xt[q1 + j]
        c2 = xt[p0 + one + j] + sign * xt[q0 + one + j]
        c3 = xt[p1 + one + j] + sign * xt[q1 + one + j]
        v[d + j] = c0 - c2
        v[d + s + j] = c1 + c2
        v[d + U(2) * s + j] = c2 - c1
        v[d + U(3) * s + j] = c1 - c3


@njit(**SERIAL)
def transform_input(xt, n_ch, a0, a1, tw, t0, sv, v):
    """V = B^T d B of the tile rows a0 .. a1-1 of one image (tile buffer xt, see to_tiles)
    into v[xi * sv + (t0 + tile) * n_ch + c], tiles counted from row a0."""
    one, minus = xt.dtype.type(1), xt.dtype.type(-1)
    row_w = (tw + 1) * n_ch
    for a in range(a0, a1):
        t_off = (t0 + (a - a0) * tw) * n_ch
        r = 2 * a
        _in_row(xt, v, r, r + 2, minus, row_w, n_ch, t_off, 0, sv, tw)
        _in_row(xt, v, r + 1, r + 2, one, row_w, n_ch, t_off, 1, sv, tw)
        _in_row(xt, v, r + 2, r + 1, minus, row_w, n_ch, t_off, 2, sv, tw)
        _in_row(xt, v, r + 1, r + 3, minus, row_w, n_ch, t_off, 3, sv, tw)


@njit(**SERIAL)
def _out_row(mm, brow, k0, sign, sm, m_off, yt, y_off, half, n):
    """One output row of a tile row from the products M: A^T's row (rows k0, k0+1, k0+2 of
    the 4x4 grid, the last two times ``sign``), then A^T's columns, plus the bias row."""
    s = U(sm)
    a0 = U(4 * k0 * sm + m_off)
    a1, a2 = a0 + U(4) * s, a0 + U(8) * s
    d0, d1 = U(y_off), U(y_off + half)
    for j in range(U(n)):
        u0 = mm[a0 + j] + sign * (mm[a1 + j] + mm[a2 + j])
        u1 = mm[a0 + s + j] + sign * (mm[a1 + s + j] + mm[a2 + s + j])
        u2 = mm[a0 + U(2) * s + j] + sign * (mm[a1 + U(2) * s + j] + mm[a2 + U(2) * s + j])
        u3 = mm[a0 + U(3) * s + j] + sign * (mm[a1 + U(3) * s + j] + mm[a2 + U(3) * s + j])
        yt[d0 + j] = u0 + u1 + u2 + brow[j]
        yt[d1 + j] = u1 - u2 - u3 + brow[j]


@njit(**SERIAL)
def from_tiles(yt, tw, n, group, y):
    """y[n, o, r, s] = yt[r, s % 2, s // 2, o] for the outputs that y has: pixel by pixel,
    ``group`` output planes at a time (see _out_group)."""
    n_out, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    half = tw * n_out
    for o0 in range(0, n_out, group):
        o1 = min(o0 + group, n_out)
        for r in range(oh_n):
            for s in range(ow_n):
                src = U(r * 2 * half + (s % 2) * half + (s // 2) * n_out)
                dst = y[n, :, r, s]
                for o in range(U(o0), U(o1)):
                    dst[o] = yt[src + o]


@njit(**PARALLEL)
def winograd_forward(x, wu, bias_row, ph, pw, block, rows, group, out_group, ranges, y):
    """y = conv2d(x, w) + b for a 3x3 kernel at stride 1 (padding ph, pw; y gives the output
    size), by F(2x2, 3x3). ``wu`` is the transformed kernel (16, G, C_g, O_g) (see
    transform_weight), ``bias_row`` the bias repeated once per tile column (zeros for none).
    Task t does the images ranges[t]; each set of 16 products takes ``block`` whole images,
    or (block 1) ``rows`` tile rows of one (see _chunks)."""
    n_img, n_in, h, wd = x.shape
    groups, cg, og = wu.shape[1], wu.shape[2], wu.shape[3]
    n_out, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
    th, tw, sv, sm, half = _geometry(oh_n, ow_n, block, rows, n_in, n_out)
    one, minus = x.dtype.type(1), x.dtype.type(-1)
    for t in prange(ranges.shape[0]):
        xt = np.zeros((2 * th + 2) * 2 * (tw + 1) * n_in, dtype=x.dtype)  # padding stays 0
        v = np.empty(16 * sv, dtype=x.dtype)
        mm = np.empty(16 * sm, dtype=x.dtype)
        yt = np.empty(2 * th * 2 * half, dtype=x.dtype)
        for n0 in range(ranges[t, 0], ranges[t, 1], block):
            nb = min(block, ranges[t, 1] - n0)
            for a0 in range(0, th, rows):
                a1 = min(a0 + rows, th)
                ct = (a1 - a0) * tw  # tiles per image in this set
                for i in range(nb):
                    if a0 == 0:
                        to_tiles(x, n0 + i, ph, pw, tw + 1, group, xt)
                    transform_input(xt, n_in, a0, a1, tw, i * ct, sv, v)
                for xi in range(16):
                    for g in range(groups):
                        gemm_at(False, False, nb * ct, og, cg, v, xi * sv + g * cg, n_in, wu,
                                (xi * groups + g) * cg * og, og, 0, mm, xi * sm + g * og,
                                n_out)
                for i in range(nb):
                    for a in range(a0, a1):
                        m_off = (i * ct + (a - a0) * tw) * n_out
                        y_off = 2 * a * 2 * half
                        _out_row(mm, bias_row, 0, one, sm, m_off, yt, y_off, half, half)
                        _out_row(mm, bias_row, 1, minus, sm, m_off, yt, y_off + 2 * half,
                                 half, half)
                    if a1 == th:
                        from_tiles(yt, tw, n0 + i, out_group, y)


@njit(**SERIAL)
def _add_rows(buf, width, n_rows, acc):
    """acc += the sum of the n_rows rows of ``width`` values at the start of buf."""
    for k in range(n_rows):
        base = U(k * width)
        for j in range(U(width)):
            acc[j] += buf[base + j]


@njit(**INLINE)
def _grad_cols(e, o, d, s, j, dyw):
    """A's columns on one tile row's combined even (e) and odd (o) output columns."""
    dyw[d + j] = e
    dyw[d + s + j] = e + o
    dyw[d + U(2) * s + j] = e - o
    dyw[d + U(3) * s + j] = -o


@njit(**SERIAL)
def _grad_row(gt, r0, r1, sign, half, n_out, t_off, k, sd, tw, dyw):
    """Values 4k .. 4k+3 of A dY A^T for one tile row, k = 1 or 2: A's row k on the tile's
    two output rows (row r0 + sign * row r1), then A's columns along it."""
    p0, q0 = U(r0 * 2 * half), U(r1 * 2 * half)
    p1, q1 = p0 + U(half), q0 + U(half)
    d, s = U(4 * k * sd + t_off), U(sd)
    for j in range(U(tw * n_out)):
        _grad_cols(gt[p0 + j] + sign * gt[q0 + j], gt[p1 + j] + sign * gt[q1 + j], d, s, j,
                   dyw)


@njit(**SERIAL)
def _grad_row1(gt, r0, sign, half, n_out, t_off, k, sd, tw, dyw):
    """Values 4k .. 4k+3 of A dY A^T for one tile row, k = 0 or 3: A's row k picks one output
    row (sign * row r0), then A's columns along it."""
    p0 = U(r0 * 2 * half)
    p1 = p0 + U(half)
    d, s = U(4 * k * sd + t_off), U(sd)
    for j in range(U(tw * n_out)):
        _grad_cols(sign * gt[p0 + j], sign * gt[p1 + j], d, s, j, dyw)


@njit(**PARALLEL)
def winograd_grad_weight(gy, x, ph, pw, block, rows, group, group_gy, ranges, parts,
                         db_parts):
    """Weight gradient of a 3x3 stride-1 convolution by F(2x2, 3x3): task t adds, over its
    images ranges[t], ``V[xi]^T @ (A dY A^T)[xi]`` to parts[t, xi, g] (C_g x O_g), and the sums
    of dY to db_parts[t]; the caller sums the tasks and applies G^T . G (see
    weight_from_transformed). Sets of products as in winograd_forward."""
    n_img, n_in, h, wd = x.shape
    groups, cg, og = parts.shape[2], parts.shape[3], parts.shape[4]
    n_out, oh_n, ow_n = gy.shape[1], gy.shape[2], gy.shape[3]
    th, tw, sv, sd, half = _geometry(oh_n, ow_n, block, rows, n_in, n_out)
    one, minus = x.dtype.type(1), x.dtype.type(-1)
    for t in prange(ranges.shape[0]):
        xt = np.zeros((2 * th + 2) * 2 * (tw + 1) * n_in, dtype=x.dtype)
        gt = np.zeros(2 * th * 2 * half, dtype=x.dtype)  # past an odd edge stays 0
        db_row = np.zeros(half, dtype=x.dtype)
        v = np.empty(16 * sv, dtype=x.dtype)
        dyw = np.empty(16 * sd, dtype=x.dtype)
        for n0 in range(ranges[t, 0], ranges[t, 1], block):
            nb = min(block, ranges[t, 1] - n0)
            for a0 in range(0, th, rows):
                a1 = min(a0 + rows, th)
                ct = (a1 - a0) * tw
                for i in range(nb):
                    if a0 == 0:
                        to_tiles(x, n0 + i, ph, pw, tw + 1, group, xt)
                        to_tiles(gy, n0 + i, 0, 0, tw, group_gy, gt)
                        _add_rows(gt, half, 4 * th, db_row)
                    transform_input(xt, n_in, a0, a1, tw, i * ct, sv, v)
                    for a in range(a0, a1):
                        t_off = (i * ct + (a - a0) * tw) * n_out
                        r = 2 * a
                        _grad_row1(gt, r, one, half, n_out, t_off, 0, sd, tw, dyw)
                        _grad_row(gt, r, r + 1, one, half, n_out, t_off, 1, sd, tw, dyw)
                        _grad_row(gt, r, r + 1, minus, half, n_out, t_off, 2, sd, tw, dyw)
                        _grad_row1(gt, r + 1, minus, half, n_out, t_off, 3, sd, tw, dyw)
                for xi in range(16):
                    for g in range(groups):
                        gemm_at(True, False, cg, og, nb * ct, v, xi * sv + g * cg, n_in, dyw,
                                xi * sd + g * og, n_out, 1, parts[t, xi, g], 0, og)
        for b in range(tw):  # db: the sums of dY, still per tile column
            for o in range(n_out):
                db_parts[t, o] += db_row[b * n_out + o]


# ---------------------------------------------------------------------- kernel transforms
@njit(**INLINE)
def _g_rows(a0, a1, a2, half):
    """G @ (a0, a1, a2): the 4 rows of a transformed kernel from its 3."""
    return a0, half * (a0 + a1 + a2), half * (a0 - a1 + a2), a2


@njit(**SERIAL)
def transform_weight(w, groups, swap, wu):
    """wu[xi, g] = U = G g G^T of every 3x3 kernel of ``w`` (O, C_g, 3, 3): (16, G, C_g, O_g)
    for the forward convolution, or with ``swap`` the input gradient's kernel (the flipped
    kernel with input and output channels swapped), (16, G, O_g, C_g)."""
    n_out, cg = w.shape[0], w.shape[1]
    og = n_out // groups
    half = w.dtype.type(0.5)
    t = np.empty((4, 3), dtype=w.dtype)
    for o in range(n_out):
        g, oo = o // og, o % og
        for c in range(cg):
            k = w[o, c]
            for j in range(3):
                if swap:  # the kernel flipped in both directions
                    a0, a1, a2 = k[2, 2 - j], k[1, 2 - j], k[0, 2 - j]
                else:
                    a0, a1, a2 = k[0, j], k[1, j], k[2, j]
                t[0, j], t[1, j], t[2, j], t[3, j] = _g_rows(a0, a1, a2, half)
            for i in range(4):
                u0, u1, u2, u3 = _g_rows(t[i, 0], t[i, 1], t[i, 2], half)
                for s, val in enumerate((u0, u1, u2, u3)):
                    if swap:
                        wu[4 * i + s, g, oo, c] = val
                    else:
                        wu[4 * i + s, g, c, oo] = val


@njit(**INLINE)
def _gt_rows(d0, d1, d2, d3, half):
    """G^T @ (d0, d1, d2, d3): the 3 rows of a kernel gradient from its transformed 4."""
    return d0 + half * (d1 + d2), half * (d1 - d2), half * (d1 + d2) + d3


@njit(**SERIAL)
def weight_from_transformed(du, dw):
    """dw (O, C_g, 3, 3) = G^T dU G of du (16, G, C_g, O_g), the weight gradient's sum over
    tiles of the transformed kernels' gradients."""
    groups, cg, og = du.shape[1], du.shape[2], du.shape[3]
    half = du.dtype.type(0.5)
    t = np.empty((3, 4), dtype=du.dtype)
    for g in range(groups):
        for c in range(cg):
            for o in range(og):
                for s in range(4):
                    t[0, s], t[1, s], t[2, s] = _gt_rows(du[s, g, c, o], du[4 + s, g, c, o],
                                                         du[8 + s, g, c, o],
                                                         du[12 + s, g, c, o], half)
                for i in range(3):
                    a, b, e = _gt_rows(t[i, 0], t[i, 1], t[i, 2], t[i, 3], half)
                    dw[g * og + o, c, i, 0] = a
                    dw[g * og + o, c, i, 1] = b
                    dw[g * og + o, c, i, 2] = e


# ---------------------------------------------------------------------- host side
def _chunks(th, tw, target):
    """(images, tile rows) per set of 16 products: about ``target`` tiles, whole images
    where they are smaller, else tile rows of one image."""
    if th * tw <= target:
        return max(1, target // (th * tw)), th
    return 1, max(1, target // tw)


_TARGET = 128


# L1 data cache: 64-byte lines in 64 sets (48 KiB, 12 ways, on the Zen 5 development machine;
# 32-48 KiB and 8-12 ways on other x86 cores of the last decade).
_L1_SETS, _LINE = 64, 64


def _sets(plane_bytes):
    """How many L1 sets the lines at one offset of planes ``plane_bytes`` apart fall into."""
    if plane_bytes % _LINE:
        return _L1_SETS
    lines = (plane_bytes // _LINE) % _L1_SETS
    return _L1_SETS // int(np.gcd(lines, _L1_SETS)) if lines else 1


def _group(n_planes, plane_bytes):
    """Channels that to_tiles reads at once, pixel by pixel: all of them, unless more than 16
    of their lines fall into one L1 set (they would evict each other before the next pixel's
    read), then 8 per set. Reading 64 channels of 32x32 float32 planes (4 KiB apart, one set)
    8 at a time took 1.5 ms per batch of 64 instead of 6.5, 32 channels 0.74 instead of 1.23;
    16 channels, 16 lines per set, 0.40 all at once and 0.45 in eights. (Channel by channel,
    with contiguous reads, ran 1.06-1.11x slower on 16 and 32 channels, 1.5-2.2x on 64.)"""
    sets = _sets(plane_bytes)
    if -(-n_planes // sets) <= 16:
        return n_planes
    return 8 * sets


def _out_group(n_out, plane_bytes):
    """Output planes that from_tiles writes at once, pixel by pixel: all of them, unless more
    than 8 of their lines fall into one L1 set (written lines evicted before the next pixel's
    write), then 8 per set. 16 channels of 32x32 float32 planes (4 KiB apart, one set) ran 4x
    slower all at once than plane by plane, 64 of 16x16 (16 lines per set) 6x; 8 at a time
    runs as fast as plane by plane there, and on large maps much faster (plane by plane reads
    each line of the tile buffer once per channel on it)."""
    sets = _sets(plane_bytes)
    if -(-n_out // sets) <= 8:
        return n_out
    return 8 * sets


def conv(x, w, b, padding, groups, y):
    """y = conv2d(x, w) + b (3x3, stride 1) by winograd_forward."""
    n_out, cg = w.shape[:2]
    og = n_out // groups
    wu = np.empty((16, groups, cg, og), dtype=x.dtype)
    transform_weight(w, groups, False, wu)
    _forward(x, wu, b, padding, y)
    return y


def grad_input(gy, w, padding, groups, gx):
    """The input gradient of a 3x3 stride-1 convolution, as the forward convolution of gy with
    the flipped, channel-swapped kernel at padding 2 - p; False (gx untouched) where that
    convolution does not give it (padding over 2, or gx with rows no output reaches)."""
    (ph, pw) = padding
    if not (ph <= 2 and pw <= 2 and gx.shape[2] == gy.shape[2] + 2 - 2 * ph
            and gx.shape[3] == gy.shape[3] + 2 - 2 * pw):
        return False
    n_out, cg = w.shape[:2]
    og = n_out // groups
    wu = np.empty((16, groups, og, cg), dtype=gy.dtype)
    transform_weight(w, groups, True, wu)
    _forward(gy, wu, None, (2 - ph, 2 - pw), gx)
    return True


def _forward(x, wu, b, padding, y):
    n_img, n_out, oh_n, ow_n = y.shape
    tw = (ow_n + 1) // 2
    bias_row = np.tile(b, tw) if b is not None else np.zeros(tw * n_out, dtype=x.dtype)
    block, rows = _chunks((oh_n + 1) // 2, tw, _TARGET)
    group = _group(x.shape[1], x.shape[2] * x.shape[3] * x.itemsize)
    with blas_threads.single_thread():
        winograd_forward(x, wu, bias_row, padding[0], padding[1], block, rows, group,
                         _out_group(n_out, oh_n * ow_n * x.itemsize), task_ranges(n_img), y)


def grad_weight(gy, x, padding, groups, need_bias):
    """(dW, db) of a 3x3 stride-1 convolution by winograd_grad_weight."""
    n_img, n_out, oh_n, ow_n = gy.shape
    cg = x.shape[1] // groups
    og = n_out // groups
    ranges = task_ranges(n_img)
    parts = np.zeros((len(ranges), 16, groups, cg, og), dtype=x.dtype)
    db_parts = np.zeros((len(ranges), n_out), dtype=x.dtype)
    block, rows = _chunks((oh_n + 1) // 2, (ow_n + 1) // 2, _TARGET)
    with blas_threads.single_thread():
        winograd_grad_weight(gy, x, padding[0], padding[1], block, rows,
                             _group(x.shape[1], x.shape[2] * x.shape[3] * x.itemsize),
                             _group(n_out, oh_n * ow_n * x.itemsize), ranges, parts, db_parts)
    dw = np.empty((n_out, cg, 3, 3), dtype=x.dtype)
    weight_from_transformed(parts.sum(axis=0), dw)
    return dw, (db_parts.sum(axis=0) if need_bias else None)
