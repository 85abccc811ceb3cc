"""Moment estimates shared by the engines that take them as inputs (custom cvxpy engine)."""
from __future__ import annotations

import numpy as np


def covariance(train: np.ndarray, method: str = "ledoit_wolf") -> np.ndarray:
    """Covariance of a (days x assets) training slice with no NaN."""
    if method == "ledoit_wolf":
        from sklearn.covariance import LedoitWolf
        return LedoitWolf().fit(train).covariance_
    if method == "sample":
        return np.cov(train, rowvar=False, ddof=1)
    raise ValueError(f"unknown covariance estimator {method!r}")


def expected_returns(train: np.ndarray) -> np.ndarray:
    return train.mean(axis=0)
