"""Training throughput: numbaconv vs PyTorch on the same CPU, same model, data and optimizer.

For LeNet-5 (batch 64 and 256) and ResNet-mini-8 (batch 128) on Fashion-MNIST batches, both
libraries train the same architecture from the same initial weights with SGD (momentum 0.9),
alternating blocks of steps in one process, at 2 threads and at 1. Prints the median images/s
of each and the ratio (above 1.0: numbaconv is faster). With ``--rss`` it also runs each library
alone in a subprocess and reports its peak resident memory (numbaconv's with its kernels cached,
and while compiling them on an empty cache) and the time from process start to
the end of the first training step (numbaconv with an empty and with a warm Numba cache), and
the images/s of each library alone in its own process (median of five blocks of 100 steps
after a warm-up of a second). The alone
figures matter because importing numbaconv changes two process-wide settings that speed up
PyTorch too when both share a process: glibc keeps freed memory for reuse (see
numbaconv/backend/cpu.py) and OpenMP spins for less time (numbaconv/__init__.py).

    python benchmarks/train.py
    python benchmarks/train.py --models lenet --threads 2 --rss
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import blas_info, set_threads  # noqa: E402

CONFIGS = {"lenet": [("LeNet-5", 64), ("LeNet-5", 256)], "resnet": [("ResNet-mini-8", 128)]}


def batches(batch_size, n_batches, seed=0):
    """Real Fashion-MNIST batches when the dataset is installed, else random images (read
    with the IDX reader alone, so that a PyTorch-only process does not load numbaconv)."""
    rng = np.random.default_rng(seed)
    try:
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "numbaconv", "data", "idx.py")
        spec = importlib.util.spec_from_file_location("_idx", path)
        idx_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(idx_mod)
        root = "/usr/share/datasets/fashion-mnist/"
        images = idx_mod.read_idx(root + "train-images-idx3-ubyte.gz")
        labels = idx_mod.read_idx(root + "train-labels-idx1-ubyte.gz").astype(np.int64)
        idx = rng.permutation(len(images))[: batch_size * n_batches]
        x = ((images[idx].astype(np.float32) / 255 - 0.286) / 0.353)[:, None]
        y = labels[idx]
    except (FileNotFoundError, ImportError, AttributeError):
        x = rng.standard_normal((batch_size * n_batches, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, batch_size * n_batches)
    return [(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size])
            for i in range(n_batches)]


def numbaconv_model(name):
    from numbaconv import models

    return models.lenet5() if name == "LeNet-5" else models.resnet_mini(8)


def torch_model(name):
    import torch.nn as tnn

    if name == "LeNet-5":
        class LeNet(tnn.Module):  # numbaconv.models.LeNet5's structure and parameter names
            def __init__(self):
                super().__init__()
                self.features = tnn.Sequential(
                    tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                    tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2))
                self.classifier = tnn.Sequential(
                    tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84),
                    tnn.ReLU(), tnn.Linear(84, 10))

            def forward(self, x):
                return self.classifier(self.features(x))

        return LeNet()

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                              tnn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else tnn.Identity())

        def forward(self, x):
            out = self.bn1(self.conv1(x)).relu()
            return (self.bn2(self.conv2(out)) + self.downsample(x)).relu()

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(1, 16, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            self.layer1 = tnn.Sequential(Block(16, 16, 1))
            self.layer2 = tnn.Sequential(Block(16, 32, 2))
            self.layer3 = tnn.Sequential(Block(32, 64, 2))
            self.pool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(64, 10)

        def forward(self, x):
            x = self.bn1(self.conv1(x)).relu()
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(self.pool(x).flatten(1))

    return Net()


def make_steps(name, batch_size, data):
    import torch

    import numbaconv as nc
    from numbaconv import optim
    from numbaconv.nn import functional as F

    nc.manual_seed(0)
    ours = numbaconv_model(name)
    theirs = torch_model(name)
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    o_opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    nc_data = [(nc.tensor(x), nc.tensor(y)) for x, y in data]
    th_data = [(torch.tensor(x), torch.tensor(y)) for x, y in data]

    def nc_step(i):
        x, y = nc_data[i % len(nc_data)]
        loss = F.cross_entropy(ours(x), y)
        o_opt.zero_grad()
        loss.backward()
        o_opt.step()

    def th_step(i):
        x, y = th_data[i % len(th_data)]
        loss = torch.nn.functional.cross_entropy(theirs(x), y)
        t_opt.zero_grad()
        loss.backward()
        t_opt.step()

    return nc_step, th_step


def throughput(threads, names, rounds=5, steps=20):
    set_threads(threads)
    rows = []
    for key in names:
        for name, bs in CONFIGS[key]:
            data = batches(bs, 8)
            nc_step, th_step = make_steps(name, bs, data)
            for i in range(3):  # warm-up (and JIT)
                nc_step(i)
                th_step(i)
            rates = {"nc": [], "th": []}
            for _ in range(rounds):  # alternate blocks so drift hits both alike
                for key2, step in (("nc", nc_step), ("th", th_step)):
                    t0 = time.perf_counter()
                    for i in range(steps):
                        step(i)
                    rates[key2].append(steps * bs / (time.perf_counter() - t0))
            nc_rate, th_rate = statistics.median(rates["nc"]), statistics.median(rates["th"])
            rows.append((name, bs, threads, nc_rate, th_rate))
            print(f"{name:14s} batch {bs:4d}  threads {threads}  numbaconv {nc_rate:8.0f} img/s"
                  f"  PyTorch {th_rate:8.0f} img/s  ratio {nc_rate / th_rate:5.2f}", flush=True)
    return rows


_CHILD = r"""
import os, resource, sys, time
t_start = float(sys.argv[3])
lib, name = sys.argv[1], sys.argv[2]
sys.path.insert(0, {bench!r})
import train as B
threads = int(sys.argv[4])
bs = 64 if name == "LeNet-5" else 128
data = B.batches(bs, 20)
if lib == "numbaconv":  # only the library under test is imported: its own memory is measured
    import numba
    numba.set_num_threads(threads)
    import numbaconv as nc
    from numbaconv import optim
    from numbaconv.nn import functional as F
    nc.manual_seed(0)
    model = B.numbaconv_model(name)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    def step(x, y):
        loss = F.cross_entropy(model(nc.tensor(x)), nc.tensor(y))
        opt.zero_grad(); loss.backward(); opt.step()
