"""Release the LLVM module Numba keeps beside every kernel it loads from its on-disk cache.

A kernel loaded from Numba's cache comes back as machine code plus, parsed again from bitcode,
an in-memory LLVM module of the whole kernel (``CPUCodeLibrary._shared_module``). That module
serves one purpose: linking the kernel into *another* jitted function compiled later. The
``parallel=True`` kernels of this package are entry points, called from Python and never from
jitted code (``tests/test_kernels_loading.py`` checks the sources), so for them the module is
dead weight: 0.1-2.5 MiB each, ~8 MiB of the 171 MiB peak of LeNet-5 training.

:func:`release_linking_modules` wraps those dispatchers' ``compile`` so that an overload that
came from the cache (and only such one: a freshly compiled kernel is written to the cache from
that module) drops its module right after loading. Nothing else changes: the machine code is
already in Numba's JIT, and its symbols registered. Where Numba's internals differ from what
this expects, it does nothing.
"""

from __future__ import annotations

from numba.core.dispatcher import Dispatcher


def release_linking_modules(*modules) -> int:
    """Wrap every ``parallel=True`` kernel defined in ``modules``; returns how many."""
    n = 0
    for mod in modules:
        for obj in vars(mod).values():
            if (isinstance(obj, Dispatcher) and obj.targetoptions.get("parallel")
                    and getattr(obj.py_func, "__module__", None) == mod.__name__
                    and "compile" not in vars(obj)
                    and hasattr(obj, "_cache_hits")):
                _wrap(obj)
                n += 1
    return n


def _wrap(disp: Dispatcher) -> None:
    numba_compile = disp.compile  # the bound method of Numba's class

    def compile(sig):
        hits = sum(disp._cache_hits.values())
        entry = numba_compile(sig)
        if sum(disp._cache_hits.values()) > hits:  # this call loaded an overload from disk
            for cres in disp.overloads.values():
                if cres.entry_point is entry:
                    library = cres.library
                    if getattr(library, "_shared_module", None) is not None:
                        library._shared_module = None
        return entry

    compile.__doc__ = numba_compile.__doc__
    disp.compile = compile
