"""Stage 2 task: simulate one chunk of strategies for one (rebalance, simulator) pair."""
from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task

from tournament.config import TournamentConfig
from tournament.cube import WeightsCube
from tournament.stage2 import simulate_pair

from .common import injected_delay, locked_policy, log_execution


@task(cache_policy=locked_policy(), persist_result=True, retries=2, retry_delay_seconds=1,
      task_run_name="stage2 {chunk_name}")
def simulate_chunk(returns: np.ndarray, dates: pd.DatetimeIndex, cube: WeightsCube,
                   keys: list[tuple[str, str, str]], config: TournamentConfig, *,
                   rebalance: str, simulator: str, chunk_name: str, cache_key: str,
                   key_parts: dict) -> dict:
    injected_delay()
    result = simulate_pair(returns, dates, cube, keys, rebalance=rebalance,
                           simulator=simulator, config=config)
    log_execution("stage2", cache_key, len(keys))
    return {"result": result, "key_parts": key_parts}
