"""Fault catalogue #7: two tournaments at once.

* Same result storage, different --out: both complete with identical results, each Stage 1
  chunk is solved once in total (per-key SERIALIZABLE locks, tasks.common), the storage is
  intact (a third run is fully cached).
* Same --out twice: the second is refused (flows.locking.run_dir_lock), exit 2, one line."""
from __future__ import annotations

import time
from collections import Counter

import pandas as pd
import pytest

from tests.conftest import REPO

from .conftest import Run, stage

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

# 5 window-aligned Stage 1 chunks; Stage 2 at low fidelity: one custom task per rebalance
# mode (flows.plan.STAGE2_CHUNK["custom"] == 0), two modes.
N_STAGE1_CHUNKS, N_STAGE2_CHUNKS = 5, 2


def _run_dir_lock_wired() -> bool:
    return any("run_dir_lock" in (REPO / f).read_text()
               for f in ("flows/cli.py", "flows/tournament_flow.py"))


def test_two_runs_on_one_storage_compute_each_chunk_once_and_a_third_is_cached(
        prefect_server, clean_run, tmp_path):
    env = {"TOURNAMENT_TASK_DELAY": "0.7"}
    a = Run(tmp_path, "a", storage="shared", api_url=prefect_server, env=env)
    b = Run(tmp_path, "b", storage="shared", api_url=prefect_server, env=env)
    try:
        refused = None
        if _run_dir_lock_wired():   # same --out as a running tournament: refused at once
            a.wait_state(lambda s: stage(s, "stage1")[1] > 0, timeout=120)
            refused = Run(tmp_path, "a", storage="other", api_url=prefect_server, tag="a-again")
            refused.rc = refused.wait(timeout=120)
        rc_a, rc_b = a.wait(timeout=300), b.wait(timeout=300)
    finally:
        for r in (a, b):
            if r.proc.poll() is None:
                r.kill_tree()
    assert rc_a == 0, a.output()[-3000:]
    assert rc_b == 0, b.output()[-3000:]
    pd.testing.assert_frame_equal(a.results(), b.results())
    pd.testing.assert_frame_equal(a.results(), clean_run.results())
    pd.testing.assert_frame_equal(a.cube(), b.cube())

    s1 = Counter(e["key"] for r in (a, b) for e in r.executions("stage1"))
    s2 = Counter(e["key"] for r in (a, b) for e in r.executions("stage2"))
    assert len(s1) == N_STAGE1_CHUNKS and len(s2) == N_STAGE2_CHUNKS
    assert sum(s1.values()) <= N_STAGE1_CHUNKS, f"Stage 1 chunks solved twice: {s1}"
    assert sum(s2.values()) <= N_STAGE2_CHUNKS, f"Stage 2 chunks simulated twice: {s2}"
    assert not list((tmp_path / "shared" / ".locks").glob("*.lock")), "locks left behind"

    c = Run(tmp_path, "c", storage="shared", api_url=prefect_server)
    assert c.wait(timeout=300) == 0, c.output()[-3000:]
    assert c.executions() == [], "storage written concurrently is not fully reusable"
    state = c.state()
    for name in ("stage1", "stage2"):
        assert state["stages"][name]["cached"] == state["stages"][name]["total"] > 0
    pd.testing.assert_frame_equal(c.results(), a.results())

    if refused is None:
        pytest.xfail("flows.locking.run_dir_lock is not wired into the CLI/flow yet")
    assert refused.rc == 2, refused.output()[-3000:]
    lines = [l for l in refused.output().splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and "another tournament is writing to" in lines[-1]
    assert str((tmp_path / "a").resolve()) in lines[-1] and f"(pid {a.proc.pid})" in lines[-1]
    assert not (tmp_path / "other").exists()          # refused before computing anything


# ----------------------------------------------------------------------------- unit level
def test_run_dir_lock_refuses_a_live_holder_and_frees_on_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from flows.locking import run_dir_lock
    from tournament.errors import ConfigError
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom flows.locking import run_dir_lock\n"
         f"with run_dir_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as err:
            with run_dir_lock(tmp_path):
                pass
        msg = str(err.value)
        assert "another tournament is writing to" in msg and f"(pid {holder.pid})" in msg
        assert str(tmp_path.resolve()) in msg and "\n" not in msg
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with run_dir_lock(tmp_path):          # a killed holder leaves no stale lock
        with run_dir_lock(tmp_path):      # re-entrant in one process (CLI + flow)
            pass


def test_result_locks_of_dead_holders_are_taken_over_live_ones_wait(tmp_path):
    import json
    import subprocess
    import sys

    from tasks.common import StorageLockManager, _this_host
    lm = StorageLockManager(tmp_path)
    # A holder that died (SIGKILL mid-task) on this host: stale, taken over at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s1-dead.lock").write_text(json.dumps(
        {"holder": "x", "expiration": None, "pid": dead.pid, "host": _this_host()}))
    t0 = time.monotonic()
    assert lm.acquire_lock("s1-dead", "me", acquire_timeout=5)
    assert time.monotonic() - t0 < 1 and lm.is_lock_holder("s1-dead", "me")
    lm.release_lock("s1-dead", "me")
    assert not (tmp_path / "s1-dead.lock").exists()
    # A live holder (this process, another transaction): we wait, and give up on timeout.
    other = StorageLockManager(tmp_path)
    assert other.acquire_lock("s1-live", "them")
    assert not lm.acquire_lock("s1-live", "me", acquire_timeout=0.5)
    other.release_lock("s1-live", "them")
    assert lm.acquire_lock("s1-live", "me", acquire_timeout=1)
    lm.release_lock("s1-live", "me")
    # A lock file caught half-written counts as held (no crash on empty JSON).
    (tmp_path / "s1-partial.lock").write_text("")
    assert lm.is_locked("s1-partial")
