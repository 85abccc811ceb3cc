"""The tournament as Prefect flows: a parent flow and two subflows on RayTaskRunner.

    tournament (parent)
      ├─ prepare config + data (flows.inputs.prepare_run, before anything is computed/written)
      ├─ stage1 subflow (flows.stage1_flow): one task per chunk of cells -> weights cube
      ├─ stage2 subflow (flows.stage2_flow): one task per (rebalance, simulator, strategy chunk)
      └─ outputs (flows.run_outputs): cube, results, returns, manifest, state, leaderboard, report

Runs that repeat (the nightly deployment) add, in flows.scheduled_runs: a dated run directory
under `out` with `latest` and retention, a timeout parameter, and a final state named
CompletedWithFailures when strategies failed.

Every task has an explicit cache key built from named parts (tournament.keys), so a rerun
only recomputes what changed and a killed run resumes from Prefect result storage. Chunks
whose result is already stored run in this process (Prefect records them as Cached; no Ray
round trip, no transfer of the returns or the cube), and Ray is started or attached only when
something must be computed: a warm rerun never touches Ray.

The subflows get small descriptors as parameters (recorded by the Prefect API): the data
source, the config as a dict, the result storage, the run directory, the run's progress, and
where Stage 1 left the cube for Stage 2 (`cube_dir`, under the locked run directory). Each
prepares its data through `prepare_run` (already prepared in this process: nothing is loaded
again) and returns what it made (the cube; the simulations). Large arrays reach Ray workers
through Ray's object store, put once per stage that must compute. Each stage also runs on its
own (e.g. from the UI); Stage 2 against an existing run directory with its outputs merged is
`flows.simulate_flow.simulate` (`tournament simulate RUN_DIR`).
"""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from blocks.tournament_blocks import ComputeBlock, DataSourceBlock, TournamentGridBlock
from tournament.config import DataKind, Fidelity
from tournament.overrides import GridOverrides
from tournament.schema import FAILED, FALLBACK
from tournament.stage1 import plan_cells
from tournament.stage2 import ok_strategies, simulation_pairs

from .inputs import prepare_run, resolve_inputs, tournament_run_name
from .locking import run_dir_lock
from .plan import DEFAULT_RESULT_STORAGE, expects_compute, mark_stored_run, run_digest
from .progress import RunProgress
from .ray_runner import LazyRayTaskRunner
from .run_outputs import RunState, flow_run_id, write_outputs
from .scheduled_runs import (DEFAULT_TIMEOUT_SECONDS, final_state, flow_timeout,
                             publish_run_dir, run_out_dir)
from .runtime import (default_result_storage, make_result_storage, quiet_library_logs,
                      start_compute)
from .stage1_flow import stage1_flow
from .stage2_flow import stage2_flow
from .stage_run import ensure_current_ray, progress_state

# Where Stage 1 leaves the cube for Stage 2, inside the locked run directory (removed when
# the run ends; the run's own weights_cube.pkl is written with the other outputs).
CUBE_HANDOVER = ".stage1-cube"


@flow(name="tournament", flow_run_name=tournament_run_name, log_prints=True,
      validate_parameters=False)
