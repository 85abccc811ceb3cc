"""Universe selection, point-in-time: each mode sees only the training slice.

Every selector takes a (days x assets) training slice (NaN = gap) and returns a boolean mask
over all assets. Assets with any gap in the slice, and assets whose returns are constant over
the slice (a stale or forward-filled price: zero variance, no correlation), are never
selected (that window only).
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, unknown_name
from .registry import SELECTIONS


class SelectionError(RuntimeError):
    """A selection could not produce an eligible universe for a window."""


def eligible(train: np.ndarray) -> np.ndarray:
    """Assets with a full, non-constant history in this training slice."""
    full = ~np.isnan(train).any(axis=0)
    varies = (train != train[:1]).any(axis=0) if train.shape[0] else np.zeros(train.shape[1], bool)
    return full & varies


def _top(scores: np.ndarray, ok: np.ndarray, k: int, *, largest: bool) -> np.ndarray:
    # Stable order by (score, asset index) so ties never depend on sort internals.
    idx = np.flatnonzero(ok)
    keys = -scores[idx] if largest else scores[idx]
    chosen = idx[np.lexsort((idx, keys))[:k]]
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[chosen] = True
    return mask


def select_all(train: np.ndarray, *, top_k: int) -> np.ndarray:
    """all: every asset with a full training history (the raw pool)."""
    return eligible(train)


def select_momentum(train: np.ndarray, *, top_k: int) -> np.ndarray:
    """momentum: the top_k assets by compounded return over the training slice."""
    ok = eligible(train)
    growth = np.where(ok, np.prod(1 + np.nan_to_num(train), axis=0), -np.inf)
    return _top(growth, ok, top_k, largest=True)


def select_low_vol(train: np.ndarray, *, top_k: int) -> np.ndarray:
    """low_vol: the top_k assets with the lowest daily volatility over the training slice."""
    ok = eligible(train)
    vol = np.where(ok, np.nanstd(train, axis=0), np.inf)
    return _top(vol, ok, top_k, largest=False)


def select_cluster(train: np.ndarray, *, top_k: int) -> np.ndarray:
    """cluster: top_k hierarchical correlation clusters, one asset each (best Sharpe)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    ok = eligible(train)
    idx = np.flatnonzero(ok)
    if idx.size <= top_k:
        return ok
    x = train[:, idx]
    corr = np.corrcoef(x, rowvar=False)
    dist = np.sqrt(np.clip(0.5 * (1 - corr), 0, None))
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(linkage(squareform(dist, checks=False), method="average"),
                      t=top_k, criterion="maxclust")
    sharpe = x.mean(axis=0) / x.std(axis=0)
    mask = np.zeros(train.shape[1], dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        best = members[np.lexsort((members, -sharpe[members]))[0]]
        mask[idx[best]] = True
    return mask


SELECTORS = {"all": select_all, "momentum": select_momentum,
             "low_vol": select_low_vol, "cluster": select_cluster}
assert tuple(SELECTORS) == SELECTIONS


def select(mode: str, train: np.ndarray, *, top_k: int) -> np.ndarray:
    if mode not in SELECTORS:
        raise ConfigError(unknown_name("selection mode", mode, SELECTORS))
    return SELECTORS[mode](train, top_k=top_k)
