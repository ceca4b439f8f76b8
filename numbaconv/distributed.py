"""Data-parallel training across processes and machines, on MPI (through ``mpi4py``).

Launch one process per rank with the MPI launcher your cluster already runs::

    mpiexec -n 2 python examples/train_lenet.py --distributed
    mpiexec -n 16 -f hosts.txt python train.py          # MPICH; Open MPI: --hostfile
    srun -n 64 python train.py                          # Slurm

Each process calls :func:`init_process_group` (MPI's world communicator), wraps its model in
:class:`numbaconv.nn.parallel.DistributedDataParallel`, reads its share of the data through
:class:`numbaconv.data.DistributedSampler` and trains as usual: gradients are averaged across
ranks during ``backward()``. Started without a launcher, a process is a world of one, so the
same script runs unchanged on a laptop.

Collectives (:func:`all_reduce`, :func:`broadcast`, :func:`all_gather`, :func:`barrier`) take
tensors of either backend. They are not CUDA-aware: a GPU tensor is staged through a host buffer
(one copy each way), whichever MPI library is underneath; CPU tensors are reduced in place.
Every collective waits at most ``NUMBACONV_DIST_TIMEOUT`` seconds (default 300): a rank that
stopped answering ends the job with an error naming the operation, instead of a hang. An
exception that escapes on any rank prints its traceback with the rank and aborts the whole job
(``MPI_Abort``), so the other ranks end at once with a non-zero status; a rank killed by a
signal is noticed by the launcher, which ends the others.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .autograd import no_grad
from .tensor import Tensor

_OPS = ("sum", "mean", "max", "min")
# the environment of a process started by an MPI launcher (MPICH/Hydra, Open MPI, PMIx,
# Slurm's srun with PMI)
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                  "HYDI_CONTROL_FD")


class _World:
    comm = None          # mpi4py's COMM_WORLD, or None for a world of one without MPI
    MPI = None
    initialized = False
    rank = 0
    size = 1
    excepthook = None    # the hook init_process_group replaced


def _launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def how_to_launch(script: str | None = None, n: int = 2) -> str:
    """The command line that starts ``script`` on ``n`` ranks (for messages)."""
    script = script or (sys.argv[0] if sys.argv and sys.argv[0] else "train.py")
    return f"mpiexec -n {n} {sys.executable} {script}"


def init_process_group(backend: str = "mpi", world_size: int | None = None,
                       timeout: float | None = None) -> None:
    """Join MPI's world communicator (once per process; again is a no-op).

    Without an MPI launcher, the process is a world of one (rank 0, size 1), with or without
    ``mpi4py`` installed. ``world_size``, if given, is checked against the launched size: a
    process started alone when the job expects more says how to launch it. ``timeout``
    overrides ``NUMBACONV_DIST_TIMEOUT`` (seconds each collective may wait)."""
    if backend != "mpi":
        raise ValueError(f"init_process_group(): backend={backend!r}; numbaconv communicates "
                         f"through MPI only: use backend='mpi'")
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"init_process_group(): timeout={timeout!r} must be a positive "
                             f"number of seconds")
        os.environ["NUMBACONV_DIST_TIMEOUT"] = str(float(timeout))
    if not _World.initialized:
        try:
            from mpi4py import MPI
        except ImportError:
            if _launched_by_mpi():
                raise ImportError(
                    "init_process_group(): this process was started by an MPI launcher but "
                    "mpi4py is not installed; install it with pip install 'numbaconv["
                    "distributed]' (mpi4py and MPICH from PyPI)") from None
            MPI = None
        _World.MPI = MPI
        _World.comm = MPI.COMM_WORLD if MPI is not None else None
        _World.rank = _World.comm.Get_rank() if _World.comm is not None else 0
        _World.size = _World.comm.Get_size() if _World.comm is not None else 1
        _World.initialized = True
        if _World.size > 1:
            _install_abort_on_error()
    if world_size is not None and world_size != _World.size:
        raise RuntimeError(
            f"init_process_group(): the job expects world_size={world_size} ranks but this "
            f"process was started in a world of {_World.size}; start all ranks together: "
            f"{how_to_launch(n=world_size)}")


def _install_abort_on_error() -> None:
    """An uncaught exception on one rank ends every rank (MPI_Abort) instead of leaving the
    others waiting in a collective."""
    previous = sys.excepthook
    _World.excepthook = previous

    def hook(exc_type, exc, tb):
        sys.stderr.write(f"numbaconv.distributed: rank {_World.rank} of {_World.size} failed; "
                         f"aborting the job\n")
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        comm = _World.comm
        if comm is not None:
            comm.Abort(1)

    sys.excepthook = hook


def is_initialized() -> bool:
    return _World.initialized


def is_available() -> bool:
    """Whether mpi4py (and so multi-process training) can be used here."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def get_rank() -> int:
    """This process's rank (0 when not initialized)."""
    return _World.rank


