"""What every CPU kernel module shares: Numba's options, written once, a cache key that sees
the helpers a kernel takes from other files, and the small helpers several families use.

Options (the reasons are measured; see ``../shared/DESIGN.md``'s Numba lessons):

* ``PARALLEL``: entry points whose ``prange`` loops each own what they write.
  ``fastmath={"contract"}`` lets LLVM fuse multiply-adds; nothing more, so NaN checks survive.
* ``PARALLEL_SUMS``: the same for kernels whose inner loops are sums: ``reassoc`` lets LLVM
  vectorise a reduction (it may reorder the additions, never drop a NaN).
* ``SERIAL``: helpers run once per task, from a ``prange`` body or from Python worker threads
  (``nogil``: they release the GIL).
* ``SERIAL_SUMS``: serial helpers whose loops are sums (as ``PARALLEL_SUMS``).
* ``INLINE``: small helpers inlined at Numba's level into every caller.

Numba's on-disk cache (``cache=True``) checks a kernel against its own file only: a change in
a helper it imports from another file would leave the cached machine code in use. :func:`njit`
adds to every kernel's cache key a hash of the files of all the modules of this package that
its module uses, directly or through others, so that a cached kernel is compiled again
whenever any code it may have inlined changes. (The hash is taken on a kernel's first call,
once every module is imported; where Numba's internals differ from what this expects, the
plain Numba cache is used.)
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys

import numba
import numpy as np

PARALLEL = dict(parallel=True, cache=True, fastmath={"contract"})
PARALLEL_SUMS = dict(parallel=True, cache=True, fastmath={"contract", "reassoc"})
SERIAL = dict(cache=True, nogil=True, fastmath={"contract"})
SERIAL_SUMS = dict(cache=True, nogil=True, fastmath={"contract", "reassoc"})
INLINE = dict(cache=True, inline="always")

# Inner loops index with unsigned integers: Numba must guard every signed index against negative
# (wrap-around) values, and those guards stop LLVM from vectorising the loop (8x slower copies).
# int64 * uint64 gives float64 in Numba, so constants mixed with them are unsigned too.
U = np.uint64

# a zero typed int64 where a literal 0 would make Numba compile a helper a second time, for
# Literal[int](0)
ZERO = np.int64(0)

_PACKAGE = __name__.rpartition(".")[0]  # numbaconv.kernels.cpu
_HASHES: dict[str, str] = {}


def njit(*args, **options):
    """``numba.njit`` whose cache key also covers the package files the kernel's module uses
    (see the module docstring). Used as ``@njit(**PARALLEL)``."""
    if args and callable(args[0]) and not options:  # bare @njit
        return _keyed(numba.njit(args[0]))

    def decorate(fn):
        return _keyed(numba.njit(*args, **options)(fn))

    return decorate


def _keyed(disp):
    cache = getattr(disp, "_cache", None)
    base = getattr(cache, "_index_key", None)
    if base is None:  # no caching, or Numba's cache works differently
        return disp
    module = disp.py_func.__module__

    def index_key(sig, codegen):
        return base(sig, codegen) + (sources_hash(module),)

    cache._index_key = index_key
    return disp


def _imports(module: str) -> set[str]:
    """The modules of this package that ``module``'s source imports (relative imports, at
    module level or inside functions): ``from .x import y``, ``from .. import x``."""
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if not path:
        return set()
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(_read(path))):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - (node.level - 1)])
        stem = f"{base}.{node.module}" if node.module else base
        for alias in node.names:
            sub = f"{stem}.{alias.name}"
            found.add(sub if sub in sys.modules else stem)
    return {name for name in found if name.startswith(_PACKAGE + ".")}


def dependencies(module: str) -> set[str]:
    """The modules of this package that ``module`` imports, directly or through others
    (itself included)."""
    seen, todo = {module}, [module]
    while todo:
        for name in _imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def sources_hash(module: str) -> str:
    """sha256 of the source files of ``dependencies(module)``, computed once per module."""
    digest = _HASHES.get(module)
    if digest is None:
        h = hashlib.sha256()
        for name in sorted(dependencies(module)):
            path = getattr(sys.modules[name], "__file__", None)
            if path:
                h.update(name.encode())
                h.update(_read(path))
        digest = _HASHES[module] = h.hexdigest()
    return digest


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@njit(**INLINE)
def valid_range(off, stride, size, n_out):
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
