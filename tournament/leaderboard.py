"""The leaderboard: the top ok strategies by Sharpe, then the baselines (pure pandas).

`leaderboard_frame` is the one place it is built. The CLI's printed table
(`leaderboard_text`), report.html, the Markdown summary and the Prefect artifacts
(tournament.report, tasks/artifacts.py) are views of that frame: they choose columns and
formatting, never rows.
"""
from __future__ import annotations

import pandas as pd

from .schema import BASELINE_ENGINE, OK, RESULT_KEYS, STRATEGY_KEYS

STRATEGY, KEYS = STRATEGY_KEYS, RESULT_KEYS
# Metrics shown in the leaderboard (when present), then any extra statistics columns.
BOARD_METRICS = ["sharpe", "cagr", "volatility", "max_drawdown", "turnover", "costs",
                 "final_equity"]
KNOWN_EXTRAS = ["dsr", "pbo", "mcs", "mcs_pvalue", "spa_pvalue", "stepm", "friction_decay",
                "temporal_fragility", "kendall_tau"]
# Columns of results.parquet that are not "extra statistics" (everything else is shown).
BASE_COLUMNS = set(KEYS) | {"status", "reason", "sim_seconds", "total_return", "sortino",
                            "calmar", "var_95", "cvar_95", "turnover_per_rebalance",
                            "n_rebalances", "win_rate", "n_days", "window_sharpe_mean",
                            "window_sharpe_std", "race_tier", "race_promoted",
                            "race_reason"} | set(BOARD_METRICS)
# The printed table has to fit a terminal: of the statistics, only these.
PRINTED_EXTRAS = ["dsr", "pbo", "friction_decay", "temporal_fragility", "mcs", "stepm"]


def ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows that ran ok (none when the frame has no status column)."""
    if results.empty or "status" not in results:
        return results.iloc[0:0]
    return results[results["status"] == OK]


def is_baseline(frame: pd.DataFrame) -> pd.Series:
    """Rows of a baseline (raw-pool equal weight, the buy-and-hold benchmark)."""
    if "engine" not in frame:
        return pd.Series(False, frame.index)
    return frame["engine"] == BASELINE_ENGINE


def extra_columns(results: pd.DataFrame) -> list[str]:
    """Statistics columns beyond the base metrics (dsr, pbo, ... when present)."""
    known = [c for c in KNOWN_EXTRAS if c in results.columns]
    other = [c for c in results.columns if c not in BASE_COLUMNS and c not in known]
    return known + other


def leaderboard_frame(results: pd.DataFrame, *, top: int = 10, simulator: str | None = None,
                      with_baselines: bool = True) -> pd.DataFrame:
    """Top `top` ok strategies by Sharpe (optionally of one simulator), ranked 1..top, then
    the baselines (rank NA); a `kind` column says which ("strategy" or "baseline")."""
    ok = ok_rows(results)
    if simulator is not None and not ok.empty:
        ok = ok[ok["simulator"] == simulator]
    if ok.empty:
        return ok
    ok = ok.sort_values("sharpe", ascending=False, kind="stable")
    base = is_baseline(ok)
    best = ok[~base].head(top).assign(kind="strategy")
    best.insert(0, "rank", pd.array(range(1, len(best) + 1), dtype="Int64"))
    if not with_baselines:
        return best
    baselines = ok[base].assign(kind="baseline")
    baselines.insert(0, "rank", pd.array([pd.NA] * len(baselines), dtype="Int64"))
    return pd.concat([best, baselines], ignore_index=True)


def leaderboard_columns(results: pd.DataFrame) -> list[str]:
    """The columns a leaderboard view shows for these results: rank, the keys, the metrics
    and every extra statistic present."""
    return ["rank", *KEYS, *[c for c in BOARD_METRICS if c in results], *extra_columns(results)]


def leaderboard_text(results: pd.DataFrame, *, top: int = 15) -> str:
    """The leaderboard as the CLI prints it: a plain table, 3 decimals, the statistics in
    PRINTED_EXTRAS only."""
    board = leaderboard_frame(results, top=top)
    if board.empty:
        return "leaderboard: no ok results"
    cols = ["rank", *KEYS, *[c for c in BOARD_METRICS if c in board],
            *[c for c in PRINTED_EXTRAS if c in board]]
    return board[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}")
