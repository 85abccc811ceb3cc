"""Derived outputs as cached tasks: leaderboard statistics and report charts.

They depend only on the results and returns frames (and the code computing them), so they
are keyed by those frames' digest (tournament.keys.outputs_key) and stored in result storage
like the cells: a rerun whose results did not change reuses them, and Prefect shows them as
Cached. The statistics run in the flow's own process; the charts beside them, on a Ray
worker when the run started Ray (flows.run_outputs.write_outputs).
"""
from __future__ import annotations

import pandas as pd
from prefect import task

from tournament.outputs import compute_statistics
from tournament.report import chart_images

from .common import locked_policy


@task(cache_policy=locked_policy(), persist_result=True, task_run_name="statistics")
def leaderboard_statistics(results: pd.DataFrame, returns: pd.DataFrame, *, periods: int,
                           cache_key: str) -> tuple[pd.DataFrame, dict]:
    """DSR, PBO, effective trials, the confidence set (core call): (results, settings)."""
    return compute_statistics(results, returns, periods=periods)


@task(cache_policy=locked_policy(), persist_result=True, task_run_name="report charts")
def report_charts(results: pd.DataFrame, returns: pd.DataFrame, *, cache_key: str
                  ) -> dict[str, str]:
    """The report's equity curves and heatmaps as base64 PNGs (core call)."""
    return chart_images(results, returns)
