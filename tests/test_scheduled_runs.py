"""flows.scheduled_runs on a real Prefect server, through tiny flows (no tournament, no Ray):
the CompletedWithFailures state a direct caller still reads as the summary, and the
timeout parameter ending a run Failed (TimedOut). The tournament flow itself ends in these
states in tests/test_nightly_e2e.py."""
from __future__ import annotations

import logging
import time

import pytest

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]

FAILURES = ["failed all/custom/min_variance [window/custom]: EngineError: injected solver failure"]


@pytest.fixture
def tiny_flows(prefect_server):
    """The two flows, made after the server's URL is set (Prefect reads its settings when
    first imported, so nothing here imports it at module level)."""
    from prefect import flow, get_run_logger

    from flows.scheduled_runs import final_state, flow_timeout

    @flow
    def ends(failures: list[str]):
        return final_state({"out": "runs/x", "status": "done"}, failures, get_run_logger())

    @flow
    def sleeps(timeout_seconds: int, seconds: float):
        with flow_timeout(timeout_seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:       # bytecode between sleeps: interruptible
                time.sleep(0.05)
        return "slept"
    return ends, sleeps


def test_failed_strategies_end_completed_with_failures_and_warn_per_strategy(tiny_flows, caplog):
    from flows.scheduled_runs import COMPLETED_WITH_FAILURES
    _ends = tiny_flows[0]
    with caplog.at_level(logging.WARNING):
        state = _ends(FAILURES, return_state=True)
    assert state.is_completed() and state.name == COMPLETED_WITH_FAILURES
    assert state.message.startswith("1 failed strategies")
    assert state.result() == {"out": "runs/x", "status": "done"}
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == FAILURES
    # No failures: a plain Completed, and a direct call (the CLI's) gets the dict either way.
    plain = _ends([], return_state=True)
    assert plain.is_completed() and plain.name == "Completed"
    assert _ends(FAILURES) == {"out": "runs/x", "status": "done"}


def test_the_timeout_parameter_fails_the_run_timed_out(tiny_flows):
    _sleeps = tiny_flows[1]
    state = _sleeps(1, 20, return_state=True)
    assert state.is_failed() and state.name == "TimedOut", state
    assert "timeout_seconds=1" in state.message
    assert _sleeps(30, 0.1) == "slept"
