"""Stage 1 task: solve one chunk of (window, selection, engine, profile) cells."""
from __future__ import annotations

import numpy as np
from prefect import task

from tournament.config import TournamentConfig
from tournament.cube import Cell, CellResult
from tournament.stage1 import solve_cells
from tournament.windows import Window
from tournament.schema import UNSUPPORTED

from .common import injected_delay, locked_policy, log_execution


@task(cache_policy=locked_policy(), persist_result=True, retries=2, retry_delay_seconds=1,
      task_run_name="stage1 {chunk_name}")
def solve_chunk(returns: np.ndarray, windows: list[Window], cells: list[Cell],
                config: TournamentConfig, *, chunk_name: str, cache_key: str,
                key_parts: dict) -> dict:
    """Solve the chunk's cells (core call) and return results with their cache-key parts."""
    injected_delay()
    results: list[CellResult] = solve_cells(returns, windows, cells, config)
    log_execution("stage1", cache_key, sum(r.status != UNSUPPORTED for r in results))
    return {"results": results, "key_parts": key_parts}
