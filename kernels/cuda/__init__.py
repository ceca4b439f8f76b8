"""CUDA kernels (``numba.cuda``) on device arrays, one thread per output element unless a
module says otherwise. Each module exposes ``kernels(dtype)``: the kernels specialised to one
floating dtype, whose constants are typed from it (``T(0)``), so a float32 kernel never computes
in float64. Shapes and strides arrive as tuples of ints; outputs are allocated by the caller.

Modules that run a multi-kernel algorithm (conv, linalg, norm, reduce) also hold its host side,
as functions of a ``ctx`` that the backend supplies (allocation and launch, see
:mod:`.conv`). A kernel is named by a key ``module.name[.variant]`` (``conv.im2col``,
``mm.gemm.kn_plain``), resolved by :func:`kernel`.
"""

from __future__ import annotations

import numpy as np

from . import conv, elementwise, linalg, loss, norm, optim, pool, reduce

MODULES = {"ew": elementwise.kernels, "red": reduce.kernels, "mm": linalg.kernels,
           "conv": conv.kernels, "pool": pool.kernels, "norm": norm.kernels,
           "optim": optim.kernels, "loss": loss.kernels}

_resolved: dict = {}


def kernel(key: str, dtype):
    """The kernel named ``module.path`` (e.g. ``ew.binary.add``) specialised to ``dtype``."""
    dtype = np.dtype(dtype)
    found = _resolved.get((key, dtype))
    if found is None:
        mod, *path = key.split(".")
        found = MODULES[mod](dtype)
        for part in path:
            found = found[part] if isinstance(found, dict) else getattr(found, part)
        _resolved[(key, dtype)] = found
    return found
