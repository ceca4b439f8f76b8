"""fit / evaluate / checkpoints, and networks that really learn."""

import json
from pathlib import Path

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import data, models, nn, optim
from numbaconv.train import evaluate, fit, load_checkpoint, save_checkpoint

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed")


def _blobs(n=256, seed=0):
    """Two classes of 8x8 images: bright top half or bright bottom half, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    x[y == 0, :, :4] += 1
    x[y == 1, :, 4:] += 1
    return data.TensorDataset(x, y)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        h = nn.functional.max_pool2d(self.bn(self.conv(x)).relu(), 2)
        return self.fc(self.drop(h.flatten(1)))


def _setup(seed=0):
    nc.manual_seed(seed)
    model = Small()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.StepLR(opt, 1, 0.7)
    loader = data.DataLoader(_blobs(), 32, shuffle=True, seed=seed)
    return model, opt, sched, loader


def test_fit_learns_and_records_history(tmp_path):
    model, opt, sched, loader = _setup()
    val = data.DataLoader(_blobs(128, seed=1), 64)
    hist = fit(model, loader, opt, 3, val_loader=val, scheduler=sched, progress=False,
               history_path=tmp_path / "h.json")
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_acc"] > 0.95
    np.testing.assert_allclose([h["lr"] for h in hist], [0.1, 0.07, 0.049])
    assert json.loads((tmp_path / "h.json").read_text())[2]["epoch"] == 3
    hist.to_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    loss, acc = evaluate(model, val)
    assert acc == hist[-1]["val_acc"] and model.training


def test_resume_continues_exactly(tmp_path):
    ck = tmp_path / "ck" / "model.npz"
    model, opt, sched, loader = _setup()
    straight = fit(model, loader, opt, 3, scheduler=sched, progress=False)
    expected = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    model, opt, sched, loader = _setup()
    fit(model, loader, opt, 2, scheduler=sched, checkpoint=ck, progress=False)
    # a fresh process would rebuild everything from scratch, with another seed even
    model, opt, sched, loader = _setup(seed=99)
    resumed = fit(model, loader, opt, 3, scheduler=sched, checkpoint=ck, resume=True,
                  progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), expected[k], err_msg=k)
    assert len(resumed) == 3
    assert resumed[2]["train_loss"] == straight[2]["train_loss"]


def test_checkpoint_is_atomic_and_pickle_free(tmp_path, monkeypatch):
    model, opt, sched, loader = _setup()
    ck = tmp_path / "m.npz"
    save_checkpoint(ck, model, opt, sched, epoch=4, history=[{"epoch": 5}], loader=loader)
    with np.load(ck, allow_pickle=False) as z:  # every entry loads without pickle
        assert "meta" in z.files and "model/conv.weight" in z.files
        for k in z.files:
            z[k]
    before = ck.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ck, model, opt, sched, epoch=5)
    assert ck.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temp file left
    monkeypatch.undo()
    state = load_checkpoint(ck, model, opt, sched, loader)
    assert state["epoch"] == 4 and state["history"] == [{"epoch": 5}]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):  # numpy: "not a zip file" / bad pickle-free content
        load_checkpoint(tmp_path / "junk.npz", model)


@pytest.mark.parametrize("make", [lambda: models.lenet5(),
                                  lambda: models.resnet_mini(8)],
                         ids=["lenet5", "resnet8"])
def test_every_model_overfits_a_tiny_batch(make):
    nc.manual_seed(0)
    model = make()
    rng = np.random.default_rng(0)
    x = nc.tensor(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    y = nc.tensor(rng.integers(0, 10, 16))
    opt = optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train()
    acc = (model(x).argmax(1) == y).numpy().mean()
    assert acc == 1.0, (acc, loss.item())


def test_resnet_mini_shapes_and_errors():
    for depth in (8, 14, 20):
        m = models.resnet_mini(depth, num_classes=7, in_channels=3)
        m.eval()
        assert m(nc.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet_mini(10)
    n_params = models.resnet_mini(20, in_channels=3).num_parameters()
    assert abs(n_params - 0.27e6) / 0.27e6 < 0.03  # the paper's ResNet-20: 0.27M parameters


@needs_fashion
@pytest.mark.slow
def test_lenet_learns_real_fashion_mnist():
    nc.manual_seed(0)
    norm = data.transforms.Normalize([0.2860], [0.3530])
    train = data.Subset(data.FashionMNIST(train=True, transform=norm), range(5000))
    test = data.Subset(data.FashionMNIST(train=False, transform=norm), range(2000))
    model = models.lenet5()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = fit(model, data.DataLoader(train, 64, shuffle=True, seed=0), opt, 3,
               val_loader=data.DataLoader(test, 500), progress=False)
    assert hist[-1]["val_acc"] > 0.70, hist  # chance is 0.10
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def _fresh_kernel(name):
    """A kernel (calling a helper kernel) that Numba has not compiled yet, named as one of
    numbaconv's own."""
    from numba import njit

    def helper(v):
        return v * 2.0

    helper.__module__, helper.__name__ = "numbaconv.kernels.probe", name + "_helper"
    helper_jit = njit(cache=False)(helper)

    def kernel(v):
        return helper_jit(v) + 1.0

    kernel.__module__, kernel.__name__ = "numbaconv.kernels.probe", name
    return njit(cache=False)(kernel)


def test_watch_compiles_names_each_kernel_once_and_times_the_outermost():
    from numbaconv._compiling import watch_compiles

    probe = _fresh_kernel("probe_watch")
    seen = []
    with watch_compiles(lambda name, n: seen.append((name, n))) as log:
        assert probe(1.0) == 3.0
        probe(2.0)  # compiled already: nothing announced
    assert [name for name, _ in seen] == ["probe_watch", "probe_watch_helper"]
    assert [n for _, n in seen] == [1, 2]
    assert log.count == 2 and len(log.seconds) == 1 and log.total_seconds > 0
    with watch_compiles() as log:  # a new specialisation; Numba's own helpers go unnamed
        probe(np.int64(1))
    assert log.names and set(log.names) <= {"probe_watch", "probe_watch_helper"}


def test_fit_names_the_kernels_its_first_step_compiles(capsys, monkeypatch):
    import numbaconv.train as train

    probe = _fresh_kernel("probe_first_step")

    class Probing(Small):
        def forward(self, x):
            probe(1.0)  # a kernel to compile, as a cold run's first step has dozens
            return super().forward(x)

    monkeypatch.setattr(train, "_first_step_done", False)
    nc.manual_seed(0)
    model = Probing()
    loader = data.DataLoader(_blobs(64), 32, seed=0)
    fit(model, loader, optim.SGD(model.parameters(), lr=0.1), 1, progress=True)
    err = capsys.readouterr().err
    assert "first step: compiling kernel 1, probe_first_step; cached for later runs" in err
    # the description is back to the epoch alone once the step is done
    assert err.rstrip().splitlines()[-1].lstrip("\r").startswith("epoch 1/1:")
