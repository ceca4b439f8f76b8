"""One rank of the multi-process tests in test_distributed.py (run under mpiexec).

    mpiexec -n 2 python tests/_dist_worker.py CASE OUT_DIR [ARGS...]

Each case writes what the test checks into OUT_DIR (rank 0, or one file per rank).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import numbaconv as nc
from numbaconv import data, nn, optim
from numbaconv import distributed as dist
from numbaconv.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(__file__))
from helpers_dist import make_data, make_net, train_steps  # noqa: E402


def collectives(out: Path):
    r, w = dist.get_rank(), dist.get_world_size()
    res = {}
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        base = np.arange(6, dtype=dt).reshape(2, 3) * (r + 1) - r
        for op in ("sum", "mean", "max", "min"):
            t = nc.tensor(base.copy())
            dist.all_reduce(t, op)
            res[f"{op}_{name}"] = t.numpy().tolist()
        t = nc.tensor(base.copy())
        work = dist.all_reduce(t, "sum", async_op=True)
        work.wait()
        res[f"async_{name}"] = t.numpy().tolist()
        t = nc.tensor(base.copy() + 100)
        dist.broadcast(t, src=w - 1)
        res[f"bcast_{name}"] = t.numpy().tolist()
        parts = [nc.zeros(2, 3, dtype=dt) for _ in range(w)]
        dist.all_gather(parts, nc.tensor(base.copy()))
        res[f"gather_{name}"] = [p.numpy().tolist() for p in parts]
    t = nc.tensor(np.array([r + 1, 10 * r], dtype=np.int64))
    dist.all_reduce(t, "max")
    res["max_int64"] = t.numpy().tolist()
    dist.barrier()

    # DDP: 40 small parameters and one larger than a bucket; each rank's gradient differs
    class Many(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.ModuleList([nn.Linear(3, 3) for _ in range(20)])
            self.big = nn.Linear(3, 600)

        def forward(self, x):
            for lin in self.small:
                x = lin(x).tanh()
            return self.big(x).sum(1)

    nc.manual_seed(5 + r)  # different initial weights: DDP must broadcast rank 0's
    model = Many()
    ddp = DDP(model, bucket_cap_mb=4096 / 2 ** 20)  # 4 KiB buckets: big (7.2 KB) alone
    x = nc.tensor(np.random.default_rng(r).normal(size=(4, 3)).astype(np.float32))
    # overlap: how many gradients backward had still to produce as each bucket started
    pending_at_start, start = [], dist._allreduce_array

    def recording(buf, op="sum"):
        pending_at_start.append(sum(p.grad is None for p in model.parameters()))
        return start(buf, op)

    dist._allreduce_array = recording
    ddp(x).sum().backward()
    dist._allreduce_array = start
    res["pending_at_start"] = pending_at_start
    res["buckets"] = ddp.bucket_sizes
    res["params"] = [p.numpy().tolist() for p in model.parameters()]
    res["grads"] = [p.grad.numpy().tolist() for p in model.parameters()]
    res["x"] = x.numpy().tolist()
    res["state_keys"] = list(ddp.state_dict())[:2]
    # no_sync: the first backward stays local, the next averages both
    model.zero_grad()
    with ddp.no_sync():
        ddp(x).sum().backward()
    res["local_grad"] = model.big.bias.grad.numpy().tolist()
    ddp(x).sum().backward()
    res["accumulated_grad"] = model.big.bias.grad.numpy().tolist()
    (out / f"collectives.{r}.json").write_text(json.dumps(res))


def equivalence(out: Path, opt_name: str, bn: str):
    """2 ranks x batch 32 (DistributedSampler, DDP, SyncBatchNorm where the net has BN)."""
    x, y = make_data()
    nc.manual_seed(0)
    model = make_net(bn == "bn")
    if bn == "bn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DDP(model)
    sampler = data.DistributedSampler(data.TensorDataset(x, y), shuffle=False)
    loader = data.DataLoader(data.TensorDataset(x, y), 32, sampler=sampler)
    train_steps(ddp, loader, opt_name)
    if dist.get_rank() == 0:
        np.savez(out / "params.npz", *[t.numpy() for t in model.state_dict().values()])


def fit_checkpoint(out: Path, epochs: int, resume: str):
    from numbaconv import train

    writes = []
    real = train._atomic_write
    train._atomic_write = lambda path, write: (writes.append(str(path)), real(path, write))
    x, y = make_data()
    nc.manual_seed(0)
    model = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(make_net(True)))
    ds = data.TensorDataset(x, y)
    loader = data.DataLoader(ds, 32, sampler=data.DistributedSampler(ds, seed=3))
    val = data.DataLoader(ds, 100, sampler=data.DistributedSampler(ds, shuffle=False))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = train.fit(model, loader, opt, epochs, val_loader=val, checkpoint=out / "ckpt.npz",
                     resume=resume == "resume", progress=True,
                     history_path=out / "history.json")
    (out / f"fit.{dist.get_rank()}.json").write_text(json.dumps(
        {"writes": writes, "history": hist, "val": train.evaluate(model, val)}))


def fault(out: Path, how: str):
    x, y = make_data()
    nc.manual_seed(0)
    ddp = DDP(make_net(False))
    opt = optim.SGD(ddp.parameters(), lr=0.05)
    ds = data.TensorDataset(x, y)
    loader = data.DataLoader(ds, 32, sampler=data.DistributedSampler(ds))
    for step, (xb, yb) in enumerate(loader):
        if step == 3 and dist.get_rank() == 1:
            if how == "raise":
                raise ValueError("an error on rank 1 in the middle of training")
            if how == "hang":  # alive but silent: rank 0's all-reduce times out
                time.sleep(600)
            os.kill(os.getpid(), signal.SIGKILL)
        loss = nn.functional.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (out / f"finished.{dist.get_rank()}").write_text("the other rank never stopped")


def device(out: Path, dev: str):
    """DDP with SyncBatchNorm on ``dev`` tensors (a GPU's are staged through host buffers)."""
    r = dist.get_rank()
    t = nc.tensor(np.full(3, r + 1, np.float32), device=dev)
    dist.all_reduce(t, "mean")
    nc.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * 4 * 4, 3)).to(dev)
    ddp = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(net))
    x = nc.tensor(np.random.default_rng(r).random((2, 1, 6, 6), dtype=np.float32), device=dev)
    ddp(x).sum().backward()
    res = {"mean": t.numpy().tolist(), "device": t.device,
           "grads": [p.grad.numpy().tolist() for p in net.parameters()],
           "running_var": net[1].running_var.numpy().tolist()}
    (out / f"device_{dev}.{r}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    case, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group(world_size=int(os.environ.get("EXPECT_RANKS", "2")))
    cases = {"collectives": collectives, "equivalence": equivalence, "fit": fit_checkpoint,
             "fault": fault, "device": device}
    cases[case](out, *[int(a) if a.isdigit() else a for a in sys.argv[3:]])
