"""Prefect + Ray orchestration: caching, incremental reruns, resume after SIGKILL, legacy.

One Prefect server per session; Ray started once in this process for in-process flow runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, sigkill_tree, stop_process_tree

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

SMALL = {"engines": ["custom", "skfolio"], "selections": ["all", "momentum"],
         "profiles": ["equal_weight", "min_variance", "hrp"], "rebalances": ["window", "tolerance"]}


def run_flow(tmp: Path, name: str, *, storage: Path, overrides=None, fidelity="low", **kw):
    from flows.tournament_flow import tournament
    return tournament(fidelity=fidelity, data="sp500", days=500, out=str(tmp / name),
                      result_storage=str(storage), overrides=overrides or SMALL, **kw)


def read_results(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


def test_run_writes_every_output_and_one_ok_row_per_supported_cell(ray_session, tmp_path):
    summary = run_flow(tmp_path, "run", storage=tmp_path / "cache")
    out = tmp_path / "run"
    for name in ["weights_cube.pkl", "weights_cube.parquet", "cells.parquet", "results.parquet",
                 "returns.parquet", "tournament_state.json", "manifest.json"]:
        assert (out / name).exists(), name
    results = read_results(out)
    ok = results[results.status == "ok"]
    # supported strategies: custom {ew, mv} + skfolio {ew, mv, hrp} per selection, + baseline
    n_supported = 2 * (2 + 3) + 1
    keys = ["selection", "engine", "profile", "rebalance", "simulator"]
    assert len(ok[ok.engine != "baseline"]) + len(ok[(ok.engine == "baseline") & (ok.selection == "all")]) \
        == n_supported * 2
    assert not ok.duplicated(keys).any()
    unsupported = results[results.status == "unsupported"]
    assert set(unsupported.engine) == {"custom"} and set(unsupported.profile) == {"hrp"}
    for col in ["sharpe", "cagr", "volatility", "max_drawdown", "turnover", "costs"]:
        assert ok[col].notna().all(), col
    returns = pd.read_parquet(out / "returns.parquet")
    assert list(returns.columns) == ["date", *keys, "net_return"]
    assert not returns.duplicated(["date", *keys]).any()       # no date twice in a path
    state = json.loads((out / "tournament_state.json").read_text())
    assert state["status"] == "completed" and state["stages"]["stage1"]["pending"] == 0
    assert state["stages"]["stage2"]["pending"] == 0
    assert summary["status"] == "completed"


def test_rerun_is_all_cached_and_one_changed_selection_recomputes_only_its_cells(
        ray_session, tmp_path, executions):
    storage = tmp_path / "cache"
    run_flow(tmp_path, "cold", storage=storage)
    cold = executions()
    assert sum(r["count"] for r in cold if r["kind"] == "stage1") > 0

    start = len(cold)
    summary = run_flow(tmp_path, "warm", storage=storage)
    warm = executions()[start:]
    assert warm == [], "a rerun with nothing changed must execute zero solves/simulations"
    for stage in ("stage1", "stage2"):
        counts = summary["cache"][stage]
        assert counts["tasks_cached"] == counts["tasks"] and counts["computed"] == 0
    pd.testing.assert_frame_equal(read_results(tmp_path / "cold").drop(columns="sim_seconds"),
                                  read_results(tmp_path / "warm").drop(columns="sim_seconds"))

    # Change ONE selection mode: momentum -> low_vol.
    start = len(executions())
    changed = {**SMALL, "selections": ["all", "low_vol"]}
    run_flow(tmp_path, "incremental", storage=storage, overrides=changed)
    inc = executions()[start:]
    solved = sum(r["count"] for r in inc if r["kind"] == "stage1")
    simulated = sum(r["count"] for r in inc if r["kind"] == "stage2")
    n_windows = len(pd.read_parquet(tmp_path / "incremental" / "cells.parquet")
                    ["window_start"].unique())           # 17: windows run to the newest day
    # low_vol cells only: custom {ew, mv} + skfolio {ew, mv, hrp} (hrp/custom is unsupported)
    assert solved == n_windows * 5
    # low_vol strategies only (5) x 2 rebalance modes x 1 simulator
    assert simulated == 5 * 2
    results = read_results(tmp_path / "incremental")
    assert set(results.selection) == {"all", "low_vol", "benchmark"}


def test_identical_weights_are_not_resimulated(ray_session, tmp_path, executions):
    """A Stage 1 change that leaves weights identical (top_k does not affect 'all')."""
    storage = tmp_path / "cache"
    grid = {**SMALL, "selections": ["all"]}
    run_flow(tmp_path, "a", storage=storage, overrides={**grid, "top_k": 10})
    start = len(executions())
    run_flow(tmp_path, "b", storage=storage, overrides={**grid, "top_k": 8})
    assert executions()[start:] == []      # 'all' does not depend on top_k: nothing reruns


def test_two_stage_equals_legacy(ray_session, tmp_path, sp500):
    from tournament.config import load_config
    from tournament.pipeline import run_legacy
    run_flow(tmp_path, "two", storage=tmp_path / "cache")
    two = read_results(tmp_path / "two").drop(columns="sim_seconds")
    legacy = run_legacy(sp500, load_config(fidelity="low", **SMALL)).results.drop(columns="sim_seconds")
    # the run directory also carries the leaderboard's overfitting columns; compare the rest
    pd.testing.assert_frame_equal(two[legacy.columns], legacy, check_exact=False, rtol=1e-12,
                                  atol=1e-15)


def test_cache_keys_never_hash_arrays_through_inputs():
    from prefect.cache_policies import CacheKeyFnPolicy

    from tasks.stage1 import solve_chunk
    from tasks.stage2 import simulate_chunk
    from tournament.config import load_config
    from tournament.cube import Cell
    from tournament.keys import (cell_key_parts, simulation_key_parts, stage1_chunk_parts,
                                 stage2_key_parts)
    for task in (solve_chunk, simulate_chunk):
        assert isinstance(task.cache_policy, CacheKeyFnPolicy)
        assert task.cache_policy.cache_key_fn.__name__ == "key_from_parameters"
    cfg = load_config()
    chunk2 = stage2_key_parts(["abc"], rebalance="window", simulator="custom",
                              returns_fingerprint="f", config=cfg)
    parts = [cell_key_parts(Cell(0, "all", "custom", "min_variance"), window_date="2021-01-04",
                            slice_fingerprint="f", config=cfg),
             stage1_chunk_parts(["s1-abc"]), chunk2, simulation_key_parts(chunk2, "abc")]
    for p in parts:   # plain JSON: strings, numbers, lists, dicts only
        assert json.loads(json.dumps(p)) == p


# ----------------------------------------------------------------------------- SIGKILL resume
def _cli(tmp: Path, out: str, api_url: str, extra_env=None, storage="cache",
         stdout=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, **(extra_env or {})}
    args = [sys.executable, "-m", "flows.cli", "run", "--data", "sp500", "--fidelity", "low",
            "--out", str(tmp / out), "--result-storage", str(tmp / storage), "--num-cpus", "2",
            "--engines", "custom,skfolio", "--selections", "all,momentum,low_vol",
            "--profiles", "equal_weight,min_variance,hrp",
            # Three modes: three Stage 2 tasks (one custom task per mode) on two CPUs, so
            # the stage2 case always sees some but not all of them finished.
            "--rebalances", "window,daily,tolerance"]
    return subprocess.Popen(args, cwd=tmp, env=env, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True)


def _wait_state(path: Path, predicate, timeout=240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())
            if predicate(state):
                return state
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"state never matched: {path}")


@pytest.fixture(scope="module")
def clean_cli_run(prefect_server, tmp_path_factory):
    """The uninterrupted reference run both SIGKILL cases compare with: the same CLI grid, its
    own result storage, no task delay. The same for both, so it runs once; it starts when
    the first case does and overlaps that case's killed run (which mostly sleeps in
    TOURNAMENT_TASK_DELAY)."""
    tmp = tmp_path_factory.mktemp("sigkill-clean")
    log = open(tmp / "clean.log", "w")      # a file, not a pipe: nobody reads it while it runs
    proc = _cli(tmp, "clean", prefect_server, storage="clean-cache", stdout=log)
    done: dict = {}

    def results() -> pd.DataFrame:
        if "results" not in done:
            try:
                proc.wait(timeout=400)
            finally:
                stop_process_tree(proc)
            assert proc.returncode == 0, (tmp / "clean.log").read_text()[-3000:]
            done["results"] = read_results(tmp / "clean")
        return done["results"]
    try:
        yield results
    finally:
        if proc.poll() is None:
            stop_process_tree(proc)
        log.close()


class _KilledMidStage:
    """A run of the grid with TOURNAMENT_TASK_DELAY=1.5, SIGKILLed (with every process it
    started) once `stage` has finished some but not all of its chunks; a thread watches
    its tournament_state.json and kills it. `join()` waits and re-raises its error."""

    def __init__(self, tmp: Path, api_url: str, stage: str):
        import threading
        self.tmp, self.stage, self.error = tmp, stage, None
        self._log = open(tmp / "killed.log", "w")
        self.proc = _cli(tmp, "killed", api_url, {"TOURNAMENT_TASK_DELAY": "1.5"},
                         stdout=self._log)
        self.thread = threading.Thread(target=self._kill_mid_stage, daemon=True)
        self.thread.start()

    def _kill_mid_stage(self) -> None:
        stage = self.stage
        try:
            _wait_state(self.tmp / "killed" / "tournament_state.json",
                        lambda s: 0 < s["stages"][stage]["total"] - s["stages"][stage]["pending"]
                        < s["stages"][stage]["total"])
        except BaseException as exc:      # re-raised in the test by join()
            self.error = exc
        finally:
            sigkill_tree(self.proc)
            self._log.close()

    def join(self) -> Path:
        self.thread.join(timeout=300)
        if self.error is not None:
            raise self.error
        return self.tmp


@pytest.fixture(scope="module")
def killed_runs(prefect_server, tmp_path_factory):
    """Both cases' killed runs, started together with the first case (each in its own
    directory and storage; they mostly sleep in TOURNAMENT_TASK_DELAY), so the stage2 case's
    wait for Stage 1 to finish overlaps the stage1 case."""
    runs = {stage: _KilledMidStage(tmp_path_factory.mktemp(f"sigkill-{stage}"), prefect_server,
                                   stage) for stage in ("stage1", "stage2")}
    try:
        yield runs
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                sigkill_tree(run.proc)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_sigkill_mid_stage_then_rerun_matches_clean_run(prefect_server, clean_cli_run,
                                                        killed_runs, stage):
    tmp_path = killed_runs[stage].join()     # killed mid-`stage` (see _KilledMidStage)
    state_file = tmp_path / "killed" / "tournament_state.json"
    killed_state = json.loads(state_file.read_text())
    assert killed_state["status"] == "running"        # it really died mid-run
    assert not (tmp_path / "killed" / "results.parquet").exists()

    rerun = _cli(tmp_path, "killed", prefect_server)
    try:
        output, _ = rerun.communicate(timeout=400)
    finally:
        stop_process_tree(rerun)
    assert rerun.returncode == 0, output[-3000:]
    final = json.loads(state_file.read_text())
    assert final["status"] == "completed"
    assert final["stages"]["stage1"]["cached"] > 0     # resumed from stored results

    a = read_results(tmp_path / "killed").drop(columns="sim_seconds")
    b = clean_cli_run().drop(columns="sim_seconds")
    pd.testing.assert_frame_equal(a, b)
