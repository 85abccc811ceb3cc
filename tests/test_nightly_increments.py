"""Nightly increments (issue 15, items 1 and 6): a prices file that grows by trading days is
rerun against the same result storage, and only the work that reads the new or changed rows
is done. Solves are counted through the execution log and the manifest's cache counts.

The grid: selection all x engine custom x profiles min_variance, equal_weight (+ the
baseline), rebalance window, windows 180/40/20 anchored at the file's first day. The file
starts at 250 prices (249 returns: rebalance rows 179, 199, 219, 239; the next, 259, opens
once the returns reach row 259, i.e. 20 more days).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, stop_process_tree
from tournament.cube import WeightsCube
from tournament.data import load_file
from tournament.schema import CUBE_PICKLE, MANIFEST, RETURNS
from tournament.windows import windows_for

pytestmark = [pytest.mark.server, pytest.mark.ray]

spec = importlib.util.spec_from_file_location("grow_prices", REPO / "scripts" / "grow_prices.py")
grow_prices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grow_prices)

GRID = ["--selections", "all", "--engines", "custom", "--profiles", "min_variance,equal_weight",
        "--rebalances", "window", "--fidelity", "low", "--train", "180", "--test", "40",
        "--step", "20", "--num-cpus", "1"]
CELLS_PER_WINDOW = 3            # all/custom/{min_variance, equal_weight} + the baseline


def _run(tmp: Path, prices: Path, out: str, storage: str, api_url: str, grid=GRID) -> dict:
    """`tournament run` on `prices` into tmp/out with result storage tmp/storage; returns
    the manifest and the run's execution-log lines."""
    log = tmp / f"exec-{out}.jsonl"
    start = str(pd.read_parquet(prices, columns=["date"])["date"].iloc[0].date())
    env = {k: v for k, v in os.environ.items() if k != "TOURNAMENT_EXECUTION_LOG"}
    env.update(PREFECT_API_URL=api_url, PYTHONPATH=str(REPO),
               TOURNAMENT_EXECUTION_LOG=str(log))
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--data", str(prices),
                             *grid, "--start", start, "--out", str(tmp / out),
                             "--result-storage", str(tmp / storage)],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        stop_process_tree(proc)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    manifest = json.loads((tmp / out / MANIFEST).read_text())
    return {"manifest": manifest, "executions": lines, "output": stdout + stderr,
            "cube": WeightsCube.from_pickle(tmp / out / CUBE_PICKLE), "dir": tmp / out}


def _solved(run: dict, kind: str) -> int:
    return sum(e["count"] for e in run["executions"] if e["kind"] == kind)


@pytest.fixture(scope="module")
def nights(tmp_path_factory, prefect_server):
    tmp = tmp_path_factory.mktemp("nightly")
    prices = tmp / "prices.parquet"
    grow_prices.grow(prices, init=250)
    runs = {"cold": _run(tmp, prices, "cold", "store", prefect_server)}
    grow_prices.grow(prices, append=1)
    runs["plus1"] = _run(tmp, prices, "plus1", "store", prefect_server)
    grow_prices.grow(prices, append=19)
    runs["plus20"] = _run(tmp, prices, "plus20", "store", prefect_server)
    shutil.copy(prices, tmp / "prices-270.parquet")
    runs["fresh"] = _run(tmp, tmp / "prices-270.parquet", "fresh", "fresh-store",
                         prefect_server)
    return {"tmp": tmp, "prices": prices, "runs": runs}


def test_one_day_that_opens_no_window_solves_no_cell_and_extends_every_path(nights):
    cold, night = nights["runs"]["cold"], nights["runs"]["plus1"]
    assert _solved(cold, "stage1") == 4 * CELLS_PER_WINDOW
    assert _solved(night, "stage1") == 0
    s1 = night["manifest"]["cache"]["stage1"]
    assert (s1["computed"], s1["cached"]) == (0, 4 * CELLS_PER_WINDOW)
    # The horizon grew by a day: every path is simulated again, through the new day.
    assert night["manifest"]["cache"]["stage2"]["computed"] == 3
    last = pd.Timestamp(night["manifest"]["data"]["end"])
    returns = pd.read_parquet(night["dir"] / RETURNS)
    ends = returns.groupby(["selection", "engine", "profile"])["date"].max()
    assert (ends == last).all() and len(ends) >= 3
    assert "stage1 0 computed, 12 cached cells" in night["output"]


