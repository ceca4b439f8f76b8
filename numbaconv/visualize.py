"""Looking inside a network: filters as an image grid, and the activations of any layer.

``filter_grid`` and ``activations`` need only NumPy; the ``plot_*`` helpers draw with
matplotlib (an optional dependency: ``pip install numbaconv[viz]``).
"""

from __future__ import annotations

import math

import numpy as np

from . import nn
from .autograd import no_grad
from .tensor import Tensor

__all__ = ["filter_grid", "activations", "plot_filters", "plot_feature_maps"]


def _weights(layer_or_weight) -> np.ndarray:
    if isinstance(layer_or_weight, nn.Conv2d | nn.ConvTranspose2d):
        w = layer_or_weight.weight
    else:
        w = layer_or_weight
    arr = w.numpy() if isinstance(w, Tensor) else np.asarray(w)
    if arr.ndim != 4:
        raise ValueError(f"filters must be a conv layer or a 4-D (out, in, kH, kW) weight, got "
                         f"shape {arr.shape}")
    return arr


def filter_grid(layer_or_weight, ncols: int | None = None, normalize: str = "each",
                padding: int = 1) -> np.ndarray:
    """Tile a convolution's filters into one image: (H, W, 3) float in [0, 1] when the
    filters have 3 input channels (shown as RGB, like AlexNet's famous first layer), else
    (H, W) with the input channels averaged. ``normalize``: ``"each"`` stretches every filter
    to [0, 1] on its own, ``"all"`` uses one range for all (comparable magnitudes)."""
    if normalize not in ("each", "all"):
        raise ValueError(f"filter_grid(): normalize={normalize!r}; expected 'each' or 'all'")
    w = _weights(layer_or_weight).astype(np.float64)
    n, c, kh, kw = w.shape
    tiles = w.transpose(0, 2, 3, 1) if c == 3 else w.mean(axis=1)[..., None]
    if normalize == "each":
        lo = tiles.min(axis=(1, 2, 3), keepdims=True)
        hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    else:
        lo, hi = tiles.min(), tiles.max()
    tiles = (tiles - lo) / np.maximum(hi - lo, 1e-12)
    ncols = ncols or math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ValueError(f"filter_grid(): ncols={ncols} must be positive")
    nrows = math.ceil(n / ncols)
    ch = tiles.shape[-1]
    grid = np.ones((nrows * (kh + padding) + padding, ncols * (kw + padding) + padding, ch))
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = padding + r * (kh + padding), padding + col * (kw + padding)
        grid[y:y + kh, x:x + kw] = tiles[i]
    return grid if ch == 3 else grid[..., 0]


def activations(model: nn.Module, x: Tensor, layers) -> dict:
    """Run ``model`` on ``x`` (under ``no_grad``) and return ``{name: output array}`` for each
    requested layer, by its dotted name in ``model.named_modules()`` (a str or a list)."""
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"activations(): no layer named {missing}; available: "
                         f"{[n for n in modules if n][:40]}")
    found = {}
    handles = []
    for name in names:
        def hook(module, inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else output
            found[name] = out.numpy()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from err
    return plt


def plot_filters(layer_or_weight, ncols=None, normalize="each", ax=None, title=None):
    """Show :func:`filter_grid` with matplotlib; returns the figure."""
    plt = _plt()
    grid = filter_grid(layer_or_weight, ncols, normalize)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(10, 0.4 * grid.shape[1] / 3 + 2),) * 2)
    else:
        fig = ax.figure
    ax.imshow(grid, cmap=None if grid.ndim == 3 else "gray", interpolation="nearest")
    ax.axis("off")
    ax.set_title(title or f"{_weights(layer_or_weight).shape[0]} filters")
    return fig


def plot_feature_maps(maps, index: int = 0, ncols: int = 8, max_maps: int = 32, title=None):
    """Show the channels of one sample's feature maps ((N, C, H, W) array or Tensor, or
    (C, H, W)) as a grid of grey images; returns the figure."""
    plt = _plt()
    arr = maps.numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if arr.ndim == 4:
        arr = arr[index]
    if arr.ndim != 3:
        raise ValueError(f"plot_feature_maps(): maps must be (N, C, H, W) or (C, H, W), got "
                         f"shape {arr.shape}")
    c = min(arr.shape[0], max_maps)
    ncols = min(ncols, c)
    nrows = math.ceil(c / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.3 * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < c:
            ax.imshow(arr[i], cmap="viridis", interpolation="nearest")
    if title:
        fig.suptitle(title)
    return fig
