"""Stage 2 as a Prefect subflow: one task per (rebalance, simulator, strategy chunk).

Runnable on its own (from the UI, or `stage2_flow(config=..., data=..., run_dir=...)`) on the
cube of a run directory; its simulations then go to result storage only (`tournament
simulate` / the `tournament-simulate` flow also merges them into the run directory). The
`tournament` and `tournament-simulate` flows take the simulations from its return value.
"""
from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from tournament.schema import OK
from tournament.stage2 import (benchmark_simulations, merge_results, ok_strategies,
                               path_end_key, simulation_pairs)

from .plan import continuing_pairs, stage2_plan
from .ray_runner import LazyRayTaskRunner
from .rerun import load_cube
from .stage_run import (current, ensure_current_ray, is_cached, run_chunks, stage_counts,
                        stage_docstring, stage_run_for, StageRun,
                        stored_chunks)


@stage_docstring(
    "Stage 2: simulate the cube's ok strategies for each (rebalance, simulator) pair.",
    returns=(
        'Returns {"pairs", "cache", "simulations" (SimulationResults, benchmark included),\n'
        '"race" (the manifest record, or None), "race_decisions", "key_parts", "progress",\n'
        '"parallel", "warmups"}.'
    ),
    run_dir=('run directory holding the cube (weights_cube.pkl) when `cube_dir` is None.'),
    pairs=('[rebalance, simulator] pairs to simulate; None = every pair of the config.'),
    benchmarks=("rebalance modes to add the benchmark's buy-and-hold for; None = the config's "
                'rebalance modes.'),
    race=('multi-fidelity racing (tournament.race.RaceSettings as a dict: top_k, cap, '
          'min_tau, on_disagreement); None = every strategy at every tier. Not with '
          '`pairs`.'),
    overrides=('flat config overrides (when `config` is None).'),
    cube_dir=("directory of the cube's weights_cube.pkl (Stage 1's hand-over in the parent "
              'flow); None = run_dir.'),
)
def _stage2(config: dict[str, Any] | None = None, data: str = "sp500",
            data_kind: str = "prices", days: int | None = None,
            run_dir: str | None = None, result_storage: str | None = None,
            pairs: list[list[str]] | None = None, benchmarks: list[str] | None = None,
            race: dict[str, Any] | None = None,
            refresh: bool = False, config_path: str | None = None,
            overrides: dict[str, Any] | None = None, compute: dict[str, Any] | None = None,
            cube_dir: str | None = None, progress: dict[str, Any] | None = None,
            label: str = "") -> dict:
    stage = stage_run_for(locals())
    from tasks.stage2 import simulate_chunk
    cfg = stage.config
    stage.cube = load_cube(cube_dir or run_dir, stage.dataset)
    benchmarks = cfg.rebalances if benchmarks is None else tuple(benchmarks)
    cache: dict[str, int] = {}
    decisions = record = None
    if race is not None:
        from tournament.errors import ConfigError
        from tournament.race import RaceSettings
        if pairs is not None:
            raise ConfigError("stage2: race and pairs exclude each other (a race picks its "
                              "pairs tier by tier)")
        pairs = simulation_pairs(cfg)
        with current(stage):
            sims, decisions, record = _race(stage, simulate_chunk, RaceSettings.from_dict(race),
                                            cache)
    else:
        pairs = simulation_pairs(cfg) if pairs is None else [tuple(p) for p in pairs]
        with current(stage):
            sims = _simulate_pairs(stage, simulate_chunk, pairs, cache)
    sims.extend(benchmark_simulations(stage.dataset, stage.cube, cfg, benchmarks))
    return {"pairs": [list(p) for p in pairs], "cache": cache, "simulations": sims,
            "race": record, "race_decisions": decisions, "key_parts": stage.key_parts,
            "progress": stage_counts(stage.progress), "parallel": stage.parallel,
            "warmups": stage.warmups}



# Named apart from the flow and never persisted, as stage1_flow (see there).
stage2_flow = flow(name="stage2-simulation", flow_run_name="stage2 {label}",
                   validate_parameters=False, persist_result=False,
                   task_runner=LazyRayTaskRunner(ensure_ray=ensure_current_ray))(_stage2)


