"""Random masks for dropout, drawn from the backend's seeded NumPy generator."""

from numba import prange

from .jit import PARALLEL, njit


@njit(**PARALLEL)
def dropout_mask(u, p, mask):
    """mask[i] = 1/(1-p) where u[i] >= p, else 0 (u uniform in [0, 1))."""
    keep = mask.dtype.type(1) / (mask.dtype.type(1) - p)
    zero = mask.dtype.type(0)
    for i in prange(u.size):
        mask[i] = keep if u[i] >= p else zero
