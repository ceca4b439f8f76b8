"""numbaconv.distributed, DistributedDataParallel, SyncBatchNorm and DistributedSampler.

The multi-process tests launch 2 ranks on this machine with mpiexec (MPICH from PyPI, through
the ``distributed`` extra; loopback only) running tests/_dist_worker.py, and compare what the
ranks wrote with a single-process run computed here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import data, nn, optim
from numbaconv import distributed as dist
from numbaconv.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(__file__))
from helpers_dist import make_data, make_net, train_steps  # noqa: E402

WORKER = Path(__file__).with_name("_dist_worker.py")


def _mpiexec():
    found = Path(sys.executable).with_name("mpiexec")
    return str(found) if found.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    not dist.is_available() or _mpiexec() is None,
    reason="mpi4py and mpiexec are not installed (pip install -e '.[distributed]')")


def launch(case, out, *args, n=2, timeout=240, check=True):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               EXPECT_RANKS=str(n), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(WORKER), case,
                           str(out), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    proc.seconds = time.monotonic() - t0
    if check and proc.returncode != 0:
        raise AssertionError(f"mpiexec {case} failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


# ------------------------------------------------------------ a world of one (no launcher)

def test_world_of_one_without_a_launcher():
    dist.init_process_group()
    assert dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    t = nc.tensor(np.arange(4, dtype=np.float32))
    dist.all_reduce(t, "mean")
    dist.broadcast(t, 0)
    parts = [nc.zeros(4)]
    dist.all_gather(parts, t)
    dist.barrier()
    np.testing.assert_array_equal(parts[0].numpy(), np.arange(4))
    # DDP in a world of one is the model itself
    x, y = make_data()
    nc.manual_seed(0)
    plain = train_steps(make_net(True), data.DataLoader(data.TensorDataset(x, y), 64), "sgd",
                        steps=3)
    nc.manual_seed(0)
    wrapped = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(make_net(True)))
    train_steps(wrapped, data.DataLoader(data.TensorDataset(x, y), 64), "sgd", steps=3)
    for a, b in zip(plain.state_dict().values(), wrapped.module.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert list(wrapped.state_dict())[0].startswith("module.")


def test_a_rank_started_alone_says_how_to_launch():
    with pytest.raises(RuntimeError, match=r"world_size=4 .* mpiexec -n 4"):
        dist.init_process_group(world_size=4)


def test_bad_arguments_are_named():
    dist.init_process_group()
    with pytest.raises(ValueError, match="op='median'"):
        dist.all_reduce(nc.zeros(2), "median")
    with pytest.raises(TypeError, match="must be a numbaconv Tensor"):
        dist.all_reduce(np.zeros(2))
    with pytest.raises(ValueError, match=r"src=3 must be a rank in \[0, 1\)"):
        dist.broadcast(nc.zeros(2), 3)
    with pytest.raises(ValueError, match="tensor_list must be a list of world_size=1"):
        dist.all_gather([nc.zeros(2), nc.zeros(2)], nc.zeros(2))
    with pytest.raises(ValueError, match="backend='gloo'"):
        dist.init_process_group("gloo")
    with pytest.raises(ValueError, match="bucket_cap_mb=0"):
        DDP(nn.Linear(2, 2), bucket_cap_mb=0)


# ------------------------------------------------------------ the sampler

@pytest.mark.parametrize("n, replicas, drop_last", [(10, 3, False), (10, 3, True), (11, 4, False),
                                                    (2, 5, False), (64, 2, True), (7, 1, False)])
def test_distributed_sampler_pads_and_splits_as_pytorch(n, replicas, drop_last):
    shares = [list(data.DistributedSampler(range(n), replicas, r, shuffle=False,
                                           drop_last=drop_last)) for r in range(replicas)]
    assert len({len(s) for s in shares}) == 1
    flat = [i for s in shares for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) == n // replicas * replicas
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // replicas) * replicas
    torch = pytest.importorskip("torch.utils.data")
    for r in range(replicas):
        assert shares[r] == list(torch.DistributedSampler(range(n), replicas, r, shuffle=False,
                                                          drop_last=drop_last))


def test_distributed_sampler_shuffles_by_epoch_alike_on_every_rank():
    a0, a1 = (data.DistributedSampler(range(50), 2, r, seed=4) for r in (0, 1))
    first = sorted(list(a0) + list(a1))
    assert first == list(range(50))
    before = list(a0)
    a0.set_epoch(1)
    assert list(a0) != before and len(list(a0)) == 25
    with pytest.raises(ValueError, match="rank=2"):
        data.DistributedSampler(range(5), 2, 2)
    with pytest.raises(ValueError, match="mutually exclusive"):
        data.DataLoader(range(5), 2, shuffle=True, sampler=a0)
    loader = data.DataLoader(data.TensorDataset(np.zeros((50, 1), np.float32),
                                                np.arange(50)), 10, sampler=a0)
    assert len(loader) == 3
    assert sorted(np.concatenate([y.numpy() for _, y in loader]).tolist()) == sorted(a0)


# ------------------------------------------------------------ 2 ranks

@needs_mpi
def test_collectives_and_bucketed_gradients_on_two_ranks(tmp_path):
    launch("collectives", tmp_path)
    res = [json.loads((tmp_path / f"collectives.{r}.json").read_text()) for r in (0, 1)]
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        locals_ = [np.arange(6, dtype=dt).reshape(2, 3) * (r + 1) - r for r in (0, 1)]
        want = {"sum": locals_[0] + locals_[1], "mean": (locals_[0] + locals_[1]) / 2,
                "max": np.maximum(*locals_), "min": np.minimum(*locals_)}
        for r in (0, 1):
            for op, w in want.items():
                np.testing.assert_array_equal(res[r][f"{op}_{name}"], w)
            np.testing.assert_array_equal(res[r][f"async_{name}"], want["sum"])
            np.testing.assert_array_equal(res[r][f"bcast_{name}"], locals_[1] + 100)
            np.testing.assert_array_equal(res[r][f"gather_{name}"], locals_)
        assert res[0]["max_int64"] == [2, 10]
    # buckets: the big layer alone, the small ones packed up to 4 KiB
    assert res[0]["buckets"] == res[1]["buckets"] and len(res[0]["buckets"]) >= 3
    assert max(res[0]["buckets"]) > 4096 and sorted(res[0]["buckets"])[-2] <= 4096
    # each bucket's all-reduce started while backward still had the layers below it to do
    pending = res[0]["pending_at_start"]
    assert len(pending) == len(res[0]["buckets"]) and pending[0] > 30
    assert pending == sorted(pending, reverse=True) and pending[-1] == 0
    # both replicas hold rank 0's weights, and the mean of the two ranks' gradients
    for a, b in zip(res[0]["params"], res[1]["params"]):
        np.testing.assert_array_equal(a, b)
    import torch

    class Many(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.small = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(20)])
            self.big = torch.nn.Linear(3, 600)

        def forward(self, x):
            for lin in self.small:
                x = torch.tanh(lin(x))
            return self.big(x).sum(1)

    grads = []
    for r in (0, 1):
        m = Many().double()
        with torch.no_grad():
            for p, v in zip(m.parameters(), res[0]["params"]):
                p.copy_(torch.tensor(v))
        m(torch.tensor(res[r]["x"], dtype=torch.float64)).sum().backward()
        grads.append([p.grad.numpy() for p in m.parameters()])
    for i, (g0, g1) in enumerate(zip(*grads)):
        for r in (0, 1):
            np.testing.assert_allclose(res[r]["grads"][i], (g0 + g1) / 2, rtol=1e-4,
                                       atol=1e-6)
    assert res[0]["state_keys"] == ["module.small.0.weight", "module.small.0.bias"]
    # no_sync: local gradient, then the average of both ranks' accumulated gradients
    np.testing.assert_allclose(res[0]["local_grad"], grads[0][-1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res[1]["accumulated_grad"], grads[0][-1] + grads[1][-1],
                               rtol=1e-4, atol=1e-6)


@needs_mpi
@pytest.mark.parametrize("opt_name, bn", [("sgd", "bn"), ("adam", "bn"), ("sgd", "plain")])
def test_two_ranks_of_32_train_as_one_of_64(tmp_path, opt_name, bn):
    """20 steps: 2 ranks x batch 32 (DDP, DistributedSampler, SyncBatchNorm) against 1 rank x
    batch 64 on the same samples (plain BatchNorm), to float32 rounding."""
    launch("equivalence", tmp_path, opt_name, bn)
    x, y = make_data()
    nc.manual_seed(0)
    ref = train_steps(make_net(bn == "bn"), data.DataLoader(data.TensorDataset(x, y), 64),
                      opt_name)
    got = np.load(tmp_path / "params.npz")
    want = [t.numpy() for t in ref.state_dict().values()]
    assert len(got.files) == len(want)
    for i, w in enumerate(want):
        g = got[f"arr_{i}"]
        if w.dtype.kind == "i":  # num_batches_tracked
            assert g == w
        else:
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)


@needs_mpi
def test_fit_on_two_ranks_checkpoints_on_rank_0_and_resumes_on_any_number(tmp_path):
    from numbaconv import train

    launch("fit", tmp_path, 1, "fresh")
    fits = [json.loads((tmp_path / f"fit.{r}.json").read_text()) for r in (0, 1)]
    assert fits[0]["writes"] and not fits[1]["writes"]  # rank 0 alone writes
    assert {Path(p).name for p in fits[0]["writes"]} == {"ckpt.npz", "history.json"}
    # the job's metrics: the same on both ranks, accuracy over all 1280 validation images
    assert fits[0]["history"] == fits[1]["history"]
    assert fits[0]["val"] == fits[1]["val"]
    acc = fits[0]["history"][0]["val_acc"]
    assert round(acc * 1280) == pytest.approx(acc * 1280, abs=1e-6)
    # resume the 2-rank checkpoint here, on one rank, for a second epoch
    x, y = make_data()
    nc.manual_seed(0)
    model = make_net(True)
    ds = data.TensorDataset(x, y)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = train.fit(model, data.DataLoader(ds, 64, sampler=data.DistributedSampler(ds, seed=3)),
                     opt, 2, checkpoint=tmp_path / "ckpt.npz", resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["train_acc"] > 0.5
    # and this 1-rank checkpoint on 2 ranks, for a third
    launch("fit", tmp_path, 3, "resume")
    fits = [json.loads((tmp_path / f"fit.{r}.json").read_text()) for r in (0, 1)]
    assert [h["epoch"] for h in fits[0]["history"]] == [1, 2, 3]
    assert fits[0]["history"][:2] == json.loads(json.dumps(hist))


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill", "hang"])
def test_a_failing_rank_ends_the_job_quickly(tmp_path, how, monkeypatch):
    """A rank that raises, is killed, or stops answering (with a 3 s timeout) ends the whole
    job with a non-zero status and a message, in seconds."""
    monkeypatch.setenv("NUMBACONV_DIST_TIMEOUT", "3")
    proc = launch("fault", tmp_path, how, check=False, timeout=120)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert proc.seconds < 60
    assert not list(tmp_path.glob("finished.*"))
    if how == "raise":
        assert "rank 1 of 2 failed" in said
        assert "an error on rank 1 in the middle of training" in said
    elif how == "kill":
        assert "BAD TERMINATION" in said and "signal 9" in said
    else:
        assert "rank 0 of 2 failed" in said
        assert "waited more than 3 s (NUMBACONV_DIST_TIMEOUT)" in said


@needs_mpi
@pytest.mark.cuda
def test_device_tensors_are_staged_through_the_host(tmp_path, monkeypatch):
    """DDP and SyncBatchNorm on CUDA tensors (Numba's simulator here) give the CPU's values."""
    launch("device", tmp_path, "cpu")
    if os.environ.get("NUMBACONV_REAL_GPU") != "1":
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    launch("device", tmp_path, "cuda")
    for r in (0, 1):
        cpu, gpu = (json.loads((tmp_path / f"device_{d}.{r}.json").read_text())
                    for d in ("cpu", "cuda"))
        assert gpu["device"] == "cuda" and gpu["mean"] == [1.5] * 3 == cpu["mean"]
        for a, b in zip(gpu["grads"], cpu["grads"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gpu["running_var"], cpu["running_var"], rtol=1e-6)
