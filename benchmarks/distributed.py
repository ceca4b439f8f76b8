"""Data-parallel scaling on MPI: measured on this machine, projected to a cluster.

Trains ResNet-mini-8 (batch 128 per rank, Fashion-MNIST-sized random images, SGD with momentum)
with 1 rank x 1 thread and with N ranks x 1 thread (mpiexec, default N = 2), and prints the
images/s of each and the scaling efficiency: N-rank images/s over N times the 1-rank figure
(medians of 5 blocks of steps after a warm-up; the best of two rounds run in alternation).
The N-rank run goes twice: with BatchNorm's per-rank statistics (DistributedDataParallel's
default, as PyTorch's) and with SyncBatchNorm, whose every layer waits for all ranks twice per
step. For the N-rank run it prints the communication
per step: the time a step spends waiting for DistributedDataParallel's all-reduces (what
backward did not hide), the time of a bare all-reduce of the same gradient bytes, and the bytes
each rank sends (a ring all-reduce sends 2(N-1)/N times the gradient bytes).

Then it projects ResNet-18 (11.7 M parameters, 46.8 MB of float32 gradients in two 25 MB
buckets) at 8, 64 and 256 ranks on 25 Gb/s Ethernet and 200 Gb/s InfiniBand, from its compute
time per step measured here (batch 16 at 224x224, all cores) and the ring all-reduce cost model,
per bucket: 2(p-1)/p x bytes / bandwidth + 2(p-1) x latency. A projection, not a measurement:
it assumes the measured compute time per rank, no overlap of communication with backward
(pessimistic) and, alternatively, all but the last bucket hidden behind backward.

    python benchmarks/distributed.py            # needs the distributed extra (mpiexec)
    python benchmarks/distributed.py --ranks 2 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 128
NETWORKS = {"25 Gb/s Ethernet": (25e9 / 8, 25e-6), "200 Gb/s InfiniBand": (200e9 / 8, 2e-6)}


def worker(steps: int, out: str, sync_bn: bool) -> None:
    """One rank: time blocks of training steps; rank 0 writes the figures."""
    import numba

    import numbaconv as nc
    from numbaconv import distributed as dist
    from numbaconv import models, nn, optim
    from numbaconv.functional import cross_entropy

    dist.init_process_group()
    numba.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    nc.manual_seed(0)
    net = models.resnet_mini(8)
    if sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = nn.parallel.DistributedDataParallel(net)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(rank)
    x = nc.tensor(rng.random((BATCH, 1, 28, 28), dtype=np.float32))
    y = nc.tensor(rng.integers(0, 10, BATCH))
    waited = [0.0]
    real_wait = dist._wait

    def timed_wait(request, what):
        t0 = time.perf_counter()
        real_wait(request, what)
        waited[0] += time.perf_counter() - t0

    dist._wait = timed_wait

    def step():
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 3.0:  # warm-up: kernels loaded, memory faulted in
        step()
    blocks, waits = [], []
    for _ in range(5):
        dist.barrier()
        waited[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = float(dist._allreduce_now([time.perf_counter() - t0], "max")[0])
        blocks.append(elapsed / steps)
        waits.append(waited[0] / steps)
    grad_bytes = sum(p.numel() * p.dtype.itemsize for p in model.parameters())
    buf = np.zeros(grad_bytes // 4, np.float32)
    bare = []
    for _ in range(20):
        dist.barrier()
        t0 = time.perf_counter()
        request = dist._allreduce_array(buf)
        if request is not None:
            real_wait(request, "bare all-reduce")
        bare.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps({
            "world": world, "step_s": statistics.median(blocks),
            "images_per_s": world * BATCH / statistics.median(blocks),
            "wait_s": statistics.median(waits), "bare_allreduce_s": statistics.median(bare),
            "grad_bytes": grad_bytes, "buckets": model.bucket_sizes}))


def resnet18_compute_s(batch: int = 16, repeats: int = 3) -> float:
    """Seconds per training step of ResNet-18 at 224x224 on this machine (all its cores)."""
    import numbaconv as nc
    from numbaconv import models, optim
    from numbaconv.functional import cross_entropy

    nc.manual_seed(0)
    model = models.resnet18()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = nc.tensor(np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32))
    y = nc.tensor(np.arange(batch) % 1000)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step compiles
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ring_allreduce_s(nbytes: float, p: int, bandwidth: float, latency: float,
                     bucket: float = 25 * 2 ** 20) -> tuple[float, float]:
    """(all buckets, the last bucket alone) seconds of ring all-reduces of ``nbytes``."""
    sizes = [bucket] * int(nbytes // bucket) + ([nbytes % bucket] if nbytes % bucket else [])

    def one(b):
        return 2 * (p - 1) / p * b / bandwidth + 2 * (p - 1) * latency

    return sum(one(b) for b in sizes), one(sizes[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the parallel run")
    ap.add_argument("--steps", type=int, default=8, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=2,
                    help="measurements of each configuration, alternating; the best counts "
                         "(other load on the machine only ever slows a round down)")
    ap.add_argument("--no-projection", action="store_true", help="skip ResNet-18's timing")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sync-bn", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.steps, args.worker, args.sync_bn)
        return
    mpiexec = Path(sys.executable).with_name("mpiexec")
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install -e '.[distributed]'")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    results = {}
    for _ in range(args.rounds):  # alternating, keeping each configuration's best round
        for n, sync in ((1, False), (args.ranks, False), (args.ranks, True)):
            out = Path(f"/tmp/numbaconv_dist_bench_{os.getpid()}_{n}.json")
            subprocess.run([mpiexec, "-n", str(n), sys.executable, __file__, "--worker",
                            str(out), "--steps", str(args.steps)]
                           + (["--sync-bn"] if sync else []), env=env, check=True)
            res = json.loads(out.read_text())
            out.unlink()
            best = results.get((n, sync))
            if best is None or res["images_per_s"] > best["images_per_s"]:
                results[n, sync] = res
    one = results[1, False]
    print(f"ResNet-mini-8, batch {BATCH} per rank, 1 thread per rank, {os.cpu_count()} cores")
    print(f"  {'1 rank':22s}: {one['images_per_s']:6.0f} images/s "
          f"({one['step_s'] * 1e3:.0f} ms/step)")
    for sync in (False, True):
        many = results[args.ranks, sync]
        eff = many["images_per_s"] / (args.ranks * one["images_per_s"])
        label = f"{args.ranks} ranks, " + ("SyncBatchNorm" if sync else "BatchNorm")
        print(f"  {label:22s}: {many['images_per_s']:6.0f} images/s "
              f"({many['step_s'] * 1e3:.0f} ms/step)  scaling efficiency {eff:.2f}"
              + ("  (bar: 0.85)" if not sync else "  (2 all-reduces per BN layer)"))
    many = results[args.ranks, False]
    sent = 2 * (args.ranks - 1) / args.ranks * many["grad_bytes"]
    print(f"  communication per step: {many['wait_s'] * 1e3:.2f} ms waiting for the "
          f"all-reduces after backward; a bare all-reduce of the {many['grad_bytes'] / 1e3:.0f} "
          f"kB of gradients takes {many['bare_allreduce_s'] * 1e3:.2f} ms; each rank sends "
          f"{sent / 1e3:.0f} kB ({len(many['buckets'])} bucket(s))")
    if args.no_projection:
        return
    compute = resnet18_compute_s()
    nbytes = 11_689_512 * 4
    print(f"\nProjection (not measured): ResNet-18, batch 16 per rank at 224x224, "
          f"{compute:.2f} s of compute per step measured on this machine; "
          f"{nbytes / 1e6:.1f} MB of gradients")
    print(f"  {'network':22s} {'ranks':>5s}  {'all-reduce':>10s}  {'efficiency':>10s} "
          f"{'(overlapped)':>12s}  {'images/s':>9s}")
    for name, (bw, lat) in NETWORKS.items():
        for p in (8, 64, 256):
            total, last = ring_allreduce_s(nbytes, p, bw, lat)
            pessimistic = compute / (compute + total)
            overlapped = compute / (compute + max(last, total - 2 / 3 * compute))
            print(f"  {name:22s} {p:5d}  {total * 1e3:8.1f} ms  {pessimistic:10.3f} "
                  f"{overlapped:12.3f}  {p * 16 / (compute + total):9.0f}")


if __name__ == "__main__":
    main()