def test_one_step_of_days_solves_exactly_the_new_windows_cells(nights):
    night = nights["runs"]["plus20"]
    s1 = night["manifest"]["cache"]["stage1"]
    assert _solved(night, "stage1") == CELLS_PER_WINDOW == s1["computed"]
    assert s1["cached"] == 4 * CELLS_PER_WINDOW and s1["unsupported"] == 0
    assert s1["cells"] == 5 * CELLS_PER_WINDOW
    assert len(night["cube"].window_starts) == 5


def test_incremental_cells_equal_a_cold_run_on_the_longer_file(nights):
    night, fresh = nights["runs"]["plus20"], nights["runs"]["fresh"]
    assert _solved(fresh, "stage1") == 5 * CELLS_PER_WINDOW
    assert night["cube"].equals(fresh["cube"], ignore_timing=True)
    a = pd.read_parquet(night["dir"] / RETURNS).sort_values(["profile", "engine", "date"])
    b = pd.read_parquet(fresh["dir"] / RETURNS).sort_values(["profile", "engine", "date"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_unsupported_cells_are_recorded_not_solved(nights, prefect_server):
    """custom does not implement every profile; a new window's unsupported cells are
    counted as such, never as solved."""
    from tournament.stage1 import engine_instance
    from tournament.registry import PROFILES
    missing = [p for p in PROFILES if not engine_instance("custom").supports(p)]
    if not missing:
        pytest.skip("custom implements every profile")
    tmp = nights["tmp"]
    prices = tmp / "prices-unsupported.parquet"
    shutil.copy(nights["prices"], prices)
    grid = GRID.copy()
    grid[grid.index("--profiles") + 1] = f"min_variance,equal_weight,{missing[0]}"
    run = _run(tmp, prices, "unsupported", "store", prefect_server, grid=grid)
    s1 = run["manifest"]["cache"]["stage1"]
    assert s1["unsupported"] == 5 and s1["computed"] == 0 == _solved(run, "stage1")


def test_a_corrected_price_recomputes_the_cells_that_read_it_and_changed_schedules(
        nights, prefect_server):
    from tournament.config import load_config
    tmp, runs = nights["tmp"], nights["runs"]
    fixed = tmp / "prices-fixed.parquet"
    frame = pd.read_parquet(nights["prices"])
    frame.iloc[30, 1] *= 1.05          # one price (row 30, first asset): two returns change
    frame.to_parquet(fixed, index=False)
    before, after = load_file(nights["prices"]), load_file(fixed)
    changed_rows = set(np.flatnonzero((before.returns != after.returns).any(axis=1)))
    assert changed_rows and max(changed_rows) < 179       # before the first rebalance row
    reading = [w for w in windows_for(after, load_config(train=180, test=40, step=20).windows)
               if any(w.train_rows.start <= r < w.train_rows.stop for r in changed_rows)]
    run = _run(tmp, fixed, "fixed", "store", prefect_server)
    s1 = run["manifest"]["cache"]["stage1"]
    assert _solved(run, "stage1") == s1["computed"] == len(reading) * CELLS_PER_WINDOW
    # Stage 2 runs again only for strategies whose weight schedule changed (equal weight
    # does not look at values; the horizon rows are untouched).
    old, new = runs["plus20"]["cube"], run["cube"]
    keys = [tuple(k) for k in new.strategies()[["selection", "engine", "profile"]].to_numpy()]
    moved = [k for k in keys if old.schedule_digest(k) != new.schedule_digest(k)]
    assert 0 < len(moved) < len(keys)
    s2 = run["manifest"]["cache"]["stage2"]
    assert _solved(run, "stage2") == s2["computed"] == len(moved)
    assert s2["cached"] == len(keys) - len(moved)

