"""Moment estimates shared by the engines that take them as inputs (custom cvxpy engine)."""
from __future__ import annotations

import numpy as np


def covariance(train: np.ndarray, method: str = "ledoit_wolf") -> np.ndarray:
    """Covariance of a (days x assets) training slice with no NaN."""
    if method == "ledoit_wolf":
        return ledoit_wolf(train)
    if method == "sample":
        return np.cov(train, rowvar=False, ddof=1)
    raise ValueError(f"unknown covariance estimator {method!r}")


def expected_returns(train: np.ndarray) -> np.ndarray:
    return train.mean(axis=0)


def ledoit_wolf(train: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf (2004) shrinkage towards a scaled identity, as sklearn.covariance.LedoitWolf
    computes it (same formula, same result to float rounding), in O(n p + p^2) numpy.

    sklearn's estimator also inverts the result (precision matrix, ~130 ms at 100 assets),
    which nothing here needs.
    """
    x = train - train.mean(axis=0)
    n, p = x.shape
    sample = x.T @ x / n                          # biased (1/n), as sklearn
    mu = np.trace(sample) / p
    frob = np.sum(sample ** 2)
    delta = (frob - 2 * mu * np.trace(sample) + p * mu * mu) / p
    beta = (np.sum(np.sum(x ** 2, axis=1) ** 2) / n - frob) / (p * n)
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    out = (1 - shrinkage) * sample
    out.flat[:: p + 1] += shrinkage * mu
    return out