def get_world_size() -> int:
    """The number of ranks (1 when not initialized)."""
    return _World.size


def destroy_process_group() -> None:
    """Leave the group: rank 0 of a world of one afterwards. MPI itself stays initialized
    until the process exits (MPI cannot be initialized twice)."""
    if _World.excepthook is not None:
        sys.excepthook = _World.excepthook
        _World.excepthook = None
    _World.initialized = False
    _World.comm = None
    _World.rank, _World.size = 0, 1


def local_world_size() -> int:
    """Ranks on this machine (for dividing its cores among them)."""
    if _World.comm is None or _World.size == 1:
        return 1
    local = _World.comm.Split_type(_World.MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


def _require(fn: str):
    if not _World.initialized:
        raise RuntimeError(f"{fn}(): call numbaconv.distributed.init_process_group() first")
    return _World.comm


def _timeout() -> float:
    raw = os.environ.get("NUMBACONV_DIST_TIMEOUT", "300")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"NUMBACONV_DIST_TIMEOUT={raw!r} must be a number of seconds") from None
    if value <= 0:
        raise ValueError(f"NUMBACONV_DIST_TIMEOUT={raw!r} must be positive")
    return value


_SPIN_S = 0.05  # seconds of busy polling before the waits back off


def _wait(request, what: str) -> None:
    """Complete a non-blocking MPI request within the timeout, so that a dead peer becomes an
    error instead of a hang. MPI moves a collective on only inside MPI calls (there is no
    progress thread), so the first 50 ms poll without pause: sleeping between polls made a
    300 kB all-reduce on one machine 5x slower. After that the polls back off to one per
    millisecond."""
    if request.Test():
        return
    start = time.monotonic()
    spin_until, deadline = start + _SPIN_S, start + _timeout()
    while time.monotonic() < spin_until:
        if request.Test():
            return
    pause = 1e-5
    while not request.Test():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"numbaconv.distributed: {what} on rank {_World.rank} waited more than "
                f"{_timeout():.0f} s (NUMBACONV_DIST_TIMEOUT) for the other ranks; one has "
                f"probably stopped or is stuck")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


class Work:
    """A collective in flight (``async_op=True``): ``wait()`` completes it and writes the
    result into the tensor; ``is_completed()`` asks without waiting."""

    def __init__(self, request, what, finish):
        self._request, self._what, self._finish, self._done = request, what, finish, False

    def is_completed(self) -> bool:
        return self._done or (self._request is None or bool(self._request.Test()))

    def wait(self) -> bool:
        if not self._done:
            if self._request is not None:
                _wait(self._request, self._what)
            self._finish()
            self._done = True
        return True


def _check_tensor(t, fn: str, name: str = "tensor") -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}(): {name} must be a numbaconv Tensor, got {type(t).__name__}")
    if t.dtype.kind not in "fiu":
        raise TypeError(f"{fn}(): {name} has dtype {t.dtype}; expected a float or int tensor")


def _host(t: Tensor) -> tuple[np.ndarray, bool]:
    """A C-contiguous host array with the tensor's values and whether it is the tensor's own
    memory (a CPU tensor: reduced in place) or a staging copy to write back."""
    arr = t.numpy()  # a CPU tensor's own array; a copy from a device
    own = t.device == "cpu" and arr.flags["C_CONTIGUOUS"] and arr.flags["WRITEABLE"]
    if not own:  # (a device copy of a 0-d tensor may come back as shape (1,))
        arr = np.ascontiguousarray(np.array(arr, copy=True)).reshape(t.shape)
    return arr, own


def _write_back(t: Tensor, arr: np.ndarray, own: bool) -> None:
    with no_grad():
        if own:
            from .autograd import mark_written

            mark_written(t)
        else:
            from .tensor import tensor

            t.copy_(tensor(arr, device=t.device))


