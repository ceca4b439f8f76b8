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
                 num_workers: int = 0, sampler=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size={batch_size!r} must be a positive int")
        if sampler is not None:
            if shuffle:
                raise ValueError("DataLoader: sampler and shuffle=True are mutually exclusive "
                                 "(the sampler decides the order; DistributedSampler "
                                 "shuffles itself)")
            if not (hasattr(sampler, "__iter__") and hasattr(sampler, "__len__")):
                raise TypeError(f"DataLoader: sampler must be iterable with a length, got "
                                f"{type(sampler).__name__}")
        self.sampler = sampler
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
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
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
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            n = len(order)
        else:
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


class DistributedSampler:
    """The indices of one rank's share of ``dataset``, as PyTorch's DistributedSampler: every
    epoch, the same (seeded) order on every rank, padded by repeating its start to a multiple
    of the number of replicas (or, with ``drop_last``, cut down to one), and rank r takes every
    num_replicas-th index from r. Call ``set_epoch(epoch)`` before each epoch for a new order
    (``train.fit`` does). ``num_replicas`` and ``rank`` default to the world's
    (``numbaconv.distributed``). The shuffled order comes from NumPy's generator seeded with
    ``seed + epoch``, so it differs from PyTorch's own for the same seed."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        from .. import distributed as dist

        if num_replicas is None:
            num_replicas = dist.get_world_size()
        if rank is None:
            rank = dist.get_rank()
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) \
                or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas={num_replicas!r} must be a "
                             f"positive int")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank={rank!r} must be in [0, "
                             f"num_replicas={num_replicas})")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"DistributedSampler: seed={seed!r} must be an int")
        n = len(dataset)
        if n == 0:
            raise ValueError("DistributedSampler: the dataset is empty")
        self.dataset, self.num_replicas, self.rank = dataset, int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if self.drop_last and n % self.num_replicas:
            self.num_samples = -(-(n - self.num_replicas) // self.num_replicas)
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"DistributedSampler.set_epoch(): epoch={epoch!r} must be a "
                             f"non-negative int")
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[:self.total_size]
        elif self.total_size > n:  # pad with the start, repeated as often as needed
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
