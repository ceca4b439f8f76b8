"""``torch.cuda``-shaped helpers for the CUDA backend: device memory, synchronisation and a
per-kernel profiler.

>>> import numbaconv.cuda as ncuda
>>> with ncuda.profile() as prof:
...     train_step()
>>> print(prof.report())          # per kernel: launches, GPU ms; launches and allocations

``NUMBACONV_CUDA_PROFILE=1`` profiles a whole program and prints the table at exit.
Memory figures are those of numbaconv's caching allocator (0 where it is switched off with
``NUMBACONV_CUDA_ALLOCATOR=numba``).
"""

from __future__ import annotations

from contextlib import contextmanager

from .backend import get_backend


def _backend():
    return get_backend("cuda")


def is_available() -> bool:
    try:
        _backend()
        return True
    except RuntimeError:
        return False


def conv_algorithm(name: str | None = None) -> str:
    """How GEMM convolutions get their column matrix: ``"implicit"`` (the default: the GEMM
    reads it from the image as it loads) or ``"im2col"`` (written out first, then read; the
    environment variable ``NUMBACONV_CUDA_CONV=im2col`` starts with it). Returns the current
    one, after setting it when ``name`` is given."""
    return _backend().conv_algorithm(name)


def synchronize() -> None:
    """Wait for the GPU; raises a device-side error (a bad class label) found meanwhile."""
    _backend().synchronize()


def memory_stats() -> dict:
    """allocated_bytes, peak_allocated_bytes, reserved_bytes, allocations (served),
    driver_allocations (that reached cuMemAlloc), launches (kernels so far)."""
    return _backend().memory_stats()


def memory_allocated() -> int:
    """Bytes in device arrays alive now (rounded to the allocator's size classes)."""
    return int(memory_stats().get("allocated_bytes", 0))


def max_memory_allocated() -> int:
    return int(memory_stats().get("peak_allocated_bytes", 0))


def memory_reserved() -> int:
    """Bytes the allocator holds from the driver, in use or cached for reuse."""
    return int(memory_stats().get("reserved_bytes", 0))


def reset_peak_memory_stats() -> None:
    _backend().reset_peak_memory()


def empty_cache() -> None:
    """Return cached free blocks to the driver (arrays alive keep theirs)."""
    _backend().empty_cache()


class ProfileResult:
    rows: list[tuple[str, int, float]]
    launches: int
    allocations: int

    def __init__(self):
        self.rows, self.launches, self.allocations = [], 0, 0

    def report(self) -> str:
        return format_profile(self.rows, self.launches, self.allocations)


@contextmanager
def profile():
    """Record every kernel launched inside the block with CUDA events; the result's ``rows``
    are (kernel, launches, GPU ms), most expensive first."""
    be = _backend()
    result = ProfileResult()
    be.profile_start()
    try:
        yield result
    finally:
        result.rows, result.launches, result.allocations = be.profile_stop()


def format_profile(rows, launches: int, allocations: int) -> str:
    total = sum(r[2] for r in rows) or 1e-30
    lines = [f"{'kernel':40s} {'launches':>8s} {'GPU ms':>9s} {'share':>6s}"]
    for name, count, ms in rows:
        lines.append(f"{name:40s} {count:8d} {ms:9.3f} {100 * ms / total:5.1f}%")
    lines.append(f"{launches} launches, {allocations} device allocations, "
                 f"{sum(r[2] for r in rows):.3f} ms of GPU time")
    return "\n".join(lines)