else:
    import torch
    torch.set_num_threads(threads)
    model = B.torch_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    def step(x, y):
        loss = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(y))
        opt.zero_grad(); loss.backward(); opt.step()
step(*data[0])
first = time.time() - t_start
# warm-up of at least a second (fresh memory is faulted in and huge pages assembled over the
# first steps), then the median of five blocks of 100 steps
t0, i = time.perf_counter(), 0
while time.perf_counter() - t0 < 1.0 or i < 20:
    step(*data[i % len(data)])
    i += 1
rates = []
for _ in range(5):
    t0 = time.perf_counter()
    for i in range(100):
        step(*data[i % len(data)])
    rates.append(100 * bs / (time.perf_counter() - t0))
rate = sorted(rates)[2]
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the (large) parent's pages
# that this child shared between fork and exec
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
print(first, int(hwm[0].split()[1]) / 1024 if hwm else
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rate)
"""


def child(lib, name, threads, cache_dir=None):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    code = _CHILD.replace("{bench!r}", repr(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code, lib, name, repr(time.time()),
                          str(threads)], capture_output=True, text=True, env=env, check=True)
    first, rss, rate = out.stdout.split()
    return float(first), float(rss), float(rate)


def memory_and_startup(names, threads):
    for key in names:
        name = CONFIGS[key][0][0]
        with tempfile.TemporaryDirectory() as cache:
            cold, rss_cold, _ = child("numbaconv", name, threads, cache)
            warm, rss, rate = child("numbaconv", name, threads, cache)
        t_first, t_rss, t_rate = child("torch", name, threads)
        print(f"{name:14s} peak RSS numbaconv {rss:6.0f} MiB  PyTorch {t_rss:6.0f} MiB  "
              f"(ratio {rss / t_rss:.2f}; numbaconv compiling its kernels: {rss_cold:.0f} MiB)")
        print(f"{'':14s} start to first step: numbaconv cold {cold:5.1f} s, warm {warm:4.1f} s, "
              f"PyTorch {t_first:4.1f} s")
        print(f"{'':14s} each library alone in its own process: numbaconv {rate:6.0f} img/s  "
              f"PyTorch {t_rate:6.0f} img/s  ratio {rate / t_rate:5.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rss", action="store_true", help="peak memory and start-up time too")
    args = ap.parse_args(argv)
    import torch

    import numbaconv

    print(f"numbaconv {numbaconv.__version__}, torch {torch.__version__}, BLAS: {blas_info()}")
    for t in args.threads:
        throughput(t, args.models, args.rounds)
    if args.rss:
        memory_and_startup(args.models, args.threads[0])


if __name__ == "__main__":
    main()
