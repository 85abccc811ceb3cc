"""What the `tournament` flow adds for runs that repeat (the nightly deployment), issue 15:

* a dated run directory per run under the output root (`dated_run_dirs`), stamped with the
  flow run's expected start time, so a retried scheduled run finds its own directory again;
  a manual trigger is stamped with the moment it starts;
* after the run's outputs are written: `latest` pointed at the newest complete run directory
  and retention (`keep_run_dirs`) applied (tournament.run_dirs);
* a timeout (`timeout_seconds`, a flow parameter so the run form shows it);
* a final state named for failed strategies: `Completed` named `CompletedWithFailures`, with
  one warning line per failed strategy (what an automation notifies on).
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tournament.run_dirs import point_latest, prune_run_dirs, run_stamp

COMPLETED_WITH_FAILURES = "CompletedWithFailures"      # the state name automations match
DEFAULT_TIMEOUT_SECONDS = 6 * 3600


class RunTimeout(TimeoutError):
    """The run exceeded its timeout_seconds (Prefect ends the flow run Failed, `TimedOut`)."""


def run_start_time() -> datetime:
    """The flow run's expected start time when a schedule created it, else (a manual trigger,
    a CLI run) the moment the run started."""
    from prefect.context import FlowRunContext
    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    if flow_run is not None and flow_run.auto_scheduled and flow_run.expected_start_time:
        return flow_run.expected_start_time
    if flow_run is not None and flow_run.start_time:
        return flow_run.start_time
    return datetime.now(timezone.utc)


def run_out_dir(out: str, *, dated: bool) -> Path:
    """The run directory: `out` itself, or `out/<stamp>` for dated run directories."""
    return Path(out) / run_stamp(run_start_time()) if dated else Path(out)


def publish_run_dir(run_dir: Path, *, keep: int | None, logger) -> None:
    """After a dated run's outputs are written: `latest`, then retention."""
    root = run_dir.parent
    newest = point_latest(root)
    logger.info("%s/latest -> %s", root, newest.name if newest else "(no complete run)")
    for removed in prune_run_dirs(root, keep, spare=run_dir):
        logger.info("retention (keep_run_dirs=%d): removed %s", keep, removed)


@contextmanager
def flow_timeout(seconds: float | None):
    """Raise RunTimeout in the flow's body after `seconds` (None: no limit)."""
    if seconds is None:
        yield
        return
    from prefect.utilities.timeout import timeout
    try:
        with timeout(seconds=seconds, timeout_exc_type=RunTimeout):
            yield
    except RunTimeout:
        raise RunTimeout(f"the run exceeded its timeout_seconds={seconds:g} "
                         f"({seconds / 3600:.2g} h)") from None


def final_state(summary: dict[str, Any], failure_lines: list[str], logger):
    """The flow's return value: `summary` itself when nothing failed, else a Completed
    state named CompletedWithFailures holding it, after one warning line per failed
    strategy (`failure_lines`, tournament.outputs.failed_strategy_lines)."""
    if not failure_lines:
        return summary
    from prefect.states import Completed
    for line in failure_lines:
        logger.warning(line)
    return Completed(data=summary, name=COMPLETED_WITH_FAILURES,
                     message=f"{len(failure_lines)} failed strategies; run directory "
                             f"{summary['out']} (see the -summary artifact)")
