"""MNIST and Fashion-MNIST: find the IDX files locally, or download and verify them.

Where the files are looked for, in order: ``root`` (and ``root/<name>``, ``root/<name>/raw``),
the user cache (``$NUMBACONV_DATA`` or ``~/.cache/numbaconv/<name>``), and the system location
of Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). With
``download=True`` missing files are fetched from the dataset's canonical address into ``root``
(or the cache), checked against known checksums, and written atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .idx import read_idx

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def default_cache_dir(name: str) -> Path:
    base = os.environ.get("NUMBACONV_DATA")
    if base:
        return Path(base) / name
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "numbaconv" / name


def _verify(path: Path, name: str, md5_gz: dict, sha256_raw: dict) -> bool:
    """True when the file matches a known checksum: of the .gz as distributed, or of the
    decompressed bytes (which also accepts re-compressed copies such as Debian's)."""
    data = path.read_bytes()
    if name + ".gz" in md5_gz and hashlib.md5(data).hexdigest() == md5_gz[name + ".gz"]:
        return True
    if name in sha256_raw:
        try:
            raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        except (OSError, EOFError):
            return False
        return hashlib.sha256(raw).hexdigest() == sha256_raw[name]
    return False


def download_file(url: str, dest: Path, check, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically: into a temporary file in the same folder, checked
    with ``check(path) -> bool``, then renamed. A failed check leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", dir=dest.parent)
    try:
        import urllib.request  # here, not at import: it pulls in http and email (~2 MiB)

        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if not check(Path(tmp)):
            raise ValueError(f"download of {url} failed its checksum; nothing was written")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


class MNIST:
    """The MNIST digits: 60,000 training and 10,000 test images of 28x28, 10 classes.

    ``images`` (N, 28, 28) uint8 and ``labels`` (N,) int64 hold the whole split;
    ``dataset[i]`` gives ``(image, label)`` with the image a float32 (1, 28, 28) array in [0, 1]
    after ``transform``. ``get_batch`` serves a DataLoader without a per-sample Python loop.
    """

    name = "mnist"
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)
    md5_gz = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    sha256_raw: dict = {}
    system_dirs: tuple = ()
    classes = tuple(str(i) for i in range(10))

    def __init__(self, root=None, train: bool = True, download: bool = False, transform=None,
                 target_transform=None, mirrors=None):
        self.root = Path(root) if root is not None else None
        self.train = bool(train)
        self.transform, self.target_transform = transform, target_transform
        if mirrors is not None:
            self.mirrors = tuple(mirrors)
        paths = [self._find(n) for n in _FILES[self.train]]
        if any(p is None for p in paths):
            if not download:
                missing = [n for n, p in zip(_FILES[self.train], paths) if p is None]
                raise FileNotFoundError(
                    f"{type(self).__name__}: {', '.join(missing)} not found in "
                    f"{', '.join(str(d) for d in self.search_dirs())}; pass download=True"
                    + (" or install Debian's dataset-fashion-mnist" if self.system_dirs else ""))
            paths = [p or self._download(n) for n, p in zip(_FILES[self.train], paths)]
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{type(self).__name__}: images {images.shape} and labels "
                             f"{labels.shape} do not form a dataset")
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(self.classes):
            raise ValueError(f"{type(self).__name__}: labels outside 0..{len(self.classes) - 1}")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = labels.astype(np.int64)
        self.paths = paths

    # ------------------------------------------------------------ locating files
    def search_dirs(self) -> list[Path]:
        dirs = []
        if self.root is not None:
            cls = type(self).__name__
            dirs += [self.root, self.root / self.name, self.root / cls, self.root / cls / "raw"]
        dirs.append(default_cache_dir(self.name))
        dirs += [Path(d) for d in self.system_dirs]
        return dirs

    def _find(self, stem: str):
        for d in self.search_dirs():
            for fname in (stem, stem + ".gz"):
                p = d / fname
                if p.is_file():
                    return p
        return None

    def _download(self, stem: str) -> Path:
        target_dir = self.root if self.root is not None else default_cache_dir(self.name)
        dest = target_dir / (stem + ".gz")
        errors = []
        for mirror in self.mirrors:
            try:
                return download_file(mirror + stem + ".gz", dest,
                                     lambda p: _verify(p, stem, self.md5_gz, self.sha256_raw))
            except Exception as e:  # try the next mirror, report all at the end
                errors.append(f"{mirror}: {e}")
        raise RuntimeError(f"{type(self).__name__}: could not download {stem}.gz: "
                           + "; ".join(errors))

    # ------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices, rng=None):
        """Images (B, 1, 28, 28) float32 in [0, 1] after ``transform``, and labels (B,)."""
        x = self.images[indices].astype(np.float32)[:, None] * np.float32(1 / 255)
        if self.transform is not None:
            x = self.transform(x, rng if rng is not None else np.random.default_rng())
        y = self.labels[indices]
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        x, y = self.get_batch(np.array([i]))
        return x[0], y[0]

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"{type(self).__name__}({split}, {len(self)} images, from {self.paths[0].parent})"


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST: MNIST's format and sizes, ten classes of clothing."""

    name = "fashion-mnist"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    md5_gz = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    # of the decompressed files, so that re-compressed copies verify too
    sha256_raw = {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    }
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")


class TensorDataset:
    """A dataset over in-memory arrays: ``images`` (N, ...) float32 and ``labels`` (N,)."""

    def __init__(self, images, labels, transform=None):
        images, labels = np.asarray(images), np.asarray(labels)
        if len(images) != len(labels):
            raise ValueError(f"TensorDataset: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def get_batch(self, indices, rng=None):
        x = self.images[indices]
        if self.transform is not None:
            x = self.transform(x, rng if rng is not None else np.random.default_rng())
        return x, self.labels[indices]

    def __getitem__(self, i):
        x, y = self.get_batch(np.array([i]))
        return x[0], y[0]


class Subset:
    """The items of ``dataset`` at ``indices`` (e.g. a few thousand images for a quick run)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise IndexError(f"Subset: indices outside 0..{len(dataset) - 1}")

    def __len__(self):
        return len(self.indices)

    def get_batch(self, indices, rng=None):
        return self.dataset.get_batch(self.indices[indices], rng)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]
