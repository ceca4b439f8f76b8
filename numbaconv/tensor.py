"""``Tensor``: an array on a device plus what autograd needs (``requires_grad``, ``grad``,
``_ctx``).

Creation functions (``tensor``, ``zeros``, ``randn``, ...) live here too. Every op a tensor offers
is a thin method over :mod:`numbaconv.functional`, which reaches kernels only through
``self.backend``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from . import autograd
from .backend import get_backend, parse_device

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
float16 = np.dtype(np.float16)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
int16 = np.dtype(np.int16)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)

# float16 is named (as in PyTorch) but refused: no kernel of either backend computes in it, and
# a tensor that could be made but not used would fail deep inside Numba on its first op
_SUPPORTED_DTYPES = (float32, float64, int64, int32, int16, int8, uint8, bool_)
_DEFAULT_FLOAT = float32


def _as_dtype(dtype, argname: str = "dtype") -> np.dtype:
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in ("float", "double", "long", "int", "bool"):
        dtype = {"float": float32, "double": float64, "long": int64, "int": int32,
                 "bool": bool_}[dtype]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{argname}={dtype!r} is not a dtype; expected e.g. numbaconv.float32") from None
    if dt not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"{argname}={dtype!r} is not supported; expected one of "
            f"{', '.join(str(d) for d in _SUPPORTED_DTYPES)}"
        )
    return dt


def _check_supported(dt, what: str) -> None:
    if dt not in _SUPPORTED_DTYPES:
        raise TypeError(f"{what} has dtype {dt}, which numbaconv does not compute in; convert "
                        f"it (e.g. .astype(numpy.float32)) to one of "
                        f"{', '.join(str(d) for d in _SUPPORTED_DTYPES)}")


def is_floating(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


# The three ops a Tensor's own methods need (.type, .clone, .to): here, so that tensor.py never
# imports from the layers above it. Every other op is in numbaconv.functional.


class Cast(autograd.Function):
    def forward(self, x, dtype):
        self.src = x.dtype
        return self.backend.astype(x, dtype)

    def backward(self, g):
        if not is_floating(self.src):
            return (None,)
        return (self.backend.astype(g, self.src),)


class Clone(autograd.Function):
    def forward(self, x):
        return self.backend.astype(x, x.dtype)

    def backward(self, g):
        return (g,)


class ToDevice(autograd.Function):
    """An explicit copy between devices (through host memory); the gradient goes back."""

    def forward(self, x, device):
        self.out_device = device
        self.dst_backend = get_backend(device)
        return self.dst_backend.asarray(self.backend.to_numpy(x), x.dtype)

    def backward(self, g):
        return (self.backend.asarray(self.dst_backend.to_numpy(g), g.dtype),)


class Tensor:
    """An n-dimensional array on one device, recorded on the autograd tape when it needs to be.

    Make one with :func:`numbaconv.tensor` or a creation function; ops return new tensors.
    """

    __slots__ = ("data", "device", "requires_grad", "grad", "_ctx", "_retains_grad",
                 "_grad_hooks", "__weakref__")
    __array_priority__ = 1000  # so that ndarray <op> Tensor defers to Tensor's reflected op

    def __init__(self, data, dtype=None, requires_grad=False, device=None):
        t = tensor(data, dtype=dtype, requires_grad=requires_grad, device=device)
        self.data, self.device = t.data, t.device
        self.requires_grad, self.grad, self._ctx, self._retains_grad = (
            t.requires_grad, None, None, False)
        self._grad_hooks = None

    @classmethod
    def _make(cls, data, device: str, requires_grad: bool = False) -> Tensor:
        t = object.__new__(cls)
        t.data = data
        t.device = device
        t.requires_grad = requires_grad
        t.grad = None
        t._ctx = None
        t._retains_grad = False
        t._grad_hooks = None
        return t

    # ---------------------------------------------------------------- properties
    @property
    def backend(self):
        return get_backend(self.device)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def size(self, dim: int | None = None):
        if dim is None:
            return self.shape
        return self.shape[_norm_dim(dim, self.ndim, "dim")]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        n = 1
        for s in self.data.shape:
            n *= s
        return n

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    @property
    def grad_fn(self):
        return self._ctx

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    def is_contiguous(self) -> bool:
        return bool(getattr(self.data, "flags", None) is None or self.data.flags.c_contiguous)

    # ---------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (shares memory on the CPU, like PyTorch)."""
        return self.backend.to_numpy(self.data)

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        if self.numel() != 1:
            raise ValueError(
                f"item(): only a tensor with one element converts to a Python scalar, got shape "
                f"{self.shape}"
            )
        return self.numpy().reshape(()).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.numel() != 1:
            raise ValueError(
                f"the truth value of a tensor with {self.numel()} elements is ambiguous"
            )
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def to(self, *args, dtype=None, device=None) -> Tensor:
        """``t.to("cuda")``, ``t.to(numbaconv.float64)`` or ``t.to(device=..., dtype=...)``."""
        for a in args:
            if isinstance(a, np.dtype) or (isinstance(a, type) and issubclass(a, np.generic)):
                dtype = a
            else:
                device = a
        out = self
        if dtype is not None:
            out = out.type(dtype)
        if device is not None:
            target = parse_device(device)
            if target != out.device:
                out = ToDevice.apply(out, device=target)
        return out

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def type(self, dtype) -> Tensor:
        dt = _as_dtype(dtype)
        if dt == self.dtype:
            return self
        return Cast.apply(self, dtype=dt)

    def float(self) -> Tensor:
        return self.type(float32)

    def double(self) -> Tensor:
        return self.type(float64)

    def long(self) -> Tensor:
        return self.type(int64)

    def int(self) -> Tensor:
        return self.type(int32)

    def bool(self) -> Tensor:
        return self.type(bool_)

    # ---------------------------------------------------------------- autograd
    def detach(self) -> Tensor:
        return Tensor._make(self.data, self.device)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and not is_floating(self.dtype):
            raise TypeError(
                f"requires_grad=True needs a floating-point tensor, got dtype {self.dtype}"
            )
        if not self.is_leaf and not requires_grad:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor; use detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self._retains_grad = True

    def register_post_accumulate_grad_hook(self, hook):
        """``hook(self)`` after each backward pass has accumulated all of its gradient into
        ``self.grad`` (a leaf); returns a handle with ``remove()``."""
        return autograd.register_post_accumulate_grad_hook(self, hook)

    def backward(self, gradient: Tensor | None = None, retain_graph: bool = False) -> None:
        autograd.backward(self, gradient, retain_graph=retain_graph)

    def zero_(self) -> Tensor:
        """Zero this tensor's storage in place (views and detached copies see it, as in
        PyTorch); refused on a tensor that requires grad while gradients are recorded."""
        if autograd.is_grad_enabled() and self.requires_grad:
            raise RuntimeError("zero_: in-place update of a tensor that requires grad would "
                               "corrupt its graph; do it inside numbaconv.no_grad()")
        self.backend.copy_(self.data, self.backend.zeros(self.shape, self.dtype))
        autograd.mark_written(self)
        return self

    def clone(self) -> Tensor:
        return Clone.apply(self)

    def contiguous(self) -> Tensor:
        return self if self.is_contiguous() else self.clone()

    # ---------------------------------------------------------------- printing
    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(", threshold=200)
        extras = []
        if self.dtype != _DEFAULT_FLOAT and self.dtype != int64:
            extras.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{type(self._ctx).__name__}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body, *extras]) + ")"


