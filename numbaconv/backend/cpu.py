"""The CPU backend: NumPy arrays, Numba kernels from ``numbaconv.kernels.cpu``.

Broadcasting arithmetic, reductions and layout use NumPy's own vectorised loops (they are already
compiled and keep float32 as float32); activations, softmax and every convolutional-network
kernel are Numba ``@njit(parallel=True)`` kernels. Matrix products go to NumPy's BLAS.
"""

from __future__ import annotations

import numba
import numpy as np

from ..kernels.cpu import conv as conv_k
from ..kernels.cpu import elementwise as ew
from ..kernels.cpu import linalg as linalg_k
from ..kernels.cpu import loading
from ..kernels.cpu import loss as loss_k
from ..kernels.cpu import norm as norm_k
from ..kernels.cpu import optim as optim_k
from ..kernels.cpu import pool as pool_k
from ..kernels.cpu import random as random_k

# kernels loaded from Numba's cache drop the LLVM module kept only for linking (see loading.py)
loading.release_linking_modules(*conv_k.KERNEL_MODULES, ew, linalg_k, norm_k, optim_k, pool_k,
                                random_k)

_UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
    "sign": np.sign, "tanh": np.tanh,
}
# elements from which a same-shape add runs in a parallel kernel (below it, waking threads
# costs more than the sum; 2x faster than NumPy's one thread at a residual block's 1.6M)
_PARALLEL_ADD = 1 << 16

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal,
}


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS.

    Every op returns a fresh array; by default glibc serves large ones with ``mmap`` and unmaps
    them on free, and trims the heap top, so the next step's arrays fault their pages in again
    (~2 us per 4 KiB page here: a 6 MB activation costs ~3 ms before any arithmetic). With
    blocks up to 32 MiB (glibc's maximum) from the heap and no trimming below 256 MiB, a
    training step reuses the memory of the previous one (ResNet-mini steps 1.2x faster; peak
    memory unchanged). Process-wide and glibc-only; ``NUMBACONV_KEEP_FREED_MEMORY=0`` opts out.
    """
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("NUMBACONV_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1
    return mallopt(m_trim_threshold, 256 << 20) == 1 and ok


MALLOC_TUNED = _keep_freed_memory()


def _tasks(planes: int) -> int:
    """prange tasks for plane-wise kernels: a few per thread; each allocates its scratch once."""
    return max(1, min(planes, 4 * numba.get_num_threads()))


class CPUBackend:
    name = "cpu"

    def __init__(self):
        from . import initial_seed

        seed = initial_seed()
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------ memory
    def manual_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def asarray(self, data, dtype):
        return np.asarray(data, dtype=dtype)

    def to_numpy(self, a):
        return a

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=dtype)

    def rand(self, shape, dtype):
        return self.rng.random(shape, dtype=np.dtype(dtype))

    def randn(self, shape, dtype):
        return self.rng.standard_normal(shape, dtype=np.dtype(dtype))

    def randint(self, low, high, shape, dtype):
        return self.rng.integers(low, high, size=shape).astype(dtype)

    def arange(self, start, stop, step, dtype):
        return np.arange(start, stop, step).astype(dtype)

    def astype(self, a, dtype):
        return np.array(a, dtype=dtype, copy=True, order="C")

    def copy_(self, dst, src):
        np.copyto(dst, src)

    def accumulate(self, dst, src, exclusive):
        """dst + src; in place when nothing else holds ``dst`` (PyTorch's rule for .grad),
        which spares a large gradient a fresh allocation and its page faults."""
        if not (exclusive and dst.base is None and dst.flags.writeable
                and dst.flags.c_contiguous and dst.dtype == src.dtype and dst.shape == src.shape):
            return np.add(dst, src)
        src = np.ascontiguousarray(src)
        if dst.size >= (1 << 16):
            ew.add_into(dst.reshape(-1), src.reshape(-1))
        else:
            np.add(dst, src, out=dst)
        return dst

    def ascontiguous(self, a):
        return np.asarray(a, order="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d

    # ------------------------------------------------------------ elementwise
    def unary(self, op, a):
        if op in ("relu", "sigmoid"):
            out = np.empty(a.shape, dtype=a.dtype)
            getattr(ew, op)(_flat(a), out.reshape(-1))
            return out
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _UNARY[op](a)

    def binary(self, op, a, b):
        if (op == "add" and a.size >= _PARALLEL_ADD and a.shape == b.shape
                and a.dtype == b.dtype and a.dtype.kind == "f"
                and a.flags.c_contiguous and b.flags.c_contiguous):
            out = np.empty(a.shape, dtype=a.dtype)
            ew.add(a.reshape(-1), b.reshape(-1), out.reshape(-1))
            return out
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _BINARY[op](a, b)

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def extremum_weights(self, a, b, op):
        """Share of the gradient that goes to ``a`` in maximum/minimum: 1, 0, or 1/2 at ties."""
        wins = np.greater(a, b) if op == "maximum" else np.less(a, b)
        w = np.where(wins, a.dtype.type(1), a.dtype.type(0))
        return np.where(np.equal(a, b), a.dtype.type(0.5), w)

    def activation_backward(self, op, gy, y):
        out = np.empty(gy.shape, dtype=gy.dtype)
        kernel = {"relu": ew.relu_backward, "sigmoid": ew.sigmoid_backward,
                  "tanh": ew.tanh_backward}[op]
        kernel(_flat(gy), _flat(y), out.reshape(-1))
        return out

    # ------------------------------------------------------------ reductions
    def reduce(self, op, a, axes, keepdims):
        axes = tuple(axes)
        if op == "sum":
            return np.sum(a, axis=axes, keepdims=keepdims)
        if op == "mean":
            if any(a.shape[d] == 0 for d in axes) or (not axes and a.size == 0):
                # a mean over nothing is NaN (PyTorch's answer), without NumPy's warning
                return np.full(np.sum(a, axis=axes, keepdims=keepdims).shape, np.nan, a.dtype)
            return np.mean(a, axis=axes, keepdims=keepdims)
        if op == "max":
            return np.max(a, axis=axes, keepdims=keepdims)
        if op == "min":
            return np.min(a, axis=axes, keepdims=keepdims)
        raise ValueError(f"unknown reduction {op!r}")

    def arg_reduce(self, op, a, axis, keepdims):
        f = np.argmax if op == "argmax" else np.argmin
        return f(a, axis=axis, keepdims=keepdims).astype(np.int64)

    def sum_to_shape(self, a, shape):
        """Sum a broadcast result back down to ``shape`` (the adjoint of broadcasting)."""
        lead = a.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            i + lead for i, s in enumerate(shape) if s == 1 and a.shape[i + lead] != 1)
        out = np.sum(a, axis=axes, keepdims=True) if axes else a
        return out.reshape(shape)

    def broadcast_to(self, a, shape):
        return np.broadcast_to(a, shape)

    def take_along_axis(self, a, index, axis):
        return np.take_along_axis(a, index, axis=axis)

    def scatter_along_axis(self, shape, index, values, axis):
        out = np.zeros(shape, dtype=values.dtype)
        np.put_along_axis(out, index, values, axis=axis)
        return out

    # ------------------------------------------------------------ layout
    def reshape(self, a, shape):
        return np.reshape(a, shape)

    def view(self, a, shape):
        v = a.view()
        try:
            v.shape = shape
        except AttributeError:
            raise RuntimeError(
                f"view(): shape {tuple(shape)} is not compatible with the input's memory layout "
                f"(shape {a.shape}, strides {a.strides}); use reshape() or contiguous() first"
            ) from None
        return v

    def transpose(self, a, axes):
        return np.transpose(a, axes)

    def getitem(self, a, index):
        return a[index]

    def setitem(self, a, index, value):
        try:
            a[index] = value
        except ValueError as e:
            raise ValueError(f"__setitem__: {e}") from None

    def getitem_backward(self, shape, index, g):
        out = np.zeros(shape, dtype=g.dtype)
        if any(isinstance(i, np.ndarray) for i in index):
            np.add.at(out, index, g)  # repeated indices accumulate
        else:
            out[index] = g
        return out

    def concatenate(self, arrays, axis):
        return np.concatenate(arrays, axis=axis)

    def stack(self, arrays, axis):
        return np.stack(arrays, axis=axis)

    def pad(self, a, pads, mode, value):
        if mode == "constant":
            return np.pad(a, pads, mode="constant", constant_values=a.dtype.type(value))
        return np.pad(a, pads, mode=mode)

    def pad_backward(self, g, shape, pads, mode):
        if mode == "constant":
            index = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))
            return np.ascontiguousarray(g[index])
        # padding is separable: each dim gathers from a source index map, so the adjoint
        # scatters (adds) back along each dim in turn
        out = g
        for axis, ((lo, hi), n) in enumerate(zip(pads, shape)):
            if lo == 0 and hi == 0:
                continue
            src = np.pad(np.arange(n), (lo, hi), mode=mode)
            moved = np.moveaxis(out, axis, 0)
            acc = np.zeros((n,) + moved.shape[1:], dtype=g.dtype)
            np.add.at(acc, src, moved)
            out = np.moveaxis(acc, 0, axis)
        return np.ascontiguousarray(out)

    # ------------------------------------------------------------ linear algebra
    def matmul(self, a, b):
        return linalg_k.matmul(a, b)

    @staticmethod
    def storage(a):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a

    @staticmethod
    def is_array(value):
        return isinstance(value, np.ndarray)

    def linear(self, x, w, b):
        y = self.matmul(x, self.transpose(w, (1, 0)))
        return y if b is None else self.binary("add", y, b)

    def matmul_tn(self, a, b):
        return self.matmul(self.transpose(a, (1, 0)), b)

    @staticmethod
    def _to_last(a, axis):
        """``a`` with ``axis`` last, contiguous (no moveaxis call when it is last already: the
        cross-entropy of every training step)."""
        if axis % a.ndim != a.ndim - 1:
            a = np.moveaxis(a, axis, -1)
        return np.ascontiguousarray(a)

    @staticmethod
    def _from_last(a, axis):
        return a if axis % a.ndim == a.ndim - 1 else np.moveaxis(a, -1, axis)

    def softmax(self, a, axis, log):
        moved = self._to_last(a, axis)
        if moved.size == 0:
            return np.empty_like(a)
        rows = moved.reshape(-1, moved.shape[-1])
        out = np.empty_like(rows)
        ew.softmax_rows(rows, out, log)
        return self._from_last(out.reshape(moved.shape), axis)

    def softmax_backward(self, gy, y, axis, log):
        g2, y2 = self._to_last(gy, axis), self._to_last(y, axis)
        if g2.size == 0:
            return np.empty_like(gy)
        out = np.empty(g2.shape, dtype=gy.dtype)
        ew.softmax_rows_backward(g2.reshape(-1, g2.shape[-1]), y2.reshape(-1, y2.shape[-1]),
                                 out.reshape(-1, out.shape[-1]), log)
        return self._from_last(out, axis)

    # ------------------------------------------------------------ convolution
    def conv2d(self, x, w, b, stride, padding, dilation, groups):
        return conv_k.conv2d_forward(x, w, b, stride, padding, dilation, groups)

    def conv2d_backward(self, gy, x, w, stride, padding, dilation, groups, needs,
                        x_shape=None, w_shape=None):
        """(grad_input, grad_weight, grad_bias), each computed only where ``needs`` says."""
        return conv_k.conv2d_backward(gy, x, w, stride, padding, dilation, groups, *needs,
                                      x_shape=x_shape, w_shape=w_shape)

    # ------------------------------------------------------------ pooling
    @staticmethod
    def _planes(x):
        n, c, h, w = x.shape
        return np.ascontiguousarray(x).reshape(n * c, h, w)

    def max_pool2d(self, x, kernel, stride, padding, dilation, out_hw):
        n, c = x.shape[:2]
        y = np.empty((n * c,) + tuple(out_hw), dtype=x.dtype)
        idx = np.empty((n * c,) + tuple(out_hw), dtype=np.int64)
        if y.size == 0:
            return y.reshape(n, c, *out_hw), idx.reshape(n, c, *out_hw)
        tasks = _tasks(n * c)
        if (kernel == stride == (2, 2) and padding == (0, 0) and dilation == (1, 1)
                and 2 * out_hw[0] <= x.shape[2] and 2 * out_hw[1] <= x.shape[3]):
            pool_k.max_pool2d_2x2(self._planes(x), y, idx, tasks)  # complete 2x2 windows
        else:
            pool_k.max_pool2d(self._planes(x), *kernel, *stride, *padding, *dilation, y, idx,
                              tasks)
        return y.reshape(n, c, *out_hw), idx.reshape(n, c, *out_hw)

    def max_pool2d_backward(self, gy, indices, x_shape, kernel=None, stride=None, padding=None,
                            dilation=None):
        """Scatter to the recorded indices (the window geometry is not needed here)."""
        n, c, h, w = x_shape
        gx = np.empty((n * c, h, w), dtype=gy.dtype)
        pool_k.max_pool2d_backward(self._planes(gy), self._planes(indices), gx)
        return gx.reshape(x_shape)

    def adaptive_max_pool2d_backward(self, gy, indices, x_shape):
        return self.max_pool2d_backward(gy, indices, x_shape)

    @staticmethod
    def _avg_2x2(kernel, stride, padding, x_shape, out_hw):
        """Complete 2x2 windows at stride 2 without padding: the unrolled kernels."""
        return (tuple(kernel) == tuple(stride) == (2, 2) and tuple(padding) == (0, 0)
                and 2 * out_hw[0] <= x_shape[2] and 2 * out_hw[1] <= x_shape[3])

    def avg_pool2d(self, x, kernel, stride, padding, out_hw, count_include_pad, divisor):
        n, c = x.shape[:2]
        y = np.empty((n * c,) + tuple(out_hw), dtype=x.dtype)
        tasks = _tasks(n * c)
        if self._avg_2x2(kernel, stride, padding, x.shape, out_hw):
            inv = x.dtype.type(1) / x.dtype.type(divisor or 4)
            pool_k.avg_pool2d_2x2(self._planes(x), inv, y, tasks)
        else:
            pool_k.avg_pool2d(self._planes(x), *kernel, *stride, *padding,
                              bool(count_include_pad), int(divisor or 0), y, tasks)
        return y.reshape(n, c, *out_hw)

    def avg_pool2d_backward(self, gy, x_shape, kernel, stride, padding, count_include_pad,
                            divisor):
        n, c, h, w = x_shape
        gx = np.empty((n * c, h, w), dtype=gy.dtype)
        tasks = _tasks(n * c)
        if self._avg_2x2(kernel, stride, padding, x_shape, gy.shape[2:]):
            inv = gy.dtype.type(1) / gy.dtype.type(divisor or 4)
            pool_k.avg_pool2d_2x2_backward(self._planes(gy), inv, gx, tasks)
        else:
            pool_k.avg_pool2d_backward(self._planes(gy), *kernel, *stride, *padding,
                                       bool(count_include_pad), int(divisor or 0), gx, tasks)
        return gx.reshape(x_shape)

    def adaptive_pool2d(self, x, out_hw, op):
        n, c = x.shape[:2]
        y = np.empty((n * c,) + tuple(out_hw), dtype=x.dtype)
        if op == "avg":
            pool_k.adaptive_avg_pool2d(self._planes(x), y)
            return y.reshape(n, c, *out_hw), None
        idx = np.empty((n * c,) + tuple(out_hw), dtype=np.int64)
        pool_k.adaptive_max_pool2d(self._planes(x), y, idx)
        return y.reshape(n, c, *out_hw), idx.reshape(n, c, *out_hw)

    def adaptive_avg_pool2d_backward(self, gy, x_shape):
        n, c, h, w = x_shape
        gx = np.empty((n * c, h, w), dtype=gy.dtype)
        pool_k.adaptive_avg_pool2d_backward(self._planes(gy), gx)
        return gx.reshape(x_shape)

    def upsample_nearest2d(self, x, out_hw, scales):
        n, c = x.shape[:2]
        y = np.empty((n * c,) + tuple(out_hw), dtype=x.dtype)
        pool_k.upsample_nearest2d(self._planes(x), np.float32(scales[0]),
                                  np.float32(scales[1]), y)
        return y.reshape(n, c, *out_hw)

    def upsample_nearest2d_backward(self, gy, x_shape, scales):
        n, c, h, w = x_shape
        gx = np.empty((n * c, h, w), dtype=gy.dtype)
        pool_k.upsample_nearest2d_backward(self._planes(gy), np.float32(scales[0]),
                                           np.float32(scales[1]), gx)
        return gx.reshape(x_shape)

    # ------------------------------------------------------------ local response norm
    def local_response_norm(self, x, size, alpha, beta, k):
        shape = x.shape
        x3 = np.ascontiguousarray(x).reshape(shape[0], shape[1], int(np.prod(shape[2:])))
        y = np.empty(x3.shape, dtype=x.dtype)
        scale = np.empty(x3.shape, dtype=x.dtype)
        t = x.dtype.type
        norm_k.local_response_norm(x3, int(size), t(alpha), t(beta), t(k), y, scale)
        return y.reshape(shape), scale.reshape(shape)

    def local_response_norm_backward(self, gy, x, y, scale, size, alpha, beta, k):
        shape = x.shape
        as3 = lambda a: np.ascontiguousarray(a).reshape(  # noqa: E731
            shape[0], shape[1], int(np.prod(shape[2:])))
        gx = np.empty(as3(x).shape, dtype=x.dtype)
        work = np.empty_like(gx)
        t = x.dtype.type
        norm_k.local_response_norm_backward(as3(gy), as3(x), as3(y), as3(scale), int(size),
                                            t(alpha), t(beta), gx, work)
        return gx.reshape(shape)

    # ------------------------------------------------------------ normalisation and dropout
    def batch_norm_stats(self, x3, eps, running_mean=None, running_var=None, momentum=0.1):
        mean = np.empty(x3.shape[1], dtype=x3.dtype)
        var = np.empty(x3.shape[1], dtype=x3.dtype)
        norm_k.batch_stats(np.ascontiguousarray(x3), mean, var)
        t = x3.dtype.type
        if running_mean is not None:
            count = x3.shape[0] * x3.shape[2]
            keep, m = t(1 - momentum), t(momentum)
            unbiased = var * t(count / (count - 1))
            running_mean[...] = running_mean * keep + mean * m
            running_var[...] = running_var * keep + unbiased * m
        return mean, self.batch_norm_invstd(var, eps)

    def batch_norm_invstd(self, var, eps):
        t = var.dtype.type
        return t(1) / np.sqrt(var + t(eps))

    def batch_norm(self, x3, mean, invstd, weight, bias, relu=False):
        y = np.empty(x3.shape, dtype=x3.dtype)
        norm_k.normalize(np.ascontiguousarray(x3), mean, invstd, weight, bias, bool(relu), y)
        return y

    def batch_norm_backward(self, g3, x3, mean, invstd, weight, training, relu_out=None):
        gx = np.empty(x3.shape, dtype=x3.dtype)
        gw = np.empty(x3.shape[1], dtype=x3.dtype)
        gb = np.empty(x3.shape[1], dtype=x3.dtype)
        relu = relu_out is not None  # ReLU's backward fused in (one pass less)
        y = np.ascontiguousarray(relu_out) if relu else gx[:1]
        norm_k.batch_norm_backward(np.ascontiguousarray(g3), np.ascontiguousarray(x3), mean,
                                   invstd, weight, bool(training), relu, y, gx, gw, gb)
        return gx, gw, gb

    def dropout_mask(self, shape, p, dtype):
        u = self.rng.random(shape, dtype=np.dtype(dtype))
        mask = np.empty(shape, dtype=dtype)
        random_k.dropout_mask(u.reshape(-1), np.dtype(dtype).type(p), mask.reshape(-1))
        return mask

    # ------------------------------------------------------------ losses
    def nll(self, logp, target, weight, ignore_index):
        return loss_k.nll_rows(logp, target, weight, ignore_index)

    def nll_backward(self, g_rows, target, row_weights, n_classes):
        return loss_k.nll_rows_backward(g_rows, target, row_weights, n_classes)

    # ------------------------------------------------------------ optimizers
    def sgd_step(self, p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first):
        t = p.dtype.type
        use_buf = buf is not None
        kernel = optim_k.sgd_step if p.size >= optim_k.PARALLEL_MIN else optim_k.sgd_step_serial
        kernel(p.reshape(-1), np.ascontiguousarray(g).reshape(-1),
                         buf.reshape(-1) if use_buf else p.reshape(-1), t(lr), t(momentum),
                         t(dampening), bool(nesterov), t(weight_decay), bool(first), use_buf)

    def adam_step(self, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled,
                  bias1, bias2_sqrt):
        t = p.dtype.type
        amsgrad = vmax is not None
        kernel = optim_k.adam_step if p.size >= optim_k.PARALLEL_MIN else \
            optim_k.adam_step_serial
        kernel(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1),
                          v.reshape(-1), vmax.reshape(-1) if amsgrad else v.reshape(-1), t(lr),
                          t(beta1), t(beta2), t(eps), t(weight_decay), bool(decoupled), amsgrad,
                          t(bias1), t(bias2_sqrt))
