"""What a parent flow (`tournament`, `tournament-simulate`) keeps while its stages run, and
its outputs step: statistics, run files, ledger, report and artifacts."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tournament.config import TournamentConfig
from tournament.cube import WeightsCube
from tournament.schema import FAILED, RUN_COMPLETED, RUN_COMPLETED_WITH_FAILURES, STATE

from .progress import RunProgress, StageCounts


@dataclass
class RunState:
    """One parent flow run: what its stages returned, gathered for the outputs step."""
    run_id: str
    config: TournamentConfig
    storage: Any
    refresh: bool
    progress: RunProgress
    cube: WeightsCube | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)
    key_parts: dict[str, dict] = field(default_factory=dict)
    warmups: list = field(default_factory=list)

    def adopt(self, stage: str, out: dict) -> None:
        """Take in what a stage subflow returned: its cache counts, cache-key parts, the
        run's progress counts, overlapped timings and the Ray warm-up refs."""
        self.cache[stage] = out["cache"]
        self.key_parts.update(out["key_parts"])
        for name, counts in out["progress"].items():
            self.progress.stages[name] = StageCounts(**counts)
        parallel = self.timings.setdefault("parallel", {})
        for name, value in out["parallel"].items():
            if name == "first_submit_epoch":        # the run's first submit, not the last
                parallel.setdefault(name, value)
            else:
                parallel[name] = parallel.get(name, 0.0) + value
        self.warmups = out["warmups"] or self.warmups

    def fail(self) -> None:
        """The run failed: its final state keeps the counts a failing stage last wrote into
        tournament_state.json (a stage that raises returns none)."""
        try:
            state = json.loads((self.progress.out_dir / STATE).read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("run_id") == self.run_id:
            for name, counts in state.get("stages", {}).items():
                self.progress.stages[name] = StageCounts(
                    **{k: v for k, v in counts.items() if k != "pending"})
        self.progress.finish(FAILED)

    def add_warmup_timings(self) -> None:
        self.timings["parallel"] = {**self.timings.get("parallel", {}),
                                    **warmup_timings(self.warmups)}


def write_outputs(run: RunState, out_dir: Path, results, returns, manifest: dict, *,
                  ledger_rows=None, ledger_detail: dict | None = None):
    """The outputs step, shared by the parent flow and `simulate`: leaderboard statistics
    and report charts as cached tasks keyed by the frames' digest (the charts drawn in a
    thread while the statistics run), `finalize_run` (a new sealed ledger segment, the run
    files, cache-key parts), the final state, report.html and the Prefect artifacts.
    `ledger_rows`/`ledger_detail`: see finalize_run. Returns (results with the statistics
    columns, status, what publish_artifacts returned)."""
    from tasks.artifacts import publish_artifacts
    from tasks.outputs import leaderboard_statistics, report_charts
    from tournament.keys import outputs_key
    from tournament.report.charts import chart_returns
    from tournament.outputs import finalize_run, update_manifest
    config, storage, refresh = run.config, run.storage, run.refresh
    # The charts need only the metrics, so they are drawn while the statistics run: on a
    # Ray worker when this run started Ray (both are CPU-bound Python; in one process they
    # would take turns at the GIL), else in a thread.
    charts_key = outputs_key("charts", results, returns)
    charts_task = report_charts.with_options(result_storage=storage, refresh_cache=refresh)
    with _charts_runner(storage, charts_key, refresh) as runner:
        # Only the rows the charts draw travel to the worker (~6% of the daily rows on the
        # large grid); the key above still covers both whole frames.
        charts_future = runner.submit(charts_task, parameters={
            "results": results, "returns": chart_returns(results, returns),
            "cache_key": charts_key})
        t0 = time.perf_counter()
        stats_task = leaderboard_statistics.with_options(result_storage=storage,
                                                         refresh_cache=refresh)
        statistics = stats_task(results, returns, periods=config.annualization,
                                cache_key=outputs_key("statistics", results, returns,
                                                      extra=config.annualization))
        run.timings["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = finalize_run(out_dir, cube=run.cube, results=results, returns=returns,
                           manifest=manifest, key_parts=run.key_parts,
                           periods=config.annualization, statistics=statistics,
                           ledger_rows=ledger_rows, ledger_detail=ledger_detail)
    run.timings["write_outputs"] = time.perf_counter() - t0
    n_failed = int((results["status"] == FAILED).sum())
    status = RUN_COMPLETED if n_failed == 0 else RUN_COMPLETED_WITH_FAILURES
    run.progress.finish(status)
    t0 = time.perf_counter()
    charts = charts_future.result()            # the part not hidden behind the statistics
    run.timings["report_charts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    published = publish_artifacts(str(out_dir), charts=charts)   # report.html + artifacts
    run.timings["report_and_artifacts"] = time.perf_counter() - t0
    update_manifest(out_dir, timings=run.timings)
    return results, status, published


def _charts_runner(storage, key: str, refresh: bool):
    """Where the report charts are drawn: a Ray worker when Ray is up in this process and
    the charts are not stored (a warm rerun reads them here), else a thread."""
    from prefect.task_runners import ThreadPoolTaskRunner
    try:
        import ray
        ray_up = ray.is_initialized()
    except ImportError:
        ray_up = False
    if ray_up:
        from prefect.results import ResultStore

        from .plan import stored_key
        if refresh or not ResultStore(result_storage=storage).exists(stored_key(key)):
            from prefect_ray import RayTaskRunner
            return RayTaskRunner()       # joins the running Ray; never shuts it down
    return ThreadPoolTaskRunner(max_workers=1)


def warmup_timings(refs: list) -> dict[str, float]:
    """Worker warm-up (imports) and numba-load seconds reported by the prewarm tasks that
    finished and by their numba threads (they overlap other work, so they are reported apart
    from the sequential phases)."""
    if not refs:
        return {}
    import ray

    from .runtime import numba_load_seconds
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    reports = [r for r in ray.get(done) if isinstance(r, dict)]
    if not reports:
        return {}
    out = {"worker_warmup": max(r["imports"] for r in reports)}
    numba = numba_load_seconds()
    if numba is not None:
        out["numba_load"] = numba
    return out


def flow_run_id() -> str | None:
    from prefect.context import FlowRunContext
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