def _race(stage: StageRun, simulate_chunk, settings, cache: dict[str, int]):
    """Multi-fidelity racing (tournament.race decides; this runs each tier's chunks).
    Returns (simulations, tier decisions, manifest record)."""
    from tournament.race import run_race
    from tournament.stage2 import results_frame
    logger = get_run_logger()
    cfg, n_ok = stage.config, len(ok_strategies(stage.cube))
    progress = stage.progress.stages["stage2"]
    progress.total = 0
    seconds: list[float] = []

    def simulate(pairs, strategies):
        progress.total += sum(n_ok if strategies is None else len(strategies.get(r, ()))
                              for r, _ in pairs)
        t0 = time.perf_counter()
        out = _simulate_pairs(stage, simulate_chunk, pairs, cache, strategies)
        seconds.append(round(time.perf_counter() - t0, 3))
        return out

    sims, decisions, record = run_race(
        simulate, config=cfg, settings=settings, log=logger.info,
        results_of=lambda s: results_frame(s, stage.cube, stage.dataset, cfg))
    for tier, secs in zip(record["tiers"], seconds):
        tier["seconds"] = secs
    return sims, decisions, record


def _simulate_pairs(stage: StageRun, simulate_chunk, pairs: list[tuple[str, str]],
                    cache: dict[str, int], strategies: dict[str, list] | None = None) -> list:
    """Simulate `pairs` for every ok strategy, or for `strategies` ({rebalance: keys}: a
    race's promoted subset). A subset's chunks have the cache keys of their own members
    (stage2_key_parts lists each member's schedule digest), so a subset never reads or
    overwrites a full chunk's stored result unless it holds exactly the same strategies.
    Adds to `cache` (tasks, and simulations `computed` now or `cached`: a Cached chunk's, or
    stored one by one and reused inside a chunk that ran; `continued`: those computed by
    continuing a stored path, simulating only its new days); returns the simulations merged
    per pair."""
    cfg, ds, cube = stage.config, stage.dataset, stage.cube

    def plan(whole=frozenset()):
        if strategies is None:
            return stage2_plan(cfg, ds, cube, ok_strategies(cube), pairs, whole_pairs=whole)
        chunks = [c for r in sorted({r for r, _ in pairs})
                  for c in stage2_plan(cfg, ds, cube, sorted(strategies.get(r, [])),
                                       [p for p in pairs if p[0] == r], whole_pairs=whole)]
        return sorted(chunks, key=lambda c: -c.cost)

    chunks = plan()
    if not stage.refresh and chunks:
        # A night: paths that continue from their stored ends go in one task per pair.
        whole = continuing_pairs(chunks, stage.is_stored, lambda k, r, s: path_end_key(
            k, rebalance=r, simulator=s, cube=cube, config=cfg))
        if whole:
            chunks = plan(whole)
    stored = stored_chunks(stage, chunks)
    task = simulate_chunk.with_options(result_storage=stage.storage, refresh_cache=stage.refresh)
    for c in chunks:
        stage.key_parts[c.key] = c.parts

    def on_ray(chunk):
        cube_ref = stage.ensure_cube_ref()
        return stage.returns_ref, ds.dates, cube_ref, chunk.members, cfg

    def local(chunk):
        return ds.returns, ds.dates, cube, chunk.members, cfg

    by_pair: dict[tuple[str, str], list] = {}
    hits = computed = reused = n_sims = continued = 0
    for chunk, fut in run_chunks(task, chunks, stored, ray_args=on_ray, local_args=local):
        out = fut.result()
        result = out["result"]
        # A cached result may come from identical weights under another name: relabel.
        result.keys = list(chunk.members)
        chunk_cached = is_cached(fut)
        hits += chunk_cached
        n_sims += len(result.keys)
        computed += 0 if chunk_cached else out["computed"]
        continued += 0 if chunk_cached else out.get("continued", 0)
        n_reused = len(result.keys) if chunk_cached else out["reused"]
        reused += n_reused
        by_pair.setdefault((result.rebalance, result.simulator), []).append(result)
        stage.progress.record("stage2", done=sum(s == OK for s in result.status),
                              failed=sum(s != OK for s in result.status), cached=n_reused)
    for name, n in (("tasks", len(chunks)), ("tasks_cached", hits), ("simulations", n_sims),
                    ("computed", computed), ("continued", continued), ("cached", reused)):
        cache[name] = cache.get(name, 0) + n
    # Chunks finish in any order (Ray, or local replay); merge them in a fixed order so the
    # results frame, and the digest that keys the cached statistics, never depend on timing.
    return [merge_results(sorted(parts, key=lambda r: list(r.keys)))
            for _, parts in sorted(by_pair.items())]
