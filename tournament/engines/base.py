"""The engine interface.

An engine turns a training slice of the selected assets into long-only, fully invested
weights for one profile. It declares the profiles it supports; a cell asking for any other
profile is `unsupported` (never delegated). Any exception from `weights` makes the cell
`failed` with the exception text as its reason (never an equal-weight substitute).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


class EngineError(RuntimeError):
    """An engine could not produce weights (solver status, infeasible problem, ...)."""


@dataclass(frozen=True)
class EngineParams:
    max_weight: float = 1.0
    covariance: str = "ledoit_wolf"
    risk_free: float = 0.0


class Engine:
    name: ClassVar[str]
    supported_profiles: ClassVar[frozenset[str]]

    def supports(self, profile: str) -> bool:
        return profile in self.supported_profiles

    def weights(self, train: np.ndarray, *, profile: str, params: EngineParams) -> np.ndarray:
        """Weights (length = columns of `train`) for one profile. Sets `self.solver_`."""
        raise NotImplementedError

    # Name of the solver/algorithm that produced the last weights (for labelling cells).
    solver_: str = ""
    # cvxpy status of the last solve ("" for closed-form weights). Engines return the weights
    # of any status that carries a solution (optimal, optimal_inaccurate, user_limit) and
    # raise for the others; Stage 1 applies ONE acceptance rule (tournament.acceptance).
    solver_status_: str = ""


def check_weights(w: np.ndarray, *, n: int, max_weight: float, dust: float = 1e-7) -> np.ndarray:
    """Validate an engine's raw output; zero solver dust; raise EngineError if invalid.

    Solver dust (|w| < 1e-7 and negative) is set to 0 and the vector renormalised, so cells
    satisfy w >= 0 and sum(w) = 1 exactly up to float rounding. Anything larger is an error.
    """
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise EngineError(f"engine returned {w.shape[0]} weights for {n} assets")
    if not np.isfinite(w).all():
        raise EngineError("engine returned non-finite weights")
    if (w < -dust).any():
        raise EngineError(f"engine returned a negative weight {w.min():.3g} (long-only)")
    w = np.where(w < dust, np.where(w < 0, 0.0, w), w)
    total = w.sum()
    if abs(total - 1) > 1e-5:
        raise EngineError(f"engine weights sum to {total:.8f}, not 1 (fully invested)")
    w = w / total
    if w.max() > max_weight + 1e-6:
        raise EngineError(f"weight {w.max():.4f} exceeds the cap {max_weight}")
    return w
