"""IDX files, datasets (local files, the Debian location, verified downloads from a local
HTTP server), the DataLoader and the batch transforms."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import data
from numbaconv.data import transforms as T
from numbaconv.data.idx import read_idx, write_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, dtype, gz):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_rejects_bad_files(tmp_path):
    good = tmp_path / "g.idx"
    write_idx(good, np.zeros((3, 2), np.uint8))
    raw = good.read_bytes()
    cases = {
        "magic": b"\x01" + raw[1:],
        "type": raw[:2] + b"\x07" + raw[3:],
        "truncated": raw[:-1],
        "trailing": raw + b"\x00",
        "short": raw[:3],
    }
    for name, content in cases.items():
        p = tmp_path / f"{name}.idx"
        p.write_bytes(content)
        with pytest.raises(ValueError, match=str(p.name)):
            read_idx(p)
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(bad_gz)


def _fake_split(folder, n, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for stem in ("train", "t10k"):
        write_idx(folder / f"{stem}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{ext}", labels)
    return images, labels


def test_mnist_from_root_and_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "cache"))
    images, labels = _fake_split(tmp_path / "MNIST" / "raw", 50, gz=False)
    ds = data.MNIST(tmp_path, train=True)
    assert len(ds) == 50
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == np.float32 and y == labels[3]
    np.testing.assert_allclose(x[0], images[3] / 255.0, rtol=1e-6)
    xb, yb = ds.get_batch(np.array([1, 2]))
    assert xb.shape == (2, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.MNIST(tmp_path / "nowhere", train=False)


@needs_fashion
def test_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path))
    ds = data.FashionMNIST(train=False)
    assert len(ds) == 10000 and ds.images.shape == (10000, 28, 28)
    assert sorted(np.unique(ds.labels)) == list(range(10))
    assert np.bincount(ds.labels).tolist() == [1000] * 10


class _Server:
    """A static file server on 127.0.0.1 (an ephemeral port), stopped after the test."""

    def __init__(self, folder):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(folder), **k)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    s = _Server(tmp_path / "served")
    yield s
    s.close()


def test_download_verifies_and_writes_atomically(tmp_path, server, monkeypatch):
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "cache"))
    served = tmp_path / "served"
    _fake_split(served, 20)

    class Fake(data.MNIST):
        name = "fake"
        md5_gz = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in served.iterdir()}

    dest = tmp_path / "root"
    ds = Fake(dest, train=True, download=True, mirrors=[server.url])
    assert len(ds) == 20 and sorted(p.name for p in dest.iterdir()) == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    # a corrupted mirror: the checksum fails and nothing is left behind
    bad = tmp_path / "bad"
    (served / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(RuntimeError, match="checksum"):
        Fake(bad, train=True, download=True, mirrors=[server.url])
    assert not bad.exists() or not any(bad.iterdir())
    # an unreachable mirror is reported
    with pytest.raises(RuntimeError, match="could not download"):
        Fake(tmp_path / "x", train=False, download=True, mirrors=["http://127.0.0.1:9/"])


@needs_fashion
def test_fashion_checksums_accept_the_real_files(tmp_path, server):
    from numbaconv.data.datasets import _verify

    for stem in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert _verify(FASHION_DIR / f"{stem}.gz", stem, data.FashionMNIST.md5_gz,
                       data.FashionMNIST.sha256_raw)
    fake = tmp_path / "fake.gz"
    fake.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05"))
    assert not _verify(fake, "t10k-labels-idx1-ubyte", data.FashionMNIST.md5_gz,
                       data.FashionMNIST.sha256_raw)


def test_dataloader_batches_shuffles_and_reproduces():
    ds = data.TensorDataset(np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10))
    batches = list(data.DataLoader(ds, 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert len(data.DataLoader(ds, 4)) == 3 and len(data.DataLoader(ds, 4, drop_last=True)) == 2
    assert [len(y) for _, y in data.DataLoader(ds, 4, drop_last=True)] == [4, 4]
    order = lambda seed: np.concatenate(  # noqa: E731
        [y.numpy() for _, y in data.DataLoader(ds, 3, shuffle=True, seed=seed)])
    assert sorted(order(0)) == list(range(10))
    assert np.array_equal(order(0), order(0)) and not np.array_equal(order(0), order(1))
    x, y = batches[0]
    assert x.dtype == nc.float32 and y.dtype == nc.int64
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader(ds, 0)


def test_dataloader_generic_dataset():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((2,), i * i, np.float32), i

    x, y = next(iter(data.DataLoader(Squares(), 5)))
    assert x.numpy()[:, 0].tolist() == [0, 1, 4, 9, 16] and y.numpy().tolist() == [0, 1, 2, 3, 4]


def test_transforms():
    rng = np.random.default_rng(0)
    x = rng.random((8, 3, 6, 6)).astype(np.float32)
    n = T.Normalize([0.5, 0.5, 0.5], [0.25, 0.5, 1.0])(x, rng)
    np.testing.assert_allclose(n[:, 1], (x[:, 1] - 0.5) / 0.5, rtol=1e-6)
    c = T.RandomCrop(6, padding=2)(x, np.random.default_rng(1))
    assert c.shape == x.shape
    # every crop is a shifted copy: its interior matches x somewhere within +-2 pixels
    for i in range(8):
        assert any(np.array_equal(c[i, :, 2:4, 2:4], x[i, :, 2 + dy:4 + dy, 2 + dx:4 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    f = T.RandomHorizontalFlip(1.0)(x, rng)
    np.testing.assert_array_equal(f, x[:, :, :, ::-1])
    np.testing.assert_array_equal(T.RandomHorizontalFlip(0.0)(x, rng), x)
    t = T.RandomTranslation(0)(x, rng)
    np.testing.assert_array_equal(t, x)
    t = T.RandomTranslation(2)(x, np.random.default_rng(3))
    assert t.shape == x.shape and (t == 0).sum() > 0
    lit = T.Lighting(0.1)(x, np.random.default_rng(4))
    diff = (lit - x).reshape(8, 3, -1)
    assert np.allclose(diff, diff[:, :, :1])  # one RGB offset per image
    assert not np.allclose(diff, 0)
    with pytest.raises(ValueError, match="3-channel"):
        T.Lighting()(x[:, :1], rng)
    comp = T.Compose([T.RandomHorizontalFlip(1.0), T.Normalize([0.0], [2.0])])
    np.testing.assert_allclose(comp(x, rng), x[:, :, :, ::-1] / 2)
