"""``DistributedDataParallel``: one model replica per rank, gradients averaged during backward.

Parameters are grouped, in the reverse of their registration order (roughly the order in
which backward produces their gradients), into buckets of about ``bucket_cap_mb`` (25 MB, as
PyTorch). A parameter's post-accumulate-grad hook tells the bucket when its gradient is final;
once every gradient of a bucket is, the bucket is packed into one host buffer and its
non-blocking all-reduce starts, while backward goes on computing the gradients of the layers
below. Buckets start strictly in order, so every rank issues the same collectives in the same
sequence. At the end of the backward pass the reductions are awaited and the averaged
gradients written back into ``.grad``. Gradients live in host buffers during the reduction:
device tensors are staged through them (numbaconv's MPI path is not CUDA-aware).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import distributed as dist
from ..autograd import is_grad_enabled, no_grad, queue_callback
from ..tensor import tensor as _tensor
from .module import Module


class _Bucket:
    __slots__ = ("params", "offsets", "buffer", "ready", "request", "started")

    def __init__(self, params, dtype):
        self.params = params
        self.offsets = np.cumsum([0] + [p.numel() for p in params])
        self.buffer = np.zeros(int(self.offsets[-1]), dtype=dtype)
        self.ready = 0
        self.request = None
        self.started = False


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training on every rank of the MPI world (PyTorch's
    shape): rank 0's parameters and buffers are broadcast at construction, so every replica
    starts equal; each backward pass averages the gradients across ranks (overlapped with the
    rest of backward, bucket by bucket); ``no_sync()`` skips the averaging for gradient
    accumulation. ``state_dict()`` keys carry the ``module.`` prefix, as PyTorch's.

    ``broadcast_buffers`` (default True) sends rank 0's buffers (BatchNorm's running
    statistics) to every rank at each training forward pass. Parameters that a backward pass
    does not reach count as zero gradients on that rank (PyTorch needs
    ``find_unused_parameters=True`` for this; here it is always on)."""

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0,
                 broadcast_buffers: bool = True, process_group=None,
                 bucket_cap_mb: float = 25.0, find_unused_parameters: bool = False,
                 gradient_as_bucket_view: bool = False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel(): module must be a numbaconv Module, "
                            f"got {type(module).__name__}")
        if process_group is not None:
            raise ValueError("DistributedDataParallel(): process groups other than the world "
                             "are not supported; pass process_group=None")
        if dim != 0:
            raise ValueError(f"DistributedDataParallel(): dim={dim!r}; batches are split along "
                             f"dim 0 (by the sampler)")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) \
                or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel(): bucket_cap_mb={bucket_cap_mb!r} must "
                             f"be a positive number")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel(): call "
                               "numbaconv.distributed.init_process_group() first")
        self.module = module
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "bucket_cap_mb", float(bucket_cap_mb))
        object.__setattr__(self, "_require_sync", True)
        object.__setattr__(self, "_armed", False)
        object.__setattr__(self, "_finalize_queued", False)
        with no_grad():
            for t in self._sync_tensors(with_params=True):
                dist.broadcast(t, 0)
        params, seen = [], set()
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        object.__setattr__(self, "_buckets", self._make_buckets(params))
        where = {}
        for i, b in enumerate(self._buckets):
            for p in b.params:
                where[id(p)] = i
        object.__setattr__(self, "_bucket_of", where)
        object.__setattr__(self, "_next", 0)   # the first bucket not yet started
        object.__setattr__(self, "_handles", [
            p.register_post_accumulate_grad_hook(self._grad_ready) for p in params
        ] if dist.get_world_size() > 1 else [])

    # ------------------------------------------------------------ set-up
    def _sync_tensors(self, with_params: bool):
        if with_params:
            yield from self.module.parameters()
        for b in self.module.buffers():
            if b is not None:
                yield b

    def _make_buckets(self, params):
        cap = self.bucket_cap_mb * 2 ** 20
        buckets, current, size, dtype = [], [], 0, None
        for p in reversed(params):  # backward meets the last layers first
            nbytes = p.numel() * p.dtype.itemsize
            if current and (size + nbytes > cap or p.dtype != dtype):
                buckets.append(_Bucket(current, dtype))
                current, size = [], 0
            current.append(p)
            size += nbytes
            dtype = p.dtype
        if current:
            buckets.append(_Bucket(current, dtype))
        return buckets

    @property
    def bucket_sizes(self) -> list[int]:
        """Bytes per bucket, in the order their reductions start."""
        return [b.buffer.nbytes for b in self._buckets]

    # ------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        if dist.get_world_size() > 1:
            if self.training and self.broadcast_buffers:
                with no_grad():
                    for b in self._sync_tensors(with_params=False):
                        dist.broadcast(b, 0)
            armed = is_grad_enabled() and self._require_sync and self.training
            object.__setattr__(self, "_armed", armed)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Within the block, backward passes accumulate gradients locally without averaging
        them; the first backward after it averages everything accumulated."""
        previous = self._require_sync
        object.__setattr__(self, "_require_sync", False)
        try:
            yield
        finally:
            object.__setattr__(self, "_require_sync", previous)

    # ------------------------------------------------------------ backward
    def _grad_ready(self, p) -> None:
        if not self._armed:
            return
        if not self._finalize_queued:
            queue_callback(self._finalize)
            object.__setattr__(self, "_finalize_queued", True)
        bucket = self._buckets[self._bucket_of[id(p)]]
        bucket.ready += 1
        self._start_ready_buckets()

    def _start_ready_buckets(self, force: bool = False) -> None:
        while self._next < len(self._buckets):
            bucket = self._buckets[self._next]
            if not force and bucket.ready < len(bucket.params):
                return
            self._start(bucket)
            object.__setattr__(self, "_next", self._next + 1)

    def _start(self, bucket: _Bucket) -> None:
        buf, off = bucket.buffer, bucket.offsets
        for i, p in enumerate(bucket.params):
            if p.grad is None:  # not reached by this backward pass: a zero gradient
                buf[off[i]:off[i + 1]] = 0
            else:
                buf[off[i]:off[i + 1]] = np.asarray(p.grad.numpy()).reshape(-1)
        bucket.request = dist._allreduce_array(buf)
        bucket.started = True

    def _finalize(self) -> None:
        """End of the backward pass: start what is left, wait, write the averages back."""
        try:
            self._start_ready_buckets(force=True)
            world = dist.get_world_size()
            with no_grad():
                for bucket in self._buckets:
                    if bucket.request is not None:
                        dist._wait(bucket.request, "DistributedDataParallel's gradient "
                                                   "all-reduce")
                    buf, off = bucket.buffer, bucket.offsets
                    np.divide(buf, buf.dtype.type(world), out=buf)
                    for i, p in enumerate(bucket.params):
                        avg = buf[off[i]:off[i + 1]].reshape(p.shape)
                        if p.grad is None:
                            p.grad = _tensor(avg.copy(), device=p.device)
                        else:
                            p.grad.copy_(_tensor(avg, device=p.device))
        finally:
            for bucket in self._buckets:
                bucket.ready, bucket.request, bucket.started = 0, None, False
            object.__setattr__(self, "_next", 0)
            object.__setattr__(self, "_armed", False)
            object.__setattr__(self, "_finalize_queued", False)

    def extra_repr(self) -> str:
        return (f"world_size={dist.get_world_size()}, buckets={len(self._buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb}")


def unwrap(model: Module) -> Module:
    """The model inside a DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


__all__ = ["DistributedDataParallel", "unwrap"]
