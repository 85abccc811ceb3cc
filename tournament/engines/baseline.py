"""Baseline engine: raw-pool equal weight, present in every tournament as a reference."""
from __future__ import annotations

import numpy as np

from .base import Engine, EngineError, EngineParams


class BaselineEngine(Engine):
    name = "baseline"
    supported_profiles = frozenset({"equal_weight"})

    def weights(self, train: np.ndarray, *, profile: str, params: EngineParams) -> np.ndarray:
        n = train.shape[1]
        if n == 0:
            raise EngineError("no eligible assets")
        self.solver_ = "closed_form"
        return np.full(n, 1.0 / n)