def _norm_dim(dim, ndim: int, argname: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{argname} must be an int, got {dim!r}")
    lo, hi = -max(ndim, 1), max(ndim, 1) - 1
    if not lo <= dim <= hi:
        raise IndexError(
            f"{argname}={dim} is out of range for a tensor with {ndim} dimension(s); expected a "
            f"value in [{lo}, {hi}]"
        )
    return int(dim) % max(ndim, 1)


# -------------------------------------------------------------------- creation
def _infer_dtype(arr: np.ndarray, source) -> np.dtype:
    kind = arr.dtype.kind
    if kind == "b":
        return bool_
    if kind in "iu":
        return arr.dtype if isinstance(source, np.ndarray | np.generic) else int64
    if kind == "f":
        # NumPy arrays keep their float dtype (as torch.tensor does); Python floats are float32
        if isinstance(source, np.ndarray | np.generic):
            _check_supported(arr.dtype, "data")
            return arr.dtype
        return _DEFAULT_FLOAT
    raise TypeError(
        f"data must be numeric (bool, int or float), got values of dtype {arr.dtype} "
        f"({type(source).__name__})"
    )


def tensor(data, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A new leaf tensor holding a copy of ``data`` (nested sequences, scalars, NumPy arrays).

    Python floats give float32; NumPy arrays keep their dtype; Python ints give int64.

    >>> numbaconv.tensor([[1.0, 2.0]], requires_grad=True).shape
    (1, 2)
    """
    dt = _as_dtype(dtype)
    dev = parse_device(device)
    if isinstance(data, Tensor):
        data = data.numpy()
    if isinstance(data, str | bytes) or data is None:
        raise TypeError(f"data must be numeric, got {type(data).__name__} {data!r}")
    try:
        arr = np.array(data, copy=True)
    except (ValueError, TypeError) as e:
        raise TypeError(f"data could not be read as a numeric array: {e}") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(
            f"data must be numeric (bool, int or float), got values of dtype {arr.dtype}"
        )
    if dt is None:
        dt = _infer_dtype(arr, data)
    if arr.dtype != dt:
        if arr.dtype.kind == "f" and dt.kind in "iub" and not np.all(np.isfinite(arr)):
            raise ValueError(f"data holds non-finite values that dtype={dt} cannot represent")
        arr = arr.astype(dt)
    if requires_grad and not is_floating(dt):
        raise TypeError(f"requires_grad=True needs a floating-point dtype, got dtype={dt}")
    backend = get_backend(dev)
    return Tensor._make(backend.asarray(arr, dt), dev, requires_grad=bool(requires_grad))


def _parse_size(size, fn: str) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], Sequence | np.ndarray):
        size = tuple(size[0])
    out = []
    for s in size:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{fn}(): size must be ints, got {s!r} in {tuple(size)}")
        if s < 0:
            raise ValueError(f"{fn}(): size must be non-negative, got {tuple(size)}")
        out.append(int(s))
    return tuple(out)


def _new(fn: str, size, dtype, device, requires_grad, make) -> Tensor:
    shape = _parse_size(size, fn)
    dt = _as_dtype(dtype) or _DEFAULT_FLOAT
    if requires_grad and not is_floating(dt):
        raise TypeError(f"{fn}(): requires_grad=True needs a floating-point dtype, got {dt}")
    dev = parse_device(device)
    backend = get_backend(dev)
    return Tensor._make(make(backend, shape, dt), dev, requires_grad=bool(requires_grad))


def zeros(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _new("zeros", size, dtype, device, requires_grad, lambda b, s, d: b.zeros(s, d))


def ones(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _new("ones", size, dtype, device, requires_grad, lambda b, s, d: b.full(s, 1, d))


def empty(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _new("empty", size, dtype, device, requires_grad, lambda b, s, d: b.zeros(s, d))


def full(size, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    if not isinstance(fill_value, numbers.Number):
        raise TypeError(f"full(): fill_value must be a number, got {fill_value!r}")
    if dtype is None and not isinstance(fill_value, float):
        dtype = bool_ if isinstance(fill_value, bool) else int64
    return _new("full", (size,), dtype, device, requires_grad,
                lambda b, s, d: b.full(s, fill_value, d))


def rand(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1), from the generator that :func:`manual_seed` seeds."""
    _check_float("rand", dtype)
    return _new("rand", size, dtype, device, requires_grad, lambda b, s, d: b.rand(s, d))


def randn(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples, from the generator that :func:`manual_seed` seeds."""
    _check_float("randn", dtype)
    return _new("randn", size, dtype, device, requires_grad, lambda b, s, d: b.randn(s, d))


def randint(low, high=None, size=(), dtype=None, device=None) -> Tensor:
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint(): high={high} must be greater than low={low}")
    dt = _as_dtype(dtype) or int64
    shape = _parse_size((size,), "randint")
    dev = parse_device(device)
    backend = get_backend(dev)
    return Tensor._make(backend.randint(int(low), int(high), shape, dt), dev)


def _check_float(fn, dtype):
    if dtype is not None and not is_floating(_as_dtype(dtype)):
        raise TypeError(f"{fn}(): dtype must be floating point, got {dtype}")


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
    if end is None:
        start, end = 0, start
    for name, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"arange(): {name} must be a number, got {v!r}")
    if step == 0:
        raise ValueError("arange(): step must be non-zero")
    if dtype is None:
        ints = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = int64 if ints else _DEFAULT_FLOAT
    dt = _as_dtype(dtype)
    dev = parse_device(device)
    if requires_grad and not is_floating(dt):
        raise TypeError(f"arange(): requires_grad=True needs a floating-point dtype, got {dt}")
    backend = get_backend(dev)
    return Tensor._make(backend.arange(start, end, step, dt), dev, requires_grad=requires_grad)


def _like(fn, t: Tensor, dtype, device, requires_grad, **kw):
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn.__name__}_like(): input must be a Tensor, got {type(t).__name__}")
    return fn(t.shape, dtype=dtype or t.dtype, device=device or t.device,
              requires_grad=requires_grad, **kw)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return _like(zeros, t, dtype, device, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _like(ones, t, dtype, device, requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return _like(empty, t, dtype, device, requires_grad)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    return _like(rand, t, dtype, device, requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    return _like(randn, t, dtype, device, requires_grad)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    if not isinstance(t, Tensor):
        raise TypeError(f"full_like(): input must be a Tensor, got {type(t).__name__}")
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=device or t.device,
                requires_grad=requires_grad)


from . import _tensor_methods  # noqa: E402,F401  (attaches the op methods to Tensor)
