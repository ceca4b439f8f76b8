"""State dicts in and out as ``.safetensors`` files (the ``safetensors`` package's NumPy API).

safetensors is the format PyTorch, Hugging Face and most model hubs share: a JSON header and
raw little-endian tensors, nothing executable. numbaconv's ``state_dict()`` keys are PyTorch's,
so a file written by ``safetensors.torch.save_file(torch_model.state_dict(), path)`` loads
into the numbaconv model of the same architecture, and the reverse::

    numbaconv.save(model.state_dict(), "lenet.safetensors")
    model.load_state_dict(numbaconv.load("lenet.safetensors"))

Writes are atomic (a temporary file beside the target, then a rename); a file that is not a
whole safetensors file is a ``ValueError`` naming the path.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .tensor import Tensor

# what numbaconv tensors can hold (float16 is refused at creation: no kernels for it)
_LOADABLE = (np.float32, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_)


def _require():
    try:
        import safetensors.numpy as st
    except ImportError:
        raise ImportError("numbaconv.save/load need the safetensors package: pip install "
                          "safetensors") from None
    return st


def save(state_dict, path, metadata: dict | None = None) -> None:
    """Write ``state_dict`` (names to Tensors or NumPy arrays, e.g. ``model.state_dict()``)
    to ``path`` as safetensors. ``metadata``: optional str -> str pairs for the header."""
    st = _require()
    if not hasattr(state_dict, "items"):
        raise TypeError(f"save(): state_dict must be a mapping of names to tensors, got "
                        f"{type(state_dict).__name__}")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError("save(): metadata must be a dict of str to str")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"save(): key {name!r} is not a str")
        if value is None:
            continue
        if isinstance(value, Tensor):
            arr = value.numpy()
        elif isinstance(value, np.ndarray | np.generic):
            arr = np.asarray(value)
        else:
            raise TypeError(f"save(): {name} is a {type(value).__name__}; expected a Tensor "
                            f"or a NumPy array")
        arrays[name] = np.ascontiguousarray(arr)
    for name, arr in arrays.items():
        for other, b in arrays.items():
            if other != name and arr.size and b.size and np.shares_memory(arr, b):
                arrays[name] = arr.copy()  # safetensors refuses shared memory: separate them
                break
    data = st.save(arrays, metadata=metadata)
    from .train import _atomic_write

    _atomic_write(Path(os.fspath(path)), lambda f: f.write(data))


def load(path, device=None) -> OrderedDict:
    """The tensors of a safetensors file, by name, on ``device`` (default: the default
    device); what ``Module.load_state_dict`` takes."""
    st = _require()
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e})") from None
    try:
        arrays = st.load(raw)
    except Exception as e:  # safetensors raises its own SafetensorError, or ValueError
        raise ValueError(f"{path}: not a whole safetensors file ({type(e).__name__}: {e})"
                         ) from None
    from .tensor import tensor

    out = OrderedDict()
    for name, arr in arrays.items():
        if arr.dtype.type not in _LOADABLE:
            raise TypeError(f"{path}: {name} has dtype {arr.dtype}; numbaconv tensors hold "
                            f"float32, float64, integers and bool (convert the file, e.g. "
                            f"python -m numbaconv.convert --dtype float32)")
        out[name] = tensor(arr, device=device)
    return out
