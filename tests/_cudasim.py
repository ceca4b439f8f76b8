"""A fix for a race in Numba's CUDA simulator, applied by conftest.py when the tests simulate.

The simulator runs a block's threads as Python threads and gives them one shared array per
source line of ``cuda.shared.array``, looked up and, on the first call, created without a lock.
When the interpreter switches threads between the lookup and the store (likelier under load,
and with the short switch interval conftest sets), two threads of one block get different
arrays, so a block reduction sums stale values: CI saw ``math.log`` of a negative softmax
denominator about once in a few hundred launches. This makes the lookup and the store one
step. It changes nothing on a GPU.
"""

import sys
import threading
import traceback

import numpy as np

_lock = threading.Lock()


def patch_shared_arrays() -> bool:
    """Replace the simulator's ``cuda.shared.array`` with a locked twin; False if there is
    no simulator to patch."""
    try:
        from numba.core import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
    except ImportError:
        return False
    fake = getattr(kernelapi, "FakeCUDAShared", None)
    if fake is None or getattr(fake.array, "_numbaconv_locked", False):
        return fake is not None

    def array(self, shape, dtype, alignment=None):
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:  # dynamic shared memory: one buffer for all
            count = self._dynshared_size // dtype.itemsize
            return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
        # one array per calling source line, as the simulator does (this function must be
        # called directly from the kernel for the caller's frame to be stack[-2])
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with _lock:
            res = self._allocations.get(caller)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    array._numbaconv_locked = True
    fake.array = array
    return True