def tournament(fidelity: Fidelity | None = None, data: str | None = None,
               days: Annotated[int | None, Field(ge=0)] = None,
               data_kind: DataKind | None = None,
               grid: TournamentGridBlock | None = None,
               data_source: DataSourceBlock | None = None,
               compute: ComputeBlock | None = None,
               overrides: GridOverrides | None = None, config_path: str | None = None,
               out: str = "runs/tournament", ray_address: str | None = None,
               result_storage: str | None = None,
               num_cpus: Annotated[int | None, Field(ge=1)] = None, refresh: bool = False,
               shared_storage: bool = False, race: bool = False,
               race_top_k: Annotated[int, Field(ge=1)] = 10,
               race_cap: Annotated[float, Field(gt=0, le=1)] = 0.25,
               race_min_tau: Annotated[float, Field(ge=-1, le=1)] = 0.5,
               race_on_disagreement: Literal["widen", "stop"] = "widen",
               dated_run_dirs: bool = False,
               keep_run_dirs: Annotated[int | None, Field(ge=1)] = None,
               timeout_seconds: Annotated[int | None, Field(ge=1)] = DEFAULT_TIMEOUT_SECONDS):
    """Run the two-stage tournament and write the run directory. Returns a summary dict.

    Precedence, per value: an explicit parameter > the picked block's value > the config
    file > the built-in defaults (flows/inputs.py). Leave a field empty (null) to use the
    block's value.

    Args:
        fidelity: Simulator tier: low = custom; medium = + vectorbt; high = + cvxportfolio +
            nautilus. Empty: the grid block's, else the config file's (default low).
        data: sp500 (bundled, offline), synthetic[:DAYSxASSETS], or a .csv/.parquet path on
            the worker. Empty: the data source block's, else sp500.
        days: Keep the last N trading days; 0 = the whole history. Empty: the data source
            block's, else the source's default length (tournament.data.default_days; a
            file: every row).
        data_kind: What a data file holds. Empty: the data source block's, else prices.
        grid: A saved Tournament Grid block (grid axes, fidelity, windows, costs, caps).
        data_source: A saved Tournament Data Source block (data, days, data kind).
        compute: A saved Tournament Compute block (Ray address, result storage, CPUs).
        overrides: Grid overrides; each field set here wins over the grid block's and the
            config file's. Unset fields keep them.
        config_path: TOML config file relative to the code's directory (e.g.
            configs/default.toml). Empty: the built-in defaults.
        out: Run directory on the worker (results, cube, manifest, report.html).
        ray_address: Ray cluster to use (auto, host:6379, ray://head:10001). Empty: the
            compute block's, else a local Ray started for the run.
        result_storage: Task result storage: a path, an fsspec URL (s3://...) or a storage
            block slug (remote-file-system/NAME). Empty: the compute block's, else
            PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, else .tournament-cache/results.
        num_cpus: CPUs of a local Ray. Empty: the compute block's, else all.
        refresh: Ignore cached results and recompute everything.
        shared_storage: Declare a local result_storage path as shared by every cluster node
            (an NFS mount).
        race: Multi-fidelity racing: the cheapest tier simulates every strategy, each
            further tier only the strategies promoted out of the one before (README
            "Racing"). The statistics stay on the complete cheapest tier.
        race_top_k: Best-ranked strategies promoted out of each tier (with the confidence
            set).
        race_cap: At most this share of the strategies is promoted.
        race_min_tau: Kendall tau between a tier's and the previous tier's ranking below
            which the tier is not trusted to rank.
        race_on_disagreement: What an untrusted tier does: widen (promote every strategy
            it ran, without ranking) or stop (the run fails with the numbers).
        dated_run_dirs: Write each run into its own directory under `out`, named by the
            flow run's expected start time (a manual run: when it starts), e.g.
            out/2026-12-01T02-00-00Z, and point out/latest at the newest complete one.
        keep_run_dirs: With dated_run_dirs: keep only the newest N run directories. Empty:
            keep all.
        timeout_seconds: Fail the run (state TimedOut) after this many seconds. Empty: no
            limit. Default 21600 (6 hours).

    Returns the summary dict, or (strategies failed) a Completed state named
    CompletedWithFailures holding it.
    """
    with flow_timeout(timeout_seconds):   # a parameter: Prefect's own is fixed at import
        from tournament.leaderboard import leaderboard_text
        from tournament.outputs import failed_strategy_lines
        from tournament.stage2 import results_frame

        quiet_library_logs()
        logger = get_run_logger()
        t_start = time.perf_counter()
        # 1. Validate everything before any compute or any write (earlier outputs stay intact):
        #    blocks loaded and merged under the explicit parameters, overrides typed, data
        #    prepared (in the CLI's process it already was: prepare_run returns the same).
        inputs = resolve_inputs(
            config_path=config_path, fidelity=fidelity, data=data, data_kind=data_kind, days=days,
            overrides=overrides, grid=grid, data_source=data_source, compute=compute,
            ray_address=ray_address, result_storage=result_storage, num_cpus=num_cpus)
        config = inputs.config()
        race_settings = None
        if race:
            from tournament.race import RaceSettings
            race_settings = RaceSettings(top_k=int(race_top_k), cap=float(race_cap),
                                         min_tau=float(race_min_tau),
                                         on_disagreement=race_on_disagreement)
        prepared = prepare_run(config, data=inputs.data, data_kind=inputs.data_kind,
                               days=inputs.days)
        dataset = prepared.dataset
        out_dir = run_out_dir(out, dated=dated_run_dirs)   # created only now, after validation
        with run_dir_lock(out_dir):      # one writer per run directory (re-entrant with the CLI's)
            location = str(inputs.result_storage or default_result_storage(DEFAULT_RESULT_STORAGE))
            run_id = uuid.uuid4().hex[:12]
            progress = RunProgress(out_dir, run_id, {
                "config_digest": config.digest(), "data_fingerprint": dataset.fingerprint,
                "result_storage": location, "out_dir": str(out_dir.resolve())})
            run = RunState(run_id, config, make_result_storage(location), refresh, progress)
            digest = run_digest(config, dataset, raced=race_settings is not None)
            if expects_compute(location, digest, refresh=refresh):
                # Work is expected: Ray's workers start and warm up behind the planning and
                # the replay of stored work, not after them (a warm rerun skips this).
                start_compute(inputs.ray_address, num_cpus=inputs.num_cpus,
                              simulators=config.simulators, engines=config.engines)
            n_cells = len(plan_cells(config, prepared.windows))
            progress.stages["stage1"].total = n_cells
            progress.start()
            try:
                run.timings["flow_setup"] = time.perf_counter() - t_start
                logger.info("data %s %dx%d; %d cells", dataset.source, dataset.n_days,
                            dataset.n_assets, n_cells)
                summary = _run_stages(run, inputs, out_dir, location, race_settings,
                                      shared_storage=shared_storage)
                # Outputs: statistics and charts are cached tasks keyed by the results' digest.
                t0 = time.perf_counter()
                results, returns = results_frame(summary["simulations"], run.cube, dataset, config)
                run.timings["results_frame"] = time.perf_counter() - t0
                manifest = {"run_id": run_id, "mode": "two-stage", "config": config.to_dict(),
                            "config_digest": config.digest(), "data": dataset.describe(),
                            "result_storage": location, "timings": run.timings,
                            "cache": run.cache}
                if summary["race"] is not None:
                    from tournament.race import annotate
                    results = annotate(results, summary["race_decisions"])
                    manifest["race"] = summary["race"]
                results, status, published = write_outputs(run, out_dir, results, returns,
                                                           manifest)
                mark_stored_run(location, digest)
                print(leaderboard_text(results, top=15))
                outcome = {"run_id": run_id, "status": status, "out": str(out_dir),
                           FAILED: int((results["status"] == FAILED).sum()),
                           "fallback_windows": int((run.cube.cells["status"] == FALLBACK).sum()),
                           "timings": run.timings, "cache": run.cache,
                           "flow_run_id": flow_run_id(), "race": summary["race"],
                           "report": published.get("report")}
            except BaseException:
                run.fail()
                raise
            finally:
                shutil.rmtree(out_dir / CUBE_HANDOVER, ignore_errors=True)
        if dated_run_dirs:              # the run's outputs are all written: it may be `latest`
            publish_run_dir(out_dir, keep=keep_run_dirs, logger=logger)
        return final_state(outcome, failed_strategy_lines(results), logger)


