"""CPU kernels: ``@njit(parallel=True, cache=True)`` on NumPy arrays.

One module (or package) per op family, the stem used in every layer: ``conv/`` (its
strategies, their plan and layout helpers), ``pool.py``, ``norm.py``, ``elementwise.py``,
``linalg.py`` (matrix products), ``loss.py``, ``optim.py``, ``random.py``; beside them
``blas.py`` (NumPy's BLAS called from kernels), ``threads.py`` (thread control, worker pool,
task ranges), ``jit.py`` (the shared Numba options and helpers, and cache keys that cover the
helpers a kernel takes from other files) and ``loading.py``.
"""
