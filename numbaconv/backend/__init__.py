"""Device names, the default device and the backend registry.

A backend is the only layer that touches kernels. Everything above it (tensor, functional, nn)
asks ``get_backend(device)`` for the object that implements the protocol in
:mod:`numbaconv.backend.base` and never imports ``numbaconv.kernels`` itself.
The CUDA backend is imported lazily so that ``import numbaconv`` never touches CUDA.
"""

from __future__ import annotations

import os

from .base import Backend

DEVICES = ("cpu", "cuda")
ENV_VAR = "NUMBACONV_BACKEND"

_backends: dict[str, Backend] = {}


def default_device() -> str:
    """The device named by ``NUMBACONV_BACKEND`` (``cpu`` when unset)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value == "":
        return "cpu"
    if value not in DEVICES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a known backend; expected one of "
            f"{', '.join(repr(d) for d in DEVICES)}"
        )
    return value


def parse_device(device) -> str:
    """Normalise a user-supplied device (``None``, ``"cpu"``, ``"cuda"``, ``"cuda:0"``)."""
    if device is None:
        return default_device()
    name = getattr(device, "type", device)  # accept objects with a .type, like torch.device
    if not isinstance(name, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    name = name.strip().lower()
    if name == "cuda:0":
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(
            f"device={device!r} is not a known device; expected one of "
            f"{', '.join(repr(d) for d in DEVICES)}"
        )
    return name


def get_backend(device: str) -> Backend:
    """The backend object for a (normalised) device name, created on first use."""
    backend = _backends.get(device)
    if backend is not None:
        return backend
    if device == "cpu":
        from .cpu import CPUBackend

        backend = CPUBackend()
    elif device == "cuda":
        backend = _load_cuda_backend()
    else:  # parse_device guards this; kept for callers that skip it
        raise ValueError(f"device={device!r} is not a known device; expected one of {DEVICES}")
    _backends[device] = backend
    return backend


def _load_cuda_backend() -> Backend:
    try:
        from . import cuda as cuda_module
    except ImportError as e:  # numba without a usable CUDA module
        raise RuntimeError(
            f"the 'cuda' backend could not load numba's CUDA support ({e}); install "
            f"numbaconv[cuda13] (or [cuda12]) on a machine with an NVIDIA GPU and driver, or "
            f"set NUMBA_ENABLE_CUDASIM=1 for the simulator") from None
    return cuda_module.CUDABackend()


def seed_all(seed: int) -> None:
    """Reseed the random generator of every backend created so far (and of those to come)."""
    global _seed
    _seed = int(seed)
    for backend in _backends.values():
        backend.manual_seed(_seed)


_seed: int | None = None


def initial_seed() -> int | None:
    return _seed


__all__ = ["DEVICES", "Backend", "default_device", "parse_device", "get_backend", "seed_all"]
