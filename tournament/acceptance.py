"""One acceptance rule for solver statuses, the same for every engine (custom, skfolio,
cvxportfolio all solve through cvxpy + Clarabel and report cvxpy's status).

* ``optimal``: accepted (the weights still pass `check_weights`).
* ``optimal_inaccurate`` (Clarabel "AlmostSolved": it stopped, e.g. at an iteration cap, on
  an iterate that meets its reduced tolerances) and ``user_limit`` (stopped at a cap, a
  solution is present): accepted ONLY if the weights pass `check_weights` AND the
  first-order optimality residual below is at most its stated tolerance (RESIDUAL_TOL:
  1e-5 for the projected gradient, 5e-4 for the risk-contribution spread). Otherwise the cell cannot
  produce valid weights and the declared `on_infeasible` policy applies.
* any other status (infeasible, unbounded, solver_error, ...): rejected.
Closed-form profiles (equal weight, HRP) have no solver status and are always checked by
`check_weights` only.

The residual is computed here, from the cell's own training slice and final weights, never
from an engine's internals, so the same tolerance means the same thing for every engine:

* min_variance, max_sharpe: projected-gradient stationarity on the feasible set
  C = {w >= 0, sum w = 1, w <= cap}: ``max_i |w - P_C(w - g / max|g|)|_i``, with g the
  gradient of the objective (variance; minus the Sharpe ratio). It is 0 exactly at a KKT
  point and, in weight units, how far one unit projected-gradient step would move the
  weights.
* risk_parity: ``max_i |n RC_i - 1|``, RC_i = w_i (S w)_i / w'S w, the spread of the risk
  contributions around the equal share 1/n (0 exactly at the equal-risk portfolio).
The covariance is `tournament.estimation.covariance` of the training slice (the estimate
every engine is documented to use) and the mean its sample mean.
"""
from __future__ import annotations

import numpy as np

from .estimation import covariance, expected_returns

OPTIMAL = "optimal"
INEXACT = frozenset({"optimal_inaccurate", "user_limit"})
# Measured on the bundled data (20 assets, 180-day windows): optimal min-variance / max-Sharpe
# cells <= 5e-8, optimal risk-parity cells <= 7e-5 (Clarabel's own tolerances in the scaled
# problem); iteration-capped solves that Clarabel still calls "AlmostSolved" 7e-5 to 4e-3.
RESIDUAL_TOL = {"min_variance": 1e-5, "max_sharpe": 1e-5, "risk_parity": 5e-4}


class RejectedSolve(RuntimeError):
    """A solver status or residual that the acceptance rule rejects."""


def project_capped_simplex(v: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection onto {0 <= w <= cap, sum w = 1} (bisection on the shift)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        tau = 0.5 * (lo + hi)
        if np.clip(v - tau, 0.0, cap).sum() > 1.0:
            lo = tau
        else:
            hi = tau
    return np.clip(v - 0.5 * (lo + hi), 0.0, cap)


def optimality_residual(train: np.ndarray, profile: str, w: np.ndarray, *, cap: float,
                        method: str = "ledoit_wolf", risk_free: float = 0.0) -> float:
    """First-order optimality residual of weights `w` for `profile` (module docstring)."""
    sigma = covariance(train, method)
    sw = sigma @ w
    if profile == "risk_parity":
        rc = w * sw / float(w @ sw)
        return float(np.max(np.abs(w.size * rc - 1.0)))
    if profile == "min_variance":
        g = 2.0 * sw
    elif profile == "max_sharpe":
        excess = expected_returns(train) - risk_free
        vol = float(np.sqrt(w @ sw))
        g = -(excess / vol - float(excess @ w) * sw / vol ** 3)
    else:
        raise ValueError(f"no optimality residual for profile {profile!r}")
    step = g / np.max(np.abs(g))
    return float(np.max(np.abs(w - project_capped_simplex(w - step, min(cap, 1.0)))))


def accept_status(status: str, residual: float, profile: str) -> None:
    """Raise RejectedSolve unless the rule accepts (status, residual) for `profile`."""
    if status == OPTIMAL or status == "":
        return
    if status in INEXACT:
        tol = RESIDUAL_TOL.get(profile, 0.0)
        if residual <= tol:        # NaN (no residual) is never accepted
            return
        raise RejectedSolve(f"solver status {status} rejected: optimality residual "
                            f"{residual:.3g} > {tol:g}")
    raise RejectedSolve(f"solver status {status} rejected")
