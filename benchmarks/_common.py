"""Timing helpers shared by the benchmarks: thread control and medians after warm-up."""

from __future__ import annotations

import statistics
import time


def set_threads(n: int) -> None:
    """Limit numbaconv (Numba + BLAS) and PyTorch to ``n`` threads."""
    import numba

    numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


def median_time(fn, warmup: int = 2, repeats: int = 7, min_time: float = 0.3,
                warmup_time: float = 0.3) -> float:
    """Median seconds per call after a warm-up of at least ``warmup`` calls and
    ``warmup_time`` seconds (the first calls that fault in fresh memory can be 4x slower
    while the kernel assembles transparent huge pages); repeats until ``min_time`` has
    passed."""
    start = time.perf_counter()
    done = 0
    while done < warmup or (time.perf_counter() - start < warmup_time and done < 50):
        fn()
        done += 1
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns, rounds: int = 9, min_time: float = 0.03,
                        warmup_time: float = 0.3) -> list:
    """Median seconds per call of each of ``fns``, measured in alternation: each of ``rounds``
    rounds times every function in turn over at least ``min_time`` (the median call of
    that stretch), after a warm-up of each (as in median_time). Functions compared this way
    see the same machine state (clock, other load, cache), so their ratio moves less from run
    to run than that of timings taken one after the other."""
    for fn in fns:
        median_time(fn, repeats=1, min_time=0, warmup_time=warmup_time)
    per_round = [[] for _ in fns]
    for _ in range(rounds):
        for times, fn in zip(per_round, fns):
            stretch = []
            start = time.perf_counter()
            while not stretch or (time.perf_counter() - start < min_time and len(stretch) < 50):
                t0 = time.perf_counter()
                fn()
                stretch.append(time.perf_counter() - t0)
            times.append(statistics.median(stretch))
    return [statistics.median(times) for times in per_round]


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
                         for i in infos)
    except ImportError:  # pragma: no cover
        return "unknown (install threadpoolctl)"
