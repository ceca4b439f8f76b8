"""CUDA kernels (``numba.cuda``) on device arrays, one thread per output element unless a
module says otherwise. Each module exposes ``kernels(dtype)``: the kernels specialised to one
floating dtype, whose constants are typed from it (``T(0)``), so a float32 kernel never computes
in float64. Shapes and strides arrive as tuples of ints; outputs are allocated by the caller.
"""
