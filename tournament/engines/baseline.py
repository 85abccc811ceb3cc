"""Baseline engine: raw-pool equal weight, present in every tournament as a reference."""
from __future__ import annotations

import numpy as np

from .base import Engine, EngineError, EngineOutput, EngineParams


class BaselineEngine(Engine):
    name = "baseline"
    PROFILE_METHODS = {"equal_weight": "_equal_weight"}
    # The reference is 1/n of the raw pool whatever cap the user sets for the real engines.
    applies_max_weight = False

    def _equal_weight(self, train: np.ndarray, params: EngineParams) -> EngineOutput:
        n = train.shape[1]
        if n == 0:
            raise EngineError("no eligible assets")
        return EngineOutput(np.full(n, 1.0 / n), solver="closed_form")
