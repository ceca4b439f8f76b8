"""The benchmarks' PyTorch mirrors are the same networks as numbaconv's (benchmarks/train.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
@pytest.mark.parametrize("name", ["LeNet-5", "ResNet-mini-8"])
def test_train_benchmark_mirrors_load_numbaconvs_weights_and_agree(name):
    torch = pytest.importorskip("torch")
    import numbaconv as nc

    train = _load("train")
    nc.manual_seed(0)
    ours = train.numbaconv_model(name)
    theirs = train.torch_model(name)
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    ours.eval()
    theirs.eval()
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        want = theirs(torch.tensor(x)).numpy()
    got = ours(nc.tensor(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    nc_step, th_step = train.make_steps(name, 4, train.batches(4, 1))
    nc_step(0)
    th_step(0)
