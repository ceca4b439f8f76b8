"""numbaconv's kernels: pure functions on arrays that know nothing of Tensor or autograd.

``cpu/``  Numba ``@njit`` kernels on NumPy arrays.
``reference.py``  slow, obviously-correct NumPy versions: the oracle of the tests.

Installed as ``numbaconv.kernels`` (this folder sits at the top of the repository).
"""
