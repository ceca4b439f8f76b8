"""Which strategy computes a convolution, forward or gradient, on the CPU: the rules and the
measurements behind them, in one place. The entry points (``conv/__init__.py``) ask these in
order: Winograd, implicit GEMM, direct loops, flat direct kernels, im2col + BLAS.

Every figure was measured on the 2-core development machine (AVX-512, NumPy's OpenBLAS), with
a Numba kernel run before each call, as inside a training step; "faster"/"slower" compare a
strategy with the one that would run instead.
"""

from __future__ import annotations

from .. import blas as blas_k

# OpenBLAS (its SkylakeX kernels, which NumPy's wheels run on AVX-512 machines) computes
# products of up to M*N*K = 10^6 with small-matrix kernels that read the operands in place;
# above, it packs both operands first. Single thread, operands in cache, GFLOP/s: the 16->32
# stride-2 forward's (32 x 145) @ (145 x N): N = 64 268, N = 256 154; a 32->32 weight gradient
# (289 x K) @ (K x 32): K = 64 251, K = 271 194 (and transposed as before, (289 x K) @ (32 x
# K)^T, 188-191 at any K). The im2col products are cut to this size too (see gemm.py).
SMALL_GEMM = 1_000_000

# Strided forwards run as implicit GEMMs from this many input channels per group.
STRIDED_MIN_CHANNELS = 8


# ---------------------------------------------------------------------- Winograd
def use_winograd(kh, kw, stride, dilation, cg, og, weight=False):
    """Whether a convolution with ``cg`` input and ``og`` output channels per group (for an
    input gradient: the convolution of dY, from O_g to C_g channels), or with ``weight`` its
    weight gradient, runs by F(2x2, 3x3): 3x3 kernels at stride 1 without dilation, 16+
    channels in and out, where NumPy's BLAS can be called from a kernel.

    Against the implicit GEMMs and direct kernels, 2 threads, time ratios (batch 64 unless
    given). Weight gradients: 0.25-0.66 from 16 to 256 channels and 8x8 to 56x56 maps (16->16
    at 32x32 0.90-0.96, 32->32 0.51, 64->64 at 8x8 0.62, 256->256 at 14x14 0.58): always.
    Forward convolutions (and input gradients): 32->32 at 16x16 0.70, 64->64 at 8x8 0.71,
    32->32 at 32x32 (batch 32) 0.62, 64->64 0.31, 64->64 at 56x56 (batch 8) 0.58, 128->128 at
    28x28 0.77, 16->32 0.81-0.97; but 16->16 1.17-1.24, 24->24 1.07-1.09, 32->16 0.97-1.08:
    the transforms cost the same per value whatever the channel count, and with fewer than
    32 outputs the products they save are too few. 256->256 at 14x14 (batch 4) ran 2.2x
    slower: its 16 transformed kernels (4 MiB) no longer stay in cache between sets of
    products."""
    if not ((kh, kw) == (3, 3) and stride == (1, 1) and dilation == (1, 1) and cg >= 16
            and og >= 16 and blas_k.ready()):
        return False
    return weight or (og >= 32 and cg * og <= 128 * 128)


# ---------------------------------------------------------------------- implicit GEMM
def use_implicit(stride, cg, og):
    """Stride-1 convolutions with 8+ input and 4+ output channels per group run as implicit
    GEMMs (implicit.implicit_forward), forward and input gradient, where NumPy's BLAS can be
    called from a kernel. Against im2col + GEMM and the flat kernels, forward, 2 threads: 3x3
    16->16 at 28x28 and 32x32 1.3x faster, 32->32 at 14x14 and 16x16 1.6-2.7x, 64->64 at 7x7 and 8x8
    1.1-1.3x, 1x1 64->128 1.4x; input gradient 1.1-1.3x. With fewer input channels BLAS's
    inner dimension (C_g per tap) is too short: 4->64 at 32x32 runs 1.1x slower, 3->64 1.5x."""
    return stride == (1, 1) and cg >= 8 and og >= 4 and blas_k.ready()


