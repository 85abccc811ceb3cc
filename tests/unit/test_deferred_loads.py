"""Work a night defers off its critical path: a worker's numba load waits for its first
Stage 1 task to end; the statistics' imports wait for Stage 1 to end (or Stage 2's first
submit), and only in a process that computes something."""
from __future__ import annotations

import threading

import pytest


@pytest.fixture
def numba_state(monkeypatch):
    from flows import runtime
    monkeypatch.setattr(runtime, "_NUMBA_LOAD", {"deferred": False, "started": False})
    loads = []
    done = threading.Event()

    def fake_load():
        loads.append(threading.current_thread().name)
        done.set()
    monkeypatch.setattr(runtime, "_touch_vectorbt", fake_load)
    return runtime, loads, done


def test_numba_load_waits_for_the_first_stage1_task_when_deferred(numba_state):
    runtime, loads, done = numba_state
    runtime.numba_load_after_stage1()           # not deferred (the driver): nothing
    assert not done.wait(0.2) and loads == []
    runtime.defer_numba_load()                  # a worker's warm-up, the run has engines
    assert loads == []
    runtime.numba_load_after_stage1()           # its first Stage 1 task ends
    assert done.wait(5) and loads == ["numba-load"]
    runtime.numba_load_after_stage1()           # later tasks: loaded once
    runtime.start_numba_load()
    assert loads == ["numba-load"]


def test_statistics_modules_preload_only_where_something_is_computed(monkeypatch):
    from flows import stage_run
    import tournament.outputs as outputs
    calls = []
    done = threading.Event()
    monkeypatch.setattr(outputs, "preload_statistics_modules",
                        lambda: (calls.append(1), done.set()))
    monkeypatch.setattr(stage_run, "_STATISTICS", {"wanted": False, "started": False})
    stage_run.preload_statistics_if_wanted()    # a fully cached run: never
    assert not done.wait(0.2) and calls == []
    stage_run._STATISTICS["wanted"] = True      # ensure_ray: something is computed
    stage_run.preload_statistics_if_wanted()
    stage_run.preload_statistics_if_wanted()
    assert done.wait(5) and calls == [1]
