"""Performance metrics, computed one way for every simulator. No clipping anywhere.

Inputs are one strategy's daily net returns over its horizon, its one-way turnover and costs
per day, and the horizon index of each rebalance day. Annualisation uses `periods` trading
days per year (252 by default).

Period counting: day 0 is the buy-in at the first rebalance's close; its return is the
buy-in cost only (nothing is held yet). Days 1..T are the held days. The buy-in cost stays
in total return, CAGR, final equity, max drawdown and costs; every per-day statistic
(volatility, Sharpe, Sortino, VaR, CVaR, win rate) uses the T held days only, so a cost-only
day does not enter a return distribution.

* CAGR is geometric: (1 + total)^(periods / T) - 1 with T held days, and only reported when
  T >= MIN_DAYS_TO_ANNUALISE (half a year); shorter paths get NaN, because annualising a
  few weeks turns noise into absurd rates.
* Sharpe / Sortino use daily mean excess return over `risk_free` (daily), sample std (ddof=1)
  and the downside deviation below 0, times sqrt(periods). Zero dispersion -> NaN.
* Max drawdown is on the compounded equity curve starting from 1.0 (a positive fraction).
* VaR/CVaR 95 are historical (Rockafellar-Uryasev on the empirical distribution), as losses.
* Turnover is one-way. `turnover` is annualised and excludes the initial buy-in from cash.
"""
from __future__ import annotations

import math

import numpy as np

MIN_DAYS_TO_ANNUALISE = 126

SCALAR_METRICS = ("total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown",
                  "calmar", "var_95", "cvar_95", "turnover", "turnover_per_rebalance",
                  "n_rebalances", "costs", "win_rate", "n_days", "final_equity",
                  "window_sharpe_mean", "window_sharpe_std")


def value_at_risk(returns: np.ndarray, beta: float = 0.95) -> float:
    r = np.sort(np.asarray(returns, dtype=float))
    k = max(int(math.ceil((1 - beta) * r.size)) - 1, 0)
    return float(-r[k])


def conditional_value_at_risk(returns: np.ndarray, beta: float = 0.95) -> float:
    """Rockafellar-Uryasev: mean loss in the worst (1-beta) share, with a fractional atom."""
    r = np.sort(np.asarray(returns, dtype=float))
    tail = (1 - beta) * r.size
    k = int(math.ceil(tail))
    whole = r[:k - 1].sum() if k > 1 else 0.0
    return float(-(whole + (tail - (k - 1)) * r[k - 1]) / tail)


def max_drawdown(returns: np.ndarray) -> float:
    equity = np.concatenate([[1.0], np.cumprod(1 + np.asarray(returns, dtype=float))])
    return float(np.max(1 - equity / np.maximum.accumulate(equity)))


def sharpe_ratio(returns: np.ndarray, *, periods: int = 252, risk_free: float = 0.0) -> float:
    r = np.asarray(returns, dtype=float) - risk_free
    if r.size < 2:
        return math.nan
    # Zero dispersion is tested exactly (max == min): the float std of a constant series is
    # ~1e-19, not 0, and would give a Sharpe of ~1e16.
    if r.max() == r.min():
        return math.nan
    return float(r.mean() / r.std(ddof=1) * math.sqrt(periods))


def sortino_ratio(returns: np.ndarray, *, periods: int = 252, risk_free: float = 0.0) -> float:
    r = np.asarray(returns, dtype=float) - risk_free
    if r.size < 2:
        return math.nan
    downside = math.sqrt(np.sum(np.minimum(r, 0.0) ** 2) / (r.size - 1))
    return float(r.mean() / downside * math.sqrt(periods)) if downside > 0 else math.nan


def cagr(returns: np.ndarray, *, periods: int = 252, held_days: int | None = None) -> float:
    """Geometric annual growth of `returns` over `held_days` (default: every entry)."""
    r = np.asarray(returns, dtype=float)
    days = r.size if held_days is None else held_days
    if days < MIN_DAYS_TO_ANNUALISE:
        return math.nan
    return float(np.prod(1 + r) ** (periods / days) - 1)


def window_stats(returns: np.ndarray, window_starts: np.ndarray, *, periods: int = 252,
                 risk_free: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Return and Sharpe of each segment [rebalance_k + 1, rebalance_{k+1}] of the path.

    Segments start the day after each rebalance (the first day the new weights earn) and run
    to the next rebalance day inclusive (the last one to the end of the path).
    """
    r = np.asarray(returns, dtype=float)
    bounds = list(np.asarray(window_starts, dtype=int) + 1) + [r.size]
    rets, sharpes = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = r[a:b]
        rets.append(np.prod(1 + seg) - 1 if seg.size else math.nan)
        sharpes.append(sharpe_ratio(seg, periods=periods, risk_free=risk_free))
    return np.array(rets), np.array(sharpes)


def compute_metrics(net_returns: np.ndarray, turnover: np.ndarray, costs: np.ndarray, *,
                    window_starts: np.ndarray, periods: int = 252,
                    risk_free: float = 0.0) -> dict[str, float]:
    """All scalar metrics of one strategy path (see module docstring for definitions)."""
    r = np.asarray(net_returns, dtype=float)
    held = r[1:]                                            # days 1..T (day 0 = buy-in)
    to = np.asarray(turnover, dtype=float)
    n = r.size
    total = float(np.prod(1 + r) - 1)
    growth = cagr(r, periods=periods, held_days=n - 1)
    mdd = max_drawdown(r)
    traded_days = np.flatnonzero(to[1:] > 0) + 1           # rebalances after the buy-in
    _, w_sharpe = window_stats(r, window_starts, periods=periods, risk_free=risk_free)
    finite = w_sharpe[np.isfinite(w_sharpe)]
    return {
        "total_return": total,
        "cagr": growth,
        "volatility": float(held.std(ddof=1) * math.sqrt(periods)) if n > 2 else math.nan,
        "sharpe": sharpe_ratio(held, periods=periods, risk_free=risk_free),
        "sortino": sortino_ratio(held, periods=periods, risk_free=risk_free),
        "max_drawdown": mdd,
        "calmar": growth / mdd if mdd > 0 and math.isfinite(growth) else math.nan,
        "var_95": value_at_risk(held, 0.95) if n > 1 else math.nan,
        "cvar_95": conditional_value_at_risk(held, 0.95) if n > 1 else math.nan,
        "turnover": float(to[1:].sum() / max(n - 1, 1) * periods),
        "turnover_per_rebalance": float(to[traded_days].mean()) if traded_days.size else 0.0,
        "n_rebalances": int(traded_days.size),
        "costs": float(np.sum(costs)),
        "win_rate": float(np.mean(held > 0)) if n > 1 else math.nan,
        "n_days": int(n),
        "final_equity": float(np.prod(1 + r)),
        "window_sharpe_mean": float(finite.mean()) if finite.size else math.nan,
        "window_sharpe_std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
    }
