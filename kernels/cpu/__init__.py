"""CPU kernels: ``@njit(parallel=True, cache=True)`` on NumPy arrays.

Each module keeps its own njit helpers, so that Numba's on-disk cache (which hashes a kernel's
own file) is invalidated whenever anything a kernel uses changes.
"""
