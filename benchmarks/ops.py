"""numbaconv vs PyTorch, op by op, side by side in one process.

For each convolution, pooling and LRN shape: median milliseconds of the forward and of the
forward+backward pass for both libraries, at 2 threads and at 1, and the ratio
numbaconv/PyTorch (below 1.0: numbaconv is faster). The four are timed in alternation, nine
rounds of at least 30 ms each, so that drift of the machine's speed during a run moves both
libraries alike. Compile time (the first call, which includes Numba's JIT or cache load) is
reported separately and excluded from the medians.

    python benchmarks/ops.py                 # everything
    python benchmarks/ops.py --only conv --threads 2

On machines where OPENBLAS_CORETYPE is set to an older core, NumPy's BLAS runs slower kernels
than the processor allows: unset it (and OPENBLAS_L2_SIZE) for this command to compare fairly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import blas_info, interleaved_medians, median_time, set_threads  # noqa: E402

import numbaconv as nc  # noqa: E402
import numbaconv.functional as F  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover
    torch = None

# (N, C, H, W, C_out, k, stride, pad, dilation, groups, label)
CONV_SHAPES = [
    (64, 1, 28, 28, 6, 5, 1, 2, 1, 1, "lenet conv1"),
    (64, 6, 14, 14, 16, 5, 1, 0, 1, 1, "lenet conv2"),
    (64, 16, 32, 32, 16, 3, 1, 1, 1, 1, "3x3 16ch"),
    (64, 32, 16, 16, 32, 3, 1, 1, 1, 1, "3x3 32ch"),
    (64, 64, 8, 8, 64, 3, 1, 1, 1, 1, "3x3 64ch"),
    (64, 16, 32, 32, 32, 3, 2, 1, 1, 1, "3x3 stride 2"),
    (64, 64, 8, 8, 128, 1, 1, 0, 1, 1, "1x1"),
    (16, 3, 224, 224, 64, 11, 4, 2, 1, 1, "alexnet conv1"),
    (32, 16, 32, 32, 16, 3, 1, 2, 2, 1, "dilation 2"),
    (32, 32, 32, 32, 32, 3, 1, 1, 1, 32, "depthwise"),
]
# (kind, N, C, H, W, kernel, stride, label)
POOL_SHAPES = [
    ("max", 64, 16, 32, 32, 2, 2, "max 2/2"),
    ("max", 64, 64, 55, 55, 3, 2, "max 3/2 alexnet"),
    ("avg", 64, 16, 32, 32, 2, 2, "avg 2/2"),
    ("avg", 64, 64, 55, 55, 3, 2, "avg 3/2"),
    ("lrn", 64, 64, 27, 27, 5, None, "lrn size 5"),
]


def conv_cases(rng):
    for n, c, h, w, o, k, s, p, d, g, label in CONV_SHAPES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (rng.standard_normal((o, c // g, k, k)) * 0.1).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        kw = dict(stride=s, padding=p, dilation=d, groups=g)
        oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
        ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
        flops = 2 * n * o * oh * ow * (c // g) * k * k
        yield (label, (x, wt, b), lambda X, W, B, kw=kw: F.conv2d(X, W, B, **kw),
               lambda X, W, B, kw=kw: TF.conv2d(X, W, B, **kw), flops)


def pool_cases(rng):
    for kind, n, c, h, w, k, s, label in POOL_SHAPES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        if kind == "max":
            ours, theirs = (lambda X, k=k, s=s: F.max_pool2d(X, k, s),
                            lambda X, k=k, s=s: TF.max_pool2d(X, k, s))
        elif kind == "avg":
            ours, theirs = (lambda X, k=k, s=s: F.avg_pool2d(X, k, s),
                            lambda X, k=k, s=s: TF.avg_pool2d(X, k, s))
        else:
            ours, theirs = (lambda X, k=k: F.local_response_norm(X, k),
                            lambda X, k=k: TF.local_response_norm(X, k))
        yield label, (x,), ours, theirs, None


def run_case(label, arrays, ours, theirs, flops, threads):
    set_threads(threads)
    nx = [nc.tensor(a, requires_grad=True) for a in arrays]
    t0 = time.perf_counter()
    y = ours(*nx)
    compile_s = time.perf_counter() - t0
    gy = nc.tensor(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    t0 = time.perf_counter()
    y.backward(gy)
    compile_s += time.perf_counter() - t0

    def nc_fwd():
        with nc.no_grad():
            ours(*nx)

    def nc_fwd_bwd():
        for t in nx:
            t.grad = None
        ours(*nx).backward(gy)

    row = {"label": label, "threads": threads, "compile_s": compile_s}
    if torch is None:
        row["nc_fwd"], row["nc_fb"] = interleaved_medians([nc_fwd, nc_fwd_bwd])
    else:
        tx = [torch.tensor(a, requires_grad=True) for a in arrays]
        tg = torch.tensor(gy.numpy())

        def th_fwd():
            with torch.no_grad():
                theirs(*tx)

        def th_fwd_bwd():
            for t in tx:
                t.grad = None
            theirs(*tx).backward(tg)

        # in alternation, so that both libraries are timed in the same state of the machine
        row["nc_fwd"], row["th_fwd"], row["nc_fb"], row["th_fb"] = interleaved_medians(
            [nc_fwd, th_fwd, nc_fwd_bwd, th_fwd_bwd])
    if flops:
        row["gflops_fwd"] = flops / row["nc_fwd"] / 1e9
    return row


def sgemm_gflops(threads: int) -> float:
    set_threads(threads)
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    t = median_time(lambda: a @ a)
    return 2 * 1024 ** 3 / t / 1e9


def print_rows(title, rows):
    print(f"\n{title}")
    head = (f"{'shape':18s} {'thr':>3s} {'nc fwd':>8s} {'pt fwd':>8s} {'ratio':>6s}   "
            f"{'nc f+b':>8s} {'pt f+b':>8s} {'ratio':>6s}  {'GFLOP/s':>7s} {'compile':>7s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        rf = r["nc_fwd"] / r["th_fwd"] if "th_fwd" in r else float("nan")
        rb = r["nc_fb"] / r["th_fb"] if "th_fb" in r else float("nan")
        print(f"{r['label']:18s} {r['threads']:3d} {r['nc_fwd'] * 1e3:8.2f} "
              f"{r.get('th_fwd', float('nan')) * 1e3:8.2f} {rf:6.2f}   {r['nc_fb'] * 1e3:8.2f} "
              f"{r.get('th_fb', float('nan')) * 1e3:8.2f} {rb:6.2f}  "
              f"{r.get('gflops_fwd', float('nan')):7.1f} {r['compile_s']:6.2f}s")


def geomean(values):
    values = [v for v in values if v == v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--only", choices=["conv", "pool"], default=None)
    args = ap.parse_args(argv)
    print(f"numbaconv {nc.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
          f"BLAS: {blas_info()}")
    rng = np.random.default_rng(0)
    for threads in args.threads:
        print(f"\nnumpy float32 1024^3 matmul, {threads} thread(s): "
              f"{sgemm_gflops(threads):.1f} GFLOP/s")
        if args.only in (None, "conv"):
            rows = [run_case(*case, threads) for case in conv_cases(rng)]
            print_rows(f"conv2d, {threads} thread(s), float32, ms (ratio = numbaconv / PyTorch)",
                       rows)
            if torch is not None:
                fb = [r["nc_fb"] / r["th_fb"] for r in rows]
                print(f"geometric mean ratio: forward "
                      f"{geomean([r['nc_fwd'] / r['th_fwd'] for r in rows]):.2f}, "
                      f"forward+backward {geomean(fb):.2f}; worst f+b {max(fb):.2f}")
        if args.only in (None, "pool"):
            rows = [run_case(*case, threads) for case in pool_cases(rng)]
            print_rows(f"pooling and LRN, {threads} thread(s)", rows)


if __name__ == "__main__":
    main()
