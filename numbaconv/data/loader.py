"""``DataLoader``: seeded shuffling and batching into Tensors.

A dataset with ``get_batch(indices, rng)`` is served a whole batch at a time (vectorised);
any other dataset with ``__len__`` and ``__getitem__`` is collated item by item. The loader
owns one NumPy generator (``seed``) for shuffling and augmentation; its state is part of a
training checkpoint, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

from ..tensor import tensor


class DataLoader:
    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None, device=None,
                 num_workers: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size={batch_size!r} must be a positive int")
        if num_workers != 0:
            raise ValueError(f"DataLoader: num_workers={num_workers!r} is not supported (batches "
                             f"are assembled with vectorised NumPy in the calling thread); use 0")
        if len(dataset) == 0:
            raise ValueError("DataLoader: the dataset is empty")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.rng = np.random.default_rng(seed)
        self.device = device

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batch(self, idx):
        if hasattr(self.dataset, "get_batch"):
            x, y = self.dataset.get_batch(idx, self.rng)
        else:
            items = [self.dataset[int(i)] for i in idx]
            x = np.stack([np.asarray(a) for a, _ in items])
            y = np.asarray([b for _, b in items])
        return (tensor(np.asarray(x, dtype=np.float32), device=self.device),
                tensor(np.asarray(y), device=self.device))

    def __iter__(self):
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if len(idx) < self.batch_size and self.drop_last:
                return
            yield self._batch(idx)

    # generator state, for checkpoints
    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
