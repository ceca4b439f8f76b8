"""Batch transforms: each is ``transform(x, rng) -> x`` on a float32 (N, C, H, W) NumPy batch.

Working on whole batches keeps augmentation out of per-sample Python loops; every random choice
is drawn from the ``rng`` the DataLoader passes in, so a seeded loader is reproducible.
"""

from __future__ import annotations

import numpy as np


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class Normalize:
    """(x - mean[c]) / std[c] per channel."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std={std!r} must be positive")

    def __call__(self, x, rng):
        if self.mean.shape[1] not in (1, x.shape[1]):
            raise ValueError(f"Normalize: {self.mean.shape[1]} means for {x.shape[1]} channels")
        return (x - self.mean) / self.std

    def __repr__(self):
        return f"Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"


def _shift_batch(x, dy, dx, fill=0.0):
    """Each image n moved by (dy[n], dx[n]) pixels, uncovered pixels set to ``fill``."""
    n, _, h, w = x.shape
    out = np.full_like(x, fill)
    for i in range(n):
        sy, sx = int(dy[i]), int(dx[i])
        ys, yd = (slice(0, h - sy), slice(sy, h)) if sy >= 0 else (slice(-sy, h), slice(0, h + sy))
        xs, xd = (slice(0, w - sx), slice(sx, w)) if sx >= 0 else (slice(-sx, w), slice(0, w + sx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


class RandomCrop:
    """Pad by ``padding`` (zeros) and crop a random ``size`` window, per image."""

    def __init__(self, size, padding: int = 0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if padding < 0:
            raise ValueError(f"RandomCrop: padding={padding} must be >= 0")
        self.padding = int(padding)

    def __call__(self, x, rng):
        p = self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        n, _, h, w = xp.shape
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop: size {self.size} larger than padded input {(h, w)}")
        top = rng.integers(0, h - th + 1, n)
        left = rng.integers(0, w - tw + 1, n)
        out = np.empty(x.shape[:2] + (th, tw), dtype=x.dtype)
        for i in range(n):
            out[i] = xp[i, :, top[i]:top[i] + th, left[i]:left[i] + tw]
        return out

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p={p!r} must be in [0, 1]")
        self.p = p

    def __call__(self, x, rng):
        flip = rng.random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomTranslation:
    """Shift each image by up to ``max_shift`` pixels in each direction (zero fill)."""

    def __init__(self, max_shift: int = 2):
        if max_shift < 0:
            raise ValueError(f"RandomTranslation: max_shift={max_shift} must be >= 0")
        self.max_shift = int(max_shift)

    def __call__(self, x, rng):
        m = self.max_shift
        return _shift_batch(x, rng.integers(-m, m + 1, len(x)), rng.integers(-m, m + 1, len(x)))

    def __repr__(self):
        return f"RandomTranslation(max_shift={self.max_shift})"


# ImageNet RGB statistics from the AlexNet paper's PCA colour augmentation.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


class Lighting:
    """AlexNet's PCA colour augmentation (Krizhevsky et al., 2012, section 4.1): add
    ``eigvec @ (alpha * eigval)`` to every pixel of an RGB image, alpha ~ N(0, alphastd)."""

    def __init__(self, alphastd: float = 0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
        self.alphastd = float(alphastd)
        self.eigval = np.asarray(eigval, dtype=np.float32)
        self.eigvec = np.asarray(eigvec, dtype=np.float32)
        if self.eigvec.shape != (len(self.eigval), len(self.eigval)):
            raise ValueError(f"Lighting: eigvec shape {self.eigvec.shape} does not match "
                             f"{len(self.eigval)} eigenvalues")

    def __call__(self, x, rng):
        if x.shape[1] != len(self.eigval):
            raise ValueError(f"Lighting: needs {len(self.eigval)}-channel images, got "
                             f"{x.shape[1]}")
        if self.alphastd == 0:
            return x
        alpha = rng.normal(0, self.alphastd, (len(x), len(self.eigval))).astype(np.float32)
        rgb = (alpha * self.eigval) @ self.eigvec.T  # (N, 3)
        return x + rgb[:, :, None, None]

    def __repr__(self):
        return f"Lighting(alphastd={self.alphastd})"
