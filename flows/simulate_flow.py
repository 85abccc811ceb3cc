"""Stage 2 on its own against an existing run directory: `tournament simulate RUN_DIR`.

    tournament simulate runs/x --simulators vectorbt            # add a simulator
    tournament simulate runs/x --simulators nautilus --rebalances window

The `tournament-simulate` flow (`simulate`, deployable, so a UI user can trigger it):
  1. validates before anything is computed or written (`prepare_simulation`): the run
     directory, its manifest, weights_cube.pkl, the simulator and rebalance names, the
     ledger (it must verify, up to the head the manifest recorded), and the data: reloaded
     from the manifest's description (source and length; a file is tried as prices, then as
     returns) or from --data/--data-kind/--days, and its fingerprint must be the manifest's;
  2. holds the run directory's lock (flows.locking) while it computes and writes;
  3. runs the Stage 2 subflow (flows.stage2_flow, the same cached tasks as `tournament run`,
     so simulations already in result storage come back Cached) on the run directory's cube
     for the requested (rebalance, simulator) pairs, plus the benchmark for rebalance modes
     the run lacked; it returns the simulations;
  4. merges the new rows into results.parquet / returns.parquet, replacing the rows of the
     same keys, in the order a run with the merged config from the start would write them;
  5. recomputes statistics, report and artifacts through the parent flow's outputs step
     (flows.run_outputs.write_outputs); the ledger gets a new sealed segment holding the simulations this
     step wrote and no cells (Stage 1 is not run: 0 cells computed, as the manifest's
     `cache.stage1` and `simulate` entries and tournament_state.json say).

The config recorded in the manifest gains the requested simulators and rebalance modes. Bad
input raises TournamentError (one line; CLI exit 2) before any write.

Validation, data reload and merging live in flows.rerun (no Prefect: the CLI checks a
request before any service starts).
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from tournament.errors import ConfigError
from tournament.schema import CUBE_PICKLE, FAILED, UNSUPPORTED

from .rerun import _PREPARED, merge_run_frames, prepare_simulation


@flow(name="tournament-simulate", flow_run_name="simulate {run_dir}", log_prints=True,
      validate_parameters=False)
def simulate(run_dir: str, simulators: list[str] | None = None,
             rebalances: list[str] | None = None, result_storage: str | None = None,
             data: str | None = None, data_kind: str | None = None, days: int | None = None,
             refresh: bool = False, ray_address: str | None = None,
             num_cpus: int | None = None, shared_storage: bool = False) -> dict:
    """Stage 2 again on an existing run directory: simulate the requested (rebalance,
    simulator) pairs on its weights cube (Stage 1 is not re-solved), merge them into its
    results and rewrite its statistics, ledger, report and artifacts.

    Args:
        run_dir: an existing run directory (written by `tournament run`).
        simulators: simulators to run (custom, vectorbt, cvxportfolio, nautilus); default:
            the run's simulators.
        rebalances: rebalance modes (window, daily, tolerance); default: the run's modes.
        result_storage: Prefect result storage (path, fsspec URL or storage block slug);
            default: the one the run's manifest records.
        data: the run's data, when it cannot be reloaded from the manifest's description
            (e.g. the file moved); its fingerprint must match the manifest's.
        data_kind: what the data file holds: prices or returns (default: tried in turn).
        days: the last N trading days (default: the manifest's length).
        refresh: ignore stored results and recompute the simulations.
        ray_address: existing Ray cluster (e.g. auto or host:6379).
        num_cpus: local Ray CPUs (default: all).
        shared_storage: a local result storage path is shared by every cluster node.
    """
    from tournament.leaderboard import leaderboard_text
    from tournament.stage2 import RESULT_KEYS, ok_strategies, results_frame

    from .inputs import prepare_run
    from .locking import run_dir_lock
    from .plan import DEFAULT_RESULT_STORAGE
    from .progress import RunProgress
    from .ray_runner import LazyRayTaskRunner
    from .run_outputs import RunState, flow_run_id, write_outputs
    from .runtime import default_result_storage, make_result_storage, quiet_library_logs
    from .stage2_flow import stage2_flow
    from .stage_run import ensure_current_ray, progress_state

    quiet_library_logs()
    logger = get_run_logger()
    t_start = time.perf_counter()
    inputs = prepare_simulation(run_dir, simulators=simulators, rebalances=rebalances,
                                data=data, data_kind=data_kind, days=days)
    _PREPARED.clear()                   # the request is read: later calls check afresh
    out_dir, config, ds, cube = inputs.run_dir, inputs.config, inputs.dataset, inputs.cube
    spec = inputs.data_spec
    prepare_run(config, **spec, loaded=ds)      # what the stage prepares: already loaded
    location = str(result_storage or inputs.manifest.get("result_storage")
                   or default_result_storage(DEFAULT_RESULT_STORAGE))
    with run_dir_lock(out_dir):         # re-entrant with the CLI's
        if not (out_dir / CUBE_PICKLE).is_file():      # gone since validation
            raise ConfigError(f"run directory error: no weights cube in {out_dir}")
        run_id = uuid.uuid4().hex[:12]
        n_ok = len(ok_strategies(cube))
        pairs = [list(p) for p in inputs.pairs]
        progress = RunProgress(out_dir, run_id, {
            "mode": "simulate", "pairs": pairs, "cells_computed": 0,
            "config_digest": config.digest(), "data_fingerprint": ds.fingerprint,
            "result_storage": location, "out_dir": str(out_dir.resolve())})
        progress.stages["stage2"].total = n_ok * len(pairs)
        run = RunState(run_id, config, make_result_storage(location), refresh, progress,
                       cube=cube)
        run.cache["stage1"] = {"tasks": 0, "tasks_cached": 0, "cells": 0, "computed": 0,
                               "cached": 0, UNSUPPORTED: 0,
                               "cells_loaded": int(len(cube.cells))}
        progress.start()
        try:
            runner = LazyRayTaskRunner(ensure_ray=ensure_current_ray, address=ray_address)
            run.timings["flow_setup"] = time.perf_counter() - t_start
            logger.info("simulate %s: %d strategies x %d pairs on the stored cube (0 cells "
                        "computed)", out_dir, n_ok, len(pairs))
            t0 = time.perf_counter()
            two = stage2_flow.with_options(task_runner=runner)(
                config=config.to_dict(), **spec, run_dir=str(out_dir),
                result_storage=location, pairs=pairs, benchmarks=inputs.benchmarks,
                refresh=refresh, compute={"ray_address": ray_address, "num_cpus": num_cpus,
                                          "shared_storage": shared_storage},
                progress=progress_state(progress),
                label=f"{n_ok} strategies x {len(pairs)} pairs (simulate)")
            run.timings["stage2"] = time.perf_counter() - t0
            run.adopt("stage2", two)
            run.add_warmup_timings()
            t0 = time.perf_counter()
            new_results, new_returns = results_frame(two["simulations"], cube, ds,
                                                     inputs.request)
            results, returns = merge_run_frames(inputs, new_results, new_returns)
            run.timings["results_frame"] = time.perf_counter() - t0
            # The run's cache-key parts, but this step's for the pairs it simulated.
            run.key_parts = {**{k: v for k, v in inputs.cache_keys.items()
                                if not (isinstance(v, dict) and v.get("stage") == 2
                                        and [v.get("rebalance"), v.get("simulator")] in pairs)},
                             **run.key_parts}
            record = {"run_id": run_id, "previous_run_id": inputs.manifest.get("run_id"),
                      "pairs": pairs, "benchmarks": inputs.benchmarks, "cells_computed": 0,
                      "rows": int(len(new_results)),
                      "at": datetime.now(timezone.utc).isoformat()}
            manifest = {k: v for k, v in inputs.manifest.items()
                        if k not in ("versions", "ledger_head", "confidence")}
            manifest.update(run_id=run_id, config=config.to_dict(),
                            config_digest=config.digest(), data=ds.describe(),
                            result_storage=location, timings=run.timings, cache=run.cache,
                            simulate=[*inputs.manifest.get("simulate", []), record])
            results, status, published = write_outputs(
                run, out_dir, results, returns, manifest,
                ledger_rows=new_results[RESULT_KEYS],
                ledger_detail={"mode": "simulate", "pairs": pairs})
            print(leaderboard_text(results, top=15))
            return {"run_id": run_id, "status": status, "out": str(out_dir),
                    FAILED: int((results["status"] == FAILED).sum()), "pairs": pairs,
                    "rows": int(len(new_results)), "timings": run.timings, "cache": run.cache,
                    "flow_run_id": flow_run_id(), "report": published.get("report")}
        except BaseException:
            run.fail()
            raise


__all__ = ["simulate"]
