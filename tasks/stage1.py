"""Stage 1 task: solve one chunk of (window, selection, engine, profile) cells."""
from __future__ import annotations

import numpy as np
from prefect import task

from tournament.config import TournamentConfig
from tournament.cube import Cell, StoredCell
from tournament.stage1 import solve_cells
from tournament.windows import Window
from tournament.schema import UNSUPPORTED

from .common import injected_delay, locked_policy, log_execution
from .unit_store import UnitStore


@task(cache_policy=locked_policy(), persist_result=True, retries=2, retry_delay_seconds=1,
      task_run_name="stage1 {chunk_name}")
def solve_chunk(returns: np.ndarray, windows: list[Window], cells: list[Cell],
                config: TournamentConfig, assets: tuple[str, ...], *, chunk_name: str,
                cache_key: str, key_parts: dict, unit_keys: list[str | None]) -> dict:
    """The chunk's cells as StoredCells (weights by asset name), in `cells` order: each
    found under its own key (`unit_keys`; None = unsupported, never stored) or solved (core
    call) and stored. Returns them with how many were solved and how many were reused."""
    injected_delay()
    units = UnitStore.of_running_task()
    found = {i: units.read(key) for i, key in enumerate(unit_keys) if key is not None}
    missing = [i for i in range(len(cells)) if found.get(i) is None]
    solved = solve_cells(returns, windows, [cells[i] for i in missing], config)
    for i, result in zip(missing, solved):
        found[i] = StoredCell.of(result, assets)
        if result.status != UNSUPPORTED:
            units.write(unit_keys[i], found[i])
    n_solved = sum(r.status != UNSUPPORTED for r in solved)
    if n_solved:                          # a real execution, not a replay of stored cells
        log_execution("stage1", cache_key, n_solved)
    from flows.runtime import numba_load_after_stage1
    numba_load_after_stage1()             # a worker that deferred it loads numba now
    return {"cells": [found[i] for i in range(len(cells))], "computed": n_solved,
            "reused": len(cells) - len(missing), "key_parts": key_parts}
