"""The losses' per-row parts on the CPU: the negative log-likelihood of each row's target and
its gradient (NumPy's vectorised gathers and scatters: one pass over the rows, no kernel to
compile). The log-softmax before it is elementwise.py's ``softmax_rows``.
"""

from __future__ import annotations

import numpy as np


def nll_rows(logp, target, weight, ignore_index):
    """Per-row -weight[t] * logp[i, t] and the row weights (0 where t == ignore_index)."""
    valid = target != ignore_index
    safe = np.where(valid, target, 0)
    w = weight[safe] if weight is not None else np.ones(len(target), dtype=logp.dtype)
    w = np.where(valid, w, logp.dtype.type(0)).astype(logp.dtype)
    picked = logp[np.arange(len(target)), safe]
    return -(picked * w), w


def nll_rows_backward(g_rows, target, row_weights, n_classes):
    """(rows, C): -g[r] * w[r] at each row's target, zero elsewhere."""
    out = np.zeros((len(target), n_classes), dtype=g_rows.dtype)
    safe = np.clip(target, 0, n_classes - 1)
    # an ignored row (weight 0) gets nothing, even where g is NaN (a mean over no rows)
    rows = np.flatnonzero(row_weights != 0)
    out[rows, safe[rows]] = -g_rows[rows] * row_weights[rows]
    return out
