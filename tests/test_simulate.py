"""`tournament simulate RUN_DIR`: Stage 2 on its own against an existing run directory, and
the stage subflows run on their own (issue 16 item 6).

A small low-fidelity run with only the custom simulator gets vectorbt added by the CLI (a
subprocess on the session's Prefect server): 0 cells computed, the vectorbt rows equal those
of a run that had both simulators from the start (its own result storage, so nothing is
shared through the cache), the custom rows unchanged, the ledger verifies with a new sealed
segment, the report is rewritten. Bad input exits 2 with one line and touches nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, stop_process_tree

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

# 4 windows x (all, momentum) x custom x (equal_weight, min_variance) + baseline.
GRID = {"engines": ["custom"], "selections": ["all", "momentum"],
        "profiles": ["equal_weight", "min_variance"], "rebalances": ["window"],
        "train": 120, "test": 40, "step": 40}
DAYS = 300
KEYS = ["selection", "engine", "profile", "rebalance", "simulator"]


def _tournament(out: Path, storage: Path, simulators: list[str]) -> dict:
    from flows.tournament_flow import tournament
    return tournament(fidelity="low", data="sp500", days=DAYS, out=str(out),
                      result_storage=str(storage),
                      overrides={**GRID, "simulator_list": simulators})


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _start(args: list[str], tmp: Path, *, env: dict | None = None,
           api_url: str | None = None) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items()
            if k not in ("PREFECT_API_URL", "TOURNAMENT_EXECUTION_LOG")}
    if api_url:
        base["PREFECT_API_URL"] = api_url
    base["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=tmp,
                            env={**base, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_process_tree(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _cli(args: list[str], tmp: Path, **kw) -> subprocess.CompletedProcess:
    return _finish(_start(args, tmp, **kw))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server, ray_session):
    tmp = tmp_path_factory.mktemp("simulate")
    base, full = tmp / "base", tmp / "full"
    _tournament(base, tmp / "cache", ["custom"])
    shutil.copytree(base, tmp / "pristine")          # the custom-only run, for other tests
    _tournament(full, tmp / "full-cache", ["custom", "vectorbt"])
    before = {"results": pd.read_parquet(base / "results.parquet"),
              "manifest": json.loads((base / "manifest.json").read_text()),
              "report_mtime": (base / "report.html").stat().st_mtime_ns,
              "ledger": (base / "ledger.jsonl").read_bytes()}
    exec_log = tmp / "exec-simulate.jsonl"
    t0 = time.monotonic()
    proc = _cli(["simulate", str(base), "--simulators", "vectorbt", "--num-cpus", "2"], tmp,
                api_url=prefect_server, env={"TOURNAMENT_EXECUTION_LOG": str(exec_log)})
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    executions = [json.loads(line) for line in exec_log.read_text().splitlines() if line] \
        if exec_log.exists() else []
    return {"tmp": tmp, "base": base, "full": full, "before": before, "proc": proc,
            "executions": executions, "seconds": seconds}


def test_simulate_adds_vectorbt_without_solving_stage1(runs):
    base, proc = runs["base"], runs["proc"]
    assert proc.stdout.strip().splitlines()[-1] == str(base.resolve())
    assert [r for r in runs["executions"] if r["kind"] == "stage1"] == []     # 0 cells solved
    assert sum(r["count"] for r in runs["executions"] if r["kind"] == "stage2") > 0
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["cache"]["stage1"]["computed"] == 0
    assert manifest["cache"]["stage1"]["tasks"] == 0
    assert manifest["simulate"][-1]["cells_computed"] == 0
    assert manifest["simulate"][-1]["pairs"] == [["window", "vectorbt"]]
    assert manifest["simulate"][-1]["previous_run_id"] == runs["before"]["manifest"]["run_id"]
    state = json.loads((base / "tournament_state.json").read_text())
    assert state["status"] == "completed" and state["mode"] == "simulate"
    assert state["cells_computed"] == 0 and state["stages"]["stage1"]["total"] == 0
    assert state["stages"]["stage2"]["pending"] == 0
    # The config it records is the one a run with both simulators from the start records.
    full_manifest = json.loads((runs["full"] / "manifest.json").read_text())
    assert manifest["config"] == full_manifest["config"]
    assert manifest["config_digest"] == full_manifest["config_digest"]
    assert manifest["data"] == full_manifest["data"]


def test_merged_results_equal_a_run_with_both_simulators(runs):
    base, full = runs["base"], runs["full"]
    got = pd.read_parquet(base / "results.parquet").drop(columns="sim_seconds")
    want = pd.read_parquet(full / "results.parquet").drop(columns="sim_seconds")
    assert set(got["simulator"]) == {"custom", "vectorbt"}
    assert (got.loc[got.simulator == "vectorbt", "status"] == "ok").all()
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=1e-12)
    # The custom rows' simulation metrics are the ones the run had (statistics across rows,
    # e.g. the number of trials behind the DSR, are recomputed over the merged rows).
    old = runs["before"]["results"]
    base_cols = ["status", "reason", "fallback_windows", "sharpe", "cagr", "volatility",
                 "max_drawdown", "turnover", "costs", "sharpe_0bps"]
    custom = got[got.simulator == "custom"].reset_index(drop=True)
    pd.testing.assert_frame_equal(custom[KEYS + base_cols],
                                  old.reset_index(drop=True)[KEYS + base_cols])
    returns = pd.read_parquet(base / "returns.parquet")
    pd.testing.assert_frame_equal(returns, pd.read_parquet(full / "returns.parquet"),
                                  check_exact=False, rtol=1e-9, atol=1e-12)


def test_ledger_gets_a_sealed_segment_and_verifies_as_a_whole(runs):
    from tournament.ledger import verify_ledger
    base = runs["base"]
    path = base / "ledger.jsonl"
    manifest = json.loads((base / "manifest.json").read_text())
    report = verify_ledger(path, expected_head=manifest["ledger_head"])
    assert report.ok, report.summary()
    data = path.read_bytes()
    assert data.startswith(runs["before"]["ledger"])          # appended, nothing rewritten
    entries = [json.loads(line) for line in data.splitlines()]
    seals = [e for e in entries if e["event"] == "seal"]
    assert len(seals) == 2
    new = entries[len(runs["before"]["ledger"].splitlines()):]
    assert {e["kind"] for e in new if e["event"] != "seal"} == {"simulation"}   # no cells
    results = pd.read_parquet(base / "results.parquet")
    n_vectorbt = int((results.simulator == "vectorbt").sum())
    assert seals[-1]["detail"]["cells"] == 0
    assert seals[-1]["detail"]["simulations"] == n_vectorbt
    assert seals[-1]["detail"]["mode"] == "simulate"
    assert sorted(e["key"] for e in new if e["event"] == "outcome") == sorted(
        "/".join(map(str, row)) for row in results.loc[results.simulator == "vectorbt", KEYS]
        .itertuples(index=False))
    cli = _cli(["verify-ledger", str(base)], runs["tmp"])
    assert cli.returncode == 0 and "OK" in cli.stdout


def test_report_and_leaderboard_are_rewritten(runs):
    base = runs["base"]
    report = base / "report.html"
    assert report.stat().st_mtime_ns > runs["before"]["report_mtime"]
    assert "vectorbt" in report.read_text()


def test_bad_input_exits_2_with_one_line_and_touches_nothing(runs, tmp_path):
    base = runs["base"]
    no_cube = tmp_path / "no-cube"
    no_cube.mkdir()
    shutil.copy(base / "manifest.json", no_cube / "manifest.json")
    other_data = tmp_path / "other-data"
    shutil.copytree(runs["tmp"] / "pristine", other_data)
    manifest = json.loads((other_data / "manifest.json").read_text())
    manifest["data"]["fingerprint"] = "0123456789abcdef"
    (other_data / "manifest.json").write_text(json.dumps(manifest))
    cases = {
        "no such run dir": ([str(tmp_path / "missing"), "--simulators", "vectorbt"],
                            ["missing", "no such directory"]),
        "unknown simulator": ([str(base), "--simulators", "vectorbt,zipline"],
                              ["unknown simulator 'zipline'",
                               "custom, cvxportfolio, nautilus, vectorbt"]),
        "missing cube": ([str(no_cube), "--simulators", "vectorbt"],
                         ["no weights cube", "weights_cube.pkl"]),
        "other data": ([str(other_data), "--simulators", "vectorbt"],
                       ["fingerprint 0123456789abcdef", "--data"]),
    }
    watched = [base, no_cube, other_data]
    before = [_snapshot(d) for d in watched]
    procs = {name: _start(["simulate", *args], tmp_path) for name, (args, _) in cases.items()}
    problems = []
    for name, (args, expected) in cases.items():
        proc = _finish(procs[name], timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode != 2:
            problems.append(f"{name}: exit {proc.returncode}:\n{proc.stderr[-1500:]}")
        elif len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{name}: not ONE 'error: ...' line:\n{proc.stderr[-1500:]}")
        elif missing := [e for e in expected if e not in lines[0]]:
            problems.append(f"{name}: {lines[0]!r} lacks {missing}")
    assert problems == [], "\n".join(problems)
    assert [_snapshot(d) for d in watched] == before
    assert not (tmp_path / "missing").exists()


def test_stages_run_on_their_own_from_their_parameters(runs, tmp_path, executions):
    """Real parameters, no parent: Stage 1 writes the cube into its run directory, Stage 2
    reads it from there; with the run's result storage every chunk is Cached."""
    from flows.stage1_flow import stage1_flow
    from flows.stage2_flow import stage2_flow
    from tournament.cube import WeightsCube
    pristine = runs["tmp"] / "pristine"
    manifest = json.loads((pristine / "manifest.json").read_text())
    params = {"config": manifest["config"], "data": "sp500", "days": DAYS,
              "result_storage": manifest["result_storage"]}
    start = len(executions())
    one = stage1_flow(**params, run_dir=str(tmp_path / "alone"))
    assert one["cache"]["computed"] == 0 and one["cache"]["cells"] > 0
    cube = WeightsCube.from_pickle(tmp_path / "alone" / "weights_cube.pkl")
    assert cube.equals(WeightsCube.from_pickle(pristine / "weights_cube.pkl"),
                       ignore_timing=True)
    two = stage2_flow(**params, run_dir=str(tmp_path / "alone"))
    assert two["pairs"] == [["window", "custom"]]
    assert two["cache"]["tasks_cached"] == two["cache"]["tasks"] > 0
    assert executions()[start:] == []
    assert not (tmp_path / "alone" / "results.parquet").exists()


def test_simulate_flow_adds_nautilus(runs, tmp_path, executions):
    """The flow itself (what a UI user triggers), with nautilus (recycled child process)."""
    from flows.simulate_flow import simulate
    from tournament.ledger import verify_ledger
    run = tmp_path / "run"
    shutil.copytree(runs["tmp"] / "pristine", run)
    start = len(executions())
    t0 = time.monotonic()
    summary = simulate(run_dir=str(run), simulators=["nautilus"])
    seconds = time.monotonic() - t0
    assert [r for r in executions()[start:] if r["kind"] == "stage1"] == []
    assert summary["cache"]["stage1"]["computed"] == 0
    assert summary["pairs"] == [["window", "nautilus"]]
    results = pd.read_parquet(run / "results.parquet")
    nautilus = results[results.simulator == "nautilus"]
    assert len(nautilus) == len(results[results.simulator == "custom"]) - 1   # no benchmark
    assert (nautilus["status"] == "ok").all(), nautilus[["selection", "reason"]]
    assert nautilus["sharpe"].notna().all()
    assert verify_ledger(run / "ledger.jsonl").ok
    assert seconds < 90, f"nautilus simulate took {seconds:.0f} s"
