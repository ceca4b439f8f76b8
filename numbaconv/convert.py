"""Turn a PyTorch checkpoint into a safetensors file that numbaconv (and PyTorch) load.

    python -m numbaconv.convert resnet18.pth resnet18.safetensors
    python -m numbaconv.convert ckpt.pt model.safetensors --key model --dtype float32

The checkpoint is read with ``torch.load(..., weights_only=True)``: tensors, numbers and
containers only, never unpickled code. It may be a state dict, or a dict holding one under
``state_dict``, ``model_state_dict`` or ``model`` (or the key ``--key`` names). A ``module.``
prefix on every key (a DistributedDataParallel checkpoint) is removed unless
``--keep-prefix``. float16 and bfloat16 tensors are written as ``--dtype`` (float32 unless
told), because numbaconv computes in float32 and float64. Needs PyTorch.
"""

from __future__ import annotations

import argparse
import sys


def _state_dict(obj, key, path):
    import torch

    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{path}: no entry {key!r} in the checkpoint")
        obj = obj[key]
    elif isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: holds no state dict (a dict of tensors); name its entry "
                         f"with --key")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        skipped = sorted(set(obj) - set(tensors))[:5]
        raise ValueError(f"{path}: entries that are not tensors: {skipped}; name the state "
                         f"dict's entry with --key")
    return tensors


def convert(src, dst, key=None, dtype="float32", keep_prefix=False) -> dict:
    """Convert the PyTorch checkpoint ``src`` to the safetensors file ``dst``; returns the
    NumPy arrays written, by name."""
    try:
        import torch
    except ImportError:
        raise ImportError("numbaconv.convert needs PyTorch to read .pth files") from None
    import numpy as np

    from .serialization import save

    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # an unpickling refusal, a corrupt file
        raise ValueError(f"{src}: cannot be read as a weights-only PyTorch checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    tensors = _state_dict(obj, key, src)
    if not keep_prefix and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    target = {"float32": torch.float32, "float64": torch.float64}[dtype]
    arrays = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(target)
        arrays[name] = np.ascontiguousarray(t.numpy())
    save(arrays, dst, metadata={"converted_from": str(src)})
    return arrays


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m numbaconv.convert",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src", help="PyTorch checkpoint (.pth, .pt)")
    ap.add_argument("dst", help="safetensors file to write")
    ap.add_argument("--key", default=None, help="the checkpoint's entry holding the state dict")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="what float16/bfloat16 tensors become")
    ap.add_argument("--keep-prefix", action="store_true",
                    help="keep a 'module.' prefix on every key")
    args = ap.parse_args(argv)
    try:
        arrays = convert(args.src, args.dst, args.key, args.dtype, args.keep_prefix)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"numbaconv.convert: {e}", file=sys.stderr)
        return 1
    n = sum(a.size for a in arrays.values())
    print(f"{args.dst}: {len(arrays)} tensors, {n:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
