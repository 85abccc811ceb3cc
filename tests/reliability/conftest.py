"""Helpers for the fault catalogue: run the CLI as a subprocess on a tiny grid, watch its
tournament_state.json, kill it (and its children) by PID, read its execution log."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, sigkill_tree, stop_process_tree

# 4 windows x (all, momentum) x (custom, skfolio) x (equal_weight, min_variance) + baseline:
# 5 Stage 1 chunks; 2 rebalance modes x 2 selection groups = 4 Stage 2 chunks.
GRID = ["--data", "sp500", "--days", "300", "--train", "120", "--test", "40", "--step", "40",
        "--fidelity", "low", "--engines", "custom,skfolio", "--selections", "all,momentum",
        "--profiles", "equal_weight,min_variance", "--rebalances", "window,daily",
        "--num-cpus", "2"]
VOLATILE = ["sim_seconds"]


class Run:
    """One CLI subprocess: its out dir, storage, execution log and output files."""

    def __init__(self, tmp: Path, out: str, *, storage: str = "cache", api_url: str | None,
                 env: dict | None = None, args: list[str] | None = None, grid=GRID, tag=None):
        self.tmp, self.out = tmp, tmp / out
        self.storage = tmp / storage
        self.tag = tag or out
        self.exec_log = tmp / f"exec-{self.tag}.jsonl"
        self.log = tmp / f"cli-{self.tag}.log"
        base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL",
                                                                   "TOURNAMENT_EXECUTION_LOG")}
        if api_url:
            base["PREFECT_API_URL"] = api_url
        else:   # the CLI starts its own server: give it its own database
            base["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-", dir=tmp)
        base["TOURNAMENT_EXECUTION_LOG"] = str(self.exec_log)
        base["PYTHONPATH"] = str(REPO)
        self.env = {**base, **(env or {})}
        self.argv = [sys.executable, "-m", "flows.cli", "run", *grid, "--out", str(self.out),
                     "--result-storage", str(self.storage), *(args or [])]
        self._fh = open(self.log, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=tmp, env=self.env, stdout=self._fh,
                                     stderr=subprocess.STDOUT, text=True)
        self.seconds = None

    # --------------------------------------------------------------- waiting / killing
    @property
    def state_file(self) -> Path:
        return self.out / "tournament_state.json"

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_state(self, predicate, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state is not None and state.get("run_id") and predicate(state):
                return state
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended (rc {self.proc.returncode}) before the state "
                                     f"matched:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"state never matched: {self.state_file}: {self.state()}")

    def wait(self, timeout: float = 300) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            stop_process_tree(self.proc)
            self._fh.close()
            self.seconds = time.monotonic() - self.t0
        return self.proc.returncode

    def kill_tree(self) -> None:
        """SIGKILL the driver and every process it started (Ray, workers), by PID."""
        sigkill_tree(self.proc)
        self._fh.close()
        self.seconds = time.monotonic() - self.t0

    def descendants(self):
        import psutil
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def family(self):
        import psutil
        procs = self.descendants()
        try:
            procs.append(psutil.Process(self.proc.pid))
        except psutil.NoSuchProcess:
            pass
        return procs

    # --------------------------------------------------------------- outputs
    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def executions(self, kind: str | None = None) -> list[dict]:
        if not self.exec_log.exists():
            return []
        rows = [json.loads(line) for line in self.exec_log.read_text().splitlines() if line]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def results(self) -> pd.DataFrame:
        return pd.read_parquet(self.out / "results.parquet").drop(columns=VOLATILE)

    def cube(self) -> pd.DataFrame:
        return pd.read_parquet(self.out / "weights_cube.parquet")


def stage(state: dict, name: str) -> tuple[int, int]:
    """(finished, total) of a stage in tournament_state.json."""
    s = state["stages"][name]
    return s["total"] - s["pending"], s["total"]


def listening(procs) -> list[tuple[str, int, str]]:
    """(ip, port, process name, command line) of every LISTEN socket of the given processes."""
    import psutil
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, p.name(),
                                " ".join(p.cmdline()[:6])[:200]))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


class _Finished:
    """A Run that is still running: its LISTEN sockets are sampled in a thread every 0.3 s
    until it exits; the first use of any attribute waits for it (exit 0 asserted) and
    then behaves as the finished Run, with `sockets` set."""

    def __init__(self, run: Run):
        import threading
        self._run, self._sockets, self._done = run, set(), False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        run = self._run
        while run.proc.poll() is None:
            self._sockets.update(listening(run.family()))
            time.sleep(0.3)

    def finish(self) -> Run:
        run = self._run
        if not self._done:
            self._thread.join(timeout=400)
            rc = run.wait()
            assert rc == 0, run.output()[-3000:]
            run.sockets = sorted(s for s in self._sockets if s[0] is not None)
            self._done = True
        return run

    def stop(self) -> None:
        if self._run.proc.poll() is None:
            self._run.kill_tree()
        elif not self._done:
            self._run.wait()          # exited on its own, never looked at: close its log

    def __getattr__(self, name):
        return getattr(self.finish(), name)


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory):
    """The uninterrupted reference run of GRID, with the CLI's OWN Prefect server and Ray
    (no PREFECT_API_URL), and every LISTEN socket its process tree opened while running.
    It starts when the first test asking for it does and runs alongside that test's own runs
    (they mostly sleep in TOURNAMENT_TASK_DELAY); the first look at it waits for it."""
    tmp = tmp_path_factory.mktemp("clean")
    run = _Finished(Run(tmp, "clean", api_url=None, env={"TOURNAMENT_TASK_DELAY": "0.5"}))
    try:
        yield run
    finally:
        run.stop()