def _mpi_op(op: str):
    MPI = _World.MPI
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def all_reduce(tensor: Tensor, op: str = "sum", async_op: bool = False):
    """Reduce ``tensor`` across all ranks, in place: ``op`` is "sum", "mean", "max" or "min"
    (PyTorch's ``ReduceOp`` names in lower case are accepted too). Returns a :class:`Work`
    with ``async_op=True``, else None (as PyTorch)."""
    comm = _require("all_reduce")
    _check_tensor(tensor, "all_reduce")
    op = _op_name(op)
    if op == "mean" and tensor.dtype.kind != "f":
        raise TypeError(f"all_reduce(): op='mean' needs a float tensor, got {tensor.dtype}")
    arr, own = _host(tensor)
    size = _World.size

    def finish():
        if op == "mean" and size > 1:
            np.divide(arr, arr.dtype.type(size), out=arr)
        if size > 1 or not own:
            _write_back(tensor, arr, own)

    request = None
    if comm is not None and size > 1:
        request = comm.Iallreduce(_World.MPI.IN_PLACE, arr, _mpi_op(op))
    work = Work(request, f"all_reduce({op})", finish)
    if async_op:
        return work
    work.wait()
    return None


def _op_name(op) -> str:
    name = getattr(op, "name", op)
    name = str(name).lower()
    if name == "avg":
        name = "mean"
    if name not in _OPS:
        raise ValueError(f"all_reduce(): op={op!r}; expected one of {_OPS}")
    return name


def broadcast(tensor: Tensor, src: int = 0, async_op: bool = False):
    """Overwrite ``tensor`` on every rank with rank ``src``'s values (same shape and dtype on
    every rank)."""
    comm = _require("broadcast")
    _check_tensor(tensor, "broadcast")
    _check_rank(src, "broadcast", "src")
    arr, own = _host(tensor)
    size = _World.size

    def finish():
        if size > 1 and _World.rank != src:
            _write_back(tensor, arr, own)

    request = comm.Ibcast(arr, root=src) if comm is not None and size > 1 else None
    work = Work(request, f"broadcast(src={src})", finish)
    if async_op:
        return work
    work.wait()
    return None


def all_gather(tensor_list: list, tensor: Tensor, async_op: bool = False):
    """Fill ``tensor_list`` (one tensor per rank, each of ``tensor``'s shape and dtype) with
    every rank's ``tensor``, in rank order."""
    comm = _require("all_gather")
    _check_tensor(tensor, "all_gather")
    if not isinstance(tensor_list, list) or len(tensor_list) != _World.size:
        raise ValueError(f"all_gather(): tensor_list must be a list of world_size="
                         f"{_World.size} tensors, got "
                         f"{len(tensor_list) if isinstance(tensor_list, list) else tensor_list!r}")
    for i, t in enumerate(tensor_list):
        _check_tensor(t, "all_gather", f"tensor_list[{i}]")
        if t.shape != tensor.shape or t.dtype != tensor.dtype:
            raise ValueError(f"all_gather(): tensor_list[{i}] is {t.dtype}{list(t.shape)}, "
                             f"expected {tensor.dtype}{list(tensor.shape)} like tensor")
    src, _ = _host(tensor)
    out = np.empty((_World.size,) + src.shape, dtype=src.dtype)

    def finish():
        for t, part in zip(tensor_list, out):
            arr, own = _host(t)
            if own:
                arr[...] = part
                _write_back(t, arr, True)
            else:
                _write_back(t, np.ascontiguousarray(part), False)

    if comm is not None and _World.size > 1:
        request = comm.Iallgather(src, out)
    else:
        out[0] = src
        request = None
    work = Work(request, "all_gather", finish)
    if async_op:
        return work
    work.wait()
    return None


def barrier() -> None:
    """Wait until every rank has reached this point (within the timeout)."""
    comm = _require("barrier")
    if comm is not None and _World.size > 1:
        _wait(comm.Ibarrier(), "barrier")


def _check_rank(r, fn, name) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < _World.size:
        raise ValueError(f"{fn}(): {name}={r!r} must be a rank in [0, {_World.size})")


# ------------------------------------------------------------ for the layers above

def _allreduce_array(arr: np.ndarray, op: str = "sum"):
    """Start an in-place all-reduce of a host array; returns the request (None alone)."""
    if _World.comm is None or _World.size == 1:
        return None
    return _World.comm.Iallreduce(_World.MPI.IN_PLACE, arr, _mpi_op(op))


def _allreduce_now(values, op: str = "sum") -> np.ndarray:
    """All-reduce a few numbers (metrics) in float64 and return them."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    request = _allreduce_array(arr, op)
    if request is not None:
        _wait(request, f"all_reduce of {arr.size} values")
    return arr


def _gather_strings(text: str) -> list[str] | None:
    """Every rank's ``text`` on rank 0 (None elsewhere); for small JSON states."""
    if _World.comm is None or _World.size == 1:
        return [text]
    return _World.comm.gather(text, root=0)


def _active() -> bool:
    """Whether more than one rank takes part."""
    return _World.initialized and _World.size > 1
