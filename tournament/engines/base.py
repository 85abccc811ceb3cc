"""The engine protocol: a new engine is one file plus one registry line.

An engine turns a training slice (days x selected assets) into long-only, fully invested
weights for one profile. In its file, a subclass of `Engine`:

* sets `name` and `PROFILE_METHODS`, a map from profile name to the name of the method that
  implements it, ``method(train, params) -> EngineOutput``. `supported_profiles` is derived
  from that map (never written separately); a cell asking for any other profile is
  `unsupported` (never delegated to another engine);
* returns an `EngineOutput`: the weights together with the solver that produced them and
  that solver's cvxpy status ("" for closed-form weights). Engines return the weights of any
  status that carries a solution (optimal, optimal_inaccurate, user_limit) and raise for the
  others; Stage 1 applies ONE acceptance rule to the status (tournament.acceptance);
* raises `EngineError` when it cannot produce weights, carrying the solver label and status
  once a solver was chosen (they are recorded on the failed cell). Any exception makes the
  cell `failed` with its text as the reason, never an equal-weight substitute;
* uses the shared feasibility checks below rather than its own copies, so every engine fails
  an infeasible cell with the same reason;
* sets `applies_max_weight = False` only if it must ignore the user's cap (the raw-pool
  baseline); Stage 1 then solves and checks it uncapped.

The one registry line is a `register("engine", NAME, "module:Class")` call in
tournament/registry.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..estimation import expected_returns


class EngineError(RuntimeError):
    """An engine could not produce weights (solver status, infeasible problem, ...).

    `solver` / `solver_status` name the solver that failed ("" when none was reached)."""

    def __init__(self, message: str, *, solver: str = "", solver_status: str = "") -> None:
        super().__init__(message)
        self.solver = solver
        self.solver_status = solver_status


@dataclass(frozen=True)
class EngineParams:
    max_weight: float = 1.0
    covariance: str = "ledoit_wolf"
    risk_free: float = 0.0


@dataclass(frozen=True)
class EngineOutput:
    """An engine's raw weights, the solver/algorithm that produced them (labels the cell) and
    its cvxpy status ("" for closed-form weights)."""
    weights: np.ndarray
    solver: str
    solver_status: str = ""


class Engine:
    name: ClassVar[str]
    PROFILE_METHODS: ClassVar[dict[str, str]]
    supported_profiles: ClassVar[frozenset[str]]       # derived from PROFILE_METHODS
    applies_max_weight: ClassVar[bool] = True
    # Libraries the engine imports lazily (inside its methods, so listing engines stays
    # light): a Ray worker warm-up imports them before the first cell, not during it.
    warm_imports: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A map naming a missing method is a bug in the engine's file: fail at import.
        missing = [m for m in cls.PROFILE_METHODS.values() if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"{cls.__name__}.PROFILE_METHODS names missing methods {missing}")
        cls.supported_profiles = frozenset(cls.PROFILE_METHODS)

    def supports(self, profile: str) -> bool:
        return profile in self.supported_profiles

    def weights(self, train: np.ndarray, *, profile: str, params: EngineParams) -> EngineOutput:
        """Weights (length = columns of `train`) for one profile, with the solver label."""
        method = self.PROFILE_METHODS.get(profile)
        if method is None:
            raise EngineError(f"{self.name} engine does not implement profile {profile!r}")
        return getattr(self, method)(train, params)


# ------------------------------------------------------------ shared feasibility checks
def require_equal_weight_within_cap(n: int, cap: float) -> None:
    """Equal weight is 1/n per asset: it cannot honour a cap below that."""
    if 1.0 / n > cap + 1e-12:
        raise EngineError(f"equal weight 1/{n} exceeds the cap {cap}")


def require_cap_feasible(n: int, cap: float) -> None:
    """Fully invested under a per-asset cap needs n * cap >= 1 (any profile)."""
    if n * cap < 1 - 1e-12:
        raise EngineError(f"infeasible: cap {cap} x {n} assets < 1 (fully invested)")


def max_sharpe_excess(train: np.ndarray, risk_free: float) -> np.ndarray:
    """Expected excess returns of the window; max Sharpe needs one above the risk-free rate."""
    excess = expected_returns(train) - risk_free
    if excess.max() <= 0:
        raise EngineError("max_sharpe infeasible: no asset has expected return above "
                          "the risk-free rate in this window")
    return excess


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