def _run_stages(run: RunState, inputs, out_dir: Path, location: str, race_settings, *,
                shared_storage: bool) -> dict:
    """Stage 1 then Stage 2 as subflows, on runners that start Ray on their first submit.
    Takes the cube into `run`; returns Stage 2's output (the simulations, the race)."""
    config = run.config
    runner = LazyRayTaskRunner(ensure_ray=ensure_current_ray, address=inputs.ray_address)
    params = {"config": config.to_dict(), "data": inputs.data, "data_kind": inputs.data_kind,
              "days": inputs.days, "run_dir": str(out_dir), "result_storage": location,
              "refresh": run.refresh,
              "compute": {"ray_address": inputs.ray_address, "num_cpus": inputs.num_cpus,
                          "shared_storage": shared_storage},
              "cube_dir": str(out_dir / CUBE_HANDOVER)}
    n_cells = run.progress.stages["stage1"].total
    t0 = time.perf_counter()
    one = stage1_flow.with_options(task_runner=runner)(
        **params, progress=progress_state(run.progress),
        label=f"{config.fidelity} {n_cells} cells")
    run.timings["stage1"] = time.perf_counter() - t0
    run.adopt("stage1", one)
    run.cube = one["cube"]
    n_ok, pairs = len(ok_strategies(run.cube)), simulation_pairs(config)
    run.progress.stages["stage2"].total = n_ok * len(pairs)
    run.progress.write()

    t0 = time.perf_counter()
    two = stage2_flow.with_options(task_runner=runner.duplicate())(
        **params, race=race_settings.to_dict() if race_settings else None,
        progress=progress_state(run.progress),
        label=f"{config.fidelity} {n_ok} strategies x {len(pairs)} pairs")
    run.timings["stage2"] = time.perf_counter() - t0
    run.adopt("stage2", two)
    run.add_warmup_timings()
    return two
