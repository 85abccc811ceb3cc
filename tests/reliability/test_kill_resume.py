"""Fault catalogue #1 and #2: the driver SIGKILLed at several points, and a Ray worker
SIGKILLed mid-task. Nothing is lost: reruns complete with results identical to an
uninterrupted run, and no chunk whose result was already stored is computed again."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import Run, stage

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

# (point, predicate on tournament_state.json, extra seconds to wait before the kill)
KILL_POINTS = [
    ("after Ray start, before any Stage 1 task finished",
     lambda s: stage(s, "stage1")[1] > 0 and stage(s, "stage1")[0] == 0, 1.0),
    ("mid Stage 1", lambda s: 0 < stage(s, "stage1")[0] < stage(s, "stage1")[1], 0.0),
    ("between the stages", lambda s: stage(s, "stage1")[0] == stage(s, "stage1")[1] > 0
     and stage(s, "stage2")[1] > 0 and stage(s, "stage2")[0] == 0, 0.0),
]


def stored_keys(storage: Path) -> set[str]:
    """Result files in Prefect result storage (named by cache key); lock files excluded."""
    return {p.name for p in storage.iterdir() if p.is_file()} if storage.exists() else set()


def assert_same_results(run: Run, reference: Run) -> None:
    pd.testing.assert_frame_equal(run.results(), reference.results())
    pd.testing.assert_frame_equal(run.cube(), reference.cube())


def test_sigkill_at_three_points_then_rerun_matches_and_recomputes_nothing_stored(
        prefect_server, clean_run, tmp_path):
    history = []      # (point, run, keys stored right after the kill)
    states = []
    for n, (point, predicate, settle) in enumerate(KILL_POINTS):
        run = Run(tmp_path, "killed", api_url=prefect_server, tag=f"kill{n}",
                  env={"TOURNAMENT_TASK_DELAY": "1.5"})
        try:
            run.wait_state(predicate, timeout=180)
            time.sleep(settle)
        finally:
            run.kill_tree()
        state = run.state()
        assert state["status"] == "running", (point, state)          # it died mid-run
        assert not (run.out / "results.parquet").exists(), point
        history.append((point, run, stored_keys(run.storage)))
        states.append(state)
    # The kills really came where they were meant to (state as each run died).
    assert stage(states[0], "stage1")[0] == 0
    assert 0 < stage(states[1], "stage1")[0] < stage(states[1], "stage1")[1]
    assert stage(states[2], "stage2")[0] == 0 < stage(states[2], "stage2")[1]
    # Killed before any chunk finished: no Stage 1 result stored (beyond a task racing the kill)
    assert len({k for k in history[0][2] if k.startswith("s1-")}) <= 2

    final = Run(tmp_path, "killed", api_url=prefect_server, tag="final")
    rc = final.wait(timeout=300)
    assert rc == 0, final.output()[-3000:]
    state = final.state()
    assert state["status"] == "completed"
    assert_same_results(final, clean_run)

    runs = [r for _, r, _ in history] + [final]
    # No chunk stored before a kill is executed by any later run.
    for i, (point, run, stored) in enumerate(history):
        later = {e["key"] for r in runs[i + 1:] for e in r.executions()}
        again = stored & later
        assert again == set(), f"recomputed after kill '{point}': {sorted(again)}"
    # Stage 1 finished before the between-stages kill: the final run solved nothing.
    assert final.executions("stage1") == []
    assert state["stages"]["stage1"]["cached"] == state["stages"]["stage1"]["total"]
    # Every Stage 1 chunk executed more than once was lost (not stored) by the earlier kill.
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        for e in run.executions("stage1"):
            if e["key"] in seen:
                j = seen[e["key"]]
                assert e["key"] not in history[j][2], (e["key"], history[j][0])
            seen[e["key"]] = i
    assert len(seen) == 5              # GRID has 5 Stage 1 chunks


class _WorkerKill:
    """The run whose Ray worker is SIGKILLed mid-task, driven by a thread: it waits for
    Stage 1 to start, kills the first Ray worker seen executing a Stage 1 task, and waits
    for the run to end. `finish()` joins it and re-raises what went wrong in it."""

    def __init__(self, tmp: Path, api_url: str):
        import threading
        self.run = Run(tmp, "worker-kill", api_url=api_url, env={"TOURNAMENT_TASK_DELAY": "2"})
        self.victim = self.rc = self.error = None
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _drive(self) -> None:
        import psutil
        run = self.run
        try:
            run.wait_state(lambda s: stage(s, "stage1")[1] > 0, timeout=180)
            deadline = time.monotonic() + 60
            while self.victim is None and time.monotonic() < deadline:
                for p in run.descendants():
                    try:
                        if p.name().startswith("ray::solve_chunk"):
                            self.victim = p
                            break
                    except psutil.NoSuchProcess:
                        pass
                time.sleep(0.05)
            if self.victim is None:
                return
            self.victim.kill()
            self.victim.wait(timeout=10)
            self.rc = run.wait(timeout=300)
        except BaseException as exc:      # re-raised in the test by finish()
            self.error = exc

    def finish(self) -> "_WorkerKill":
        self.thread.join(timeout=600)
        self.stop()
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self.run.proc.poll() is None:
            self.run.kill_tree()


@pytest.fixture(scope="module")
def worker_kill(prefect_server, tmp_path_factory):
    scenario = _WorkerKill(tmp_path_factory.mktemp("worker-kill"), prefect_server)
    try:
        yield scenario
    finally:
        scenario.stop()


@pytest.fixture(scope="module", autouse=True)
def _worker_kill_alongside(request):
    """The worker-kill run starts with this module and runs beside the three-kills test (both
    mostly sleep in TOURNAMENT_TASK_DELAY; each has its own directory and storage), when its
    test is selected."""
    if any(item.name.startswith("test_ray_worker_sigkilled") for item in request.session.items):
        request.getfixturevalue("worker_kill")


def test_ray_worker_sigkilled_mid_task_run_completes_with_clean_results(worker_kill,
                                                                        clean_run):
    scenario = worker_kill.finish()
    run, rc = scenario.run, scenario.rc
    assert scenario.victim is not None, "no Ray worker was seen executing a Stage 1 task"
    assert rc == 0, run.output()[-3000:]
    assert run.state()["status"] == "completed"
    assert_same_results(run, clean_run)
    assert len({e["key"] for e in run.executions("stage1")}) == 5