def use_implicit_strided(stride, cg, og, kh, kw):
    """Strided forwards with 8+ input channels per group run as implicit GEMMs on the stride
    phases of each image (see layout.phases_into) where NumPy's BLAS can be called from a kernel.
    Against im2col + GEMM in row blocks, 2 threads: 16->32 3x3 stride 2 on 32x32 and 28x28
    maps 0.80x the time, 32->64 on 14x14 0.68x."""
    return stride != (1, 1) and cg >= STRIDED_MIN_CHANNELS and og >= 4 and blas_k.ready()


def use_implicit_input_strided(stride, cg, og, kh, kw):
    """Strided input gradients by implicit.implicit_grad_input (on the stride phases) for kernels
    larger than 1x1 with up to 32 output channels per group. Against im2col's column
    gradients in row blocks, 2 threads: 16->32 3x3 stride 2 on 32x32 and 28x28 maps
    0.84-0.93x the time, 5x5 stride 3 0.70x; where excluded: 32->64 1.09x, 64->128 1.03x, 1x1
    shortcuts 2.7x (the whole phase buffer is zeroed and read back for one phase)."""
    return (stride != (1, 1) and kh * kw > 1 and cg >= 8 and og <= 32 and og >= 4
            and blas_k.ready())


def use_implicit_weight(cg, og, kh, kw, stride, m):
    """Weight gradients by implicit.implicit_grad_weight (no packed columns). Stride 1: where
    packing would be large (C_g*kH*kW >= 288, or a 5x5 kernel) and each tap's (C_g x M) @
    (M x O_g) stays within OpenBLAS's small-matrix kernels. Against gemm.gemm_grad_weight, 2
    threads: 32->32 at 16x16 and 14x14 0.90-0.93x the time, 64->64 at 8x8 and 7x7 0.84,
    32->16 0.90, 16->32 5x5 0.90, LeNet's conv2 0.82; where excluded: 3->16 2.9x slower,
    16->64 1.13x, 64->64 at 16x16 (M*N*K = 1.1e6) 1.08x. Strided, on the stride phases, from
    16 channels: 16->32 3x3 stride 2 0.79-0.84x, 32->64 0.79x, 64->128 0.91x, 5x5 stride 3
    0.75x; excluded: 1x1 shortcuts 1.1x slower, AlexNet's conv1 (3 input channels) 1.6x."""
    if stride != (1, 1):  # on the stride phases: every tap's product is short
        return cg >= 16 and og >= 16 and kh * kw > 1
    return ((cg * kh * kw >= 288 or kh * kw >= 25) and og >= 16
            and cg * og * m <= SMALL_GEMM)



# ---------------------------------------------------------------------- direct and flat
def use_direct(cg, og, stride, n_img, n_threads, junk):
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
# * input gradient (a forward convolution of the output gradient, see flat.grad_input): up to
#   16x16 pairs with channels in fours or one (16->16 1.1x, depthwise 1.6x faster than its
#   direct loops); the GEMM path wins on 32->32 (1.4x) and
#   LeNet's conv2 (6 input channels: 2.1x at batch 64, 2.8x at 256);
# * weight gradient: likewise (16->16 1.3x faster, LeNet's conv1 2x); the GEMM path (which
#   computes [dW | db]^T = columns @ dY^T) wins on 32->32 (1.3x) and LeNet's conv2 (1.3x).
def flat_junk(x_shape, w_shape, padding, dilation):
    """M / (OH*OW) of the flat layout: the share of wasted positions."""
    (ph, pw), (dh, dw) = padding, dilation
    h, wd = x_shape[2] + 2 * ph, x_shape[3] + 2 * pw
    oh, ow = h - dh * (w_shape[2] - 1), wd - dw * (w_shape[3] - 1)
    return ((oh - 1) * wd + ow) / max(oh * ow, 1)


def use_flat(stride, cg, og, kh, kw, n_img, n_threads, junk):
    return (stride == (1, 1) and n_img >= n_threads and cg * kh * kw <= 288 and og * cg <= 256
            and junk <= 1.2)


def use_flat_input(stride, cg, og, kh, kw, n_img, n_threads):
    return (stride == (1, 1) and n_img >= n_threads and max(cg, og) * kh * kw <= 400
            and og * cg <= 256 and (cg % 4 == 0 or cg == 1))


def use_flat_params(stride, cg, og, n_img, n_threads):
    return (stride == (1, 1) and n_img >= n_threads and og * cg <= 256
            and (cg % 4 == 0 or cg == 1))

