"""cvxportfolio engine: weights from cvxportfolio's own policies, executed once per cell.

Profiles (declared honestly; anything else is `unsupported`, never delegated):

* equal_weight -> `cvx.Uniform()` policy (1/n on the non-cash assets; fails if 1/n > cap).
* min_variance -> `cvx.SinglePeriodOptimization(-cvx.FullCovariance(Sigma),
                  [cvx.LongOnly(applies_to_cash=True), cvx.NoCash(), cvx.MaxWeights(cap)])`,
                  i.e. min w' Sigma w s.t. w >= 0, cash weight 0 (so sum w = 1, fully
                  invested, leverage 1), w <= cap. Benchmark AllCash (the default), so the
                  risk term is the absolute variance of the post-trade weights.

Not supported: max_sharpe (cvxportfolio has no max-Sharpe objective, only mean-variance
trade-offs `ReturnsForecast() - gamma * risk`, which are not max Sharpe), risk_parity and
hrp (no such policies).

Covariance: `Sigma` is a fixed DataFrame, the same estimate the custom engine uses
(`tournament.estimation.covariance`, Ledoit-Wolf or sample per params.covariance), rescaled
by 1 / mean(diag) so the objective is O(1) (scaling does not change the minimiser). So
cvxportfolio's own forecaster (HistoricalFactorizedCovariance, a sample covariance) is not
used and custom/cvxportfolio min_variance are directly comparable.

Market data: none. The policy runs with `execute(h, market_data=None, t=...)` (documented
since cvxportfolio 1.4.0): every input is supplied, so no market-data server exists, no
forecaster needs past returns, and nothing can ever be downloaded. `include_cash_return` is
off (it would need a cash-rate series) and there is no fallback solver (a Clarabel failure
is reported, not silently re-solved by SCS). cvxportfolio is not thread-safe and adjusts
logging during runs: calls are serialised by a lock and the 'cvxportfolio' and root logger
levels are restored afterwards.
"""
from __future__ import annotations

import logging
import threading

import numpy as np
import pandas as pd

from ..estimation import covariance
from .base import (Engine, EngineError, EngineOutput, EngineParams,
                   require_equal_weight_within_cap)

SOLVER = "CLARABEL"
# Tighter than Clarabel's defaults (1e-8 gaps), which leave weights up to ~1e-4 off the
# optimum on daily-return covariances; with these, ~1e-8 of an independent SLSQP solve.
SOLVER_PARAMS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
CASH = "_CASH_"
_T = pd.Timestamp("2000-01-03")   # nominal execution time; no market data is consulted
_LOCK = threading.Lock()


class _QuietCvxportfolio:
    """Keep cvxportfolio's logging out of stdout/stderr and restore the root level."""

    def __enter__(self):
        self._root = logging.getLogger().level
        self._lib = logging.getLogger("cvxportfolio")
        self._lib_level = self._lib.level
        self._lib.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._lib.setLevel(self._lib_level)
        logging.getLogger().setLevel(self._root)
        return False


def _status(policy) -> str:
    """cvxpy status of an optimisation policy's last solve ("" for Uniform)."""
    return getattr(policy, "last_status", "")


def _recording_spo(cvx):
    """SinglePeriodOptimization that keeps its cvxpy status: `execute` ends with
    `finalize_estimator`, which drops the problem, so read it right after the solve."""
    class RecordingSPO(cvx.SinglePeriodOptimization):
        last_status = ""

        def values_in_time_recursive(self, **kwargs):
            try:
                return super().values_in_time_recursive(**kwargs)
            finally:
                problem = getattr(self, "_problem", None)
                self.last_status = str(problem.status) if problem is not None and \
                    problem.status else ""
    return RecordingSPO


class CvxportfolioEngine(Engine):
    name = "cvxportfolio"
    warm_imports = ("cvxportfolio",)
    PROFILE_METHODS = {"equal_weight": "_equal_weight", "min_variance": "_min_variance"}

    def _equal_weight(self, train: np.ndarray, params: EngineParams) -> EngineOutput:
        import cvxportfolio as cvx

        n = train.shape[1]
        require_equal_weight_within_cap(n, float(params.max_weight))
        return _execute(cvx.Uniform(), "cvxportfolio.Uniform", n)

    def _min_variance(self, train: np.ndarray, params: EngineParams) -> EngineOutput:
        import cvxportfolio as cvx

        n = train.shape[1]
        cap = float(params.max_weight)
        names = _asset_names(n)
        sigma = covariance(train, params.covariance)
        sigma = sigma / np.mean(np.diag(sigma))
        constraints = [cvx.LongOnly(applies_to_cash=True), cvx.NoCash()]
        if cap < 1:
            constraints.append(cvx.MaxWeights(cap))
        policy = _recording_spo(cvx)(
            -cvx.FullCovariance(pd.DataFrame(sigma, index=names, columns=names)),
            constraints, include_cash_return=False, fallback_solver=None, solver=SOLVER,
            **SOLVER_PARAMS)
        return _execute(policy, f"cvxportfolio.SinglePeriodOptimization/{SOLVER}", n)


def _asset_names(n: int) -> list[str]:
    return [f"a{i}" for i in range(n)]


def _execute(policy, label: str, n: int) -> EngineOutput:
    """Run `policy` once from all cash (value 1); its post-trade weights are the answer."""
    h = pd.Series(np.r_[np.zeros(n), 1.0], index=[*_asset_names(n), CASH])
    with _LOCK, _QuietCvxportfolio():
        try:
            u, _, _ = policy.execute(h, None, t=_T)
        except Exception as exc:  # noqa: BLE001 - any cvxportfolio failure -> EngineError
            raise EngineError(f"{label} failed: {type(exc).__name__}: {exc}", solver=label,
                              solver_status=_status(policy) or "solver_error") from None
    # cvxportfolio returns the weights of any status with a solution (it only raises on
    # infeasible/unbounded); Stage 1's one status rule judges them.
    status = _status(policy)
    post = (h + u).to_numpy(dtype=np.float64)
    if not np.isfinite(post).all():
        raise EngineError(f"{label} returned non-finite weights", solver=label,
                          solver_status=status)
    if abs(post[-1]) > 1e-6:
        raise EngineError(f"{label} left cash weight {post[-1]:.3g} (not fully invested)",
                          solver=label, solver_status=status)
    return EngineOutput(post[:-1] / post[:-1].sum(), solver=label, solver_status=status)
