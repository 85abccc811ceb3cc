"""What a stage subflow works with: its `StageRun` (built from the stage's own parameters),
and running its chunks (stored ones replayed in this process, the rest sent to Ray).

A stage gets only small descriptors as parameters (the Prefect API records them): the data
source, the config as a dict, the result storage, the run directory, Ray settings, and the
run's progress (`progress_state`). It prepares its data through `flows.inputs.prepare_run`
(in the process that already prepared it, nothing is loaded again) and returns what it made;
large arrays reach Ray workers through Ray's object store (`StageRun.ensure_ray`), never
through parameters.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.futures import as_completed

from tournament.config import TournamentConfig, config_from_dict
from tournament.cube import WeightsCube
from tournament.errors import ConfigError
from tournament.schema import FAILED, UNSUPPORTED

from .inputs import PreparedRun, prepare_run
from .plan import DEFAULT_RESULT_STORAGE, Chunk, replayable, split_partly_stored, stored_key
from .progress import RunProgress, StageCounts
from .runtime import (check_cluster_reachability, check_storage_reaches_all_nodes,
                      default_result_storage, make_result_storage, start_compute,
                      storage_url, warmup_refs)

# Threads that replay stored chunks in this process (reading results is I/O bound).
LOCAL_REPLAY_THREADS = 4


@dataclass
class StageRun:
    """One stage's prepared inputs, storage, progress, and its Ray handles (made lazily)."""
    prepared: PreparedRun
    storage: Any
    refresh: bool
    progress: RunProgress
    ray_address: str | None = None
    num_cpus: int | None = None
    shared_storage: bool = False
    returns_ref: Any = None
    cube: WeightsCube | None = None
    cube_ref: Any = None
    warmups: list = field(default_factory=list)
    parallel: dict[str, float] = field(default_factory=dict)   # overlapped timings
    key_parts: dict[str, dict] = field(default_factory=dict)
    # Storage look-ups made before submitting (key -> stored?): Stage 1's split and its
    # replay decision ask about the same keys; one stage never writes before both asked.
    stored_lookups: dict[str, bool] = field(default_factory=dict)
    result_store: Any = None

    def is_stored(self, key: str) -> bool:
        """Whether `key` (a chunk's or a unit's) has a result in storage, asked once."""
        if key not in self.stored_lookups:
            if self.result_store is None:
                from prefect.results import ResultStore
                self.result_store = ResultStore(result_storage=self.storage)
            self.stored_lookups[key] = self.result_store.exists(stored_key(key))
        return self.stored_lookups[key]

    @property
    def config(self) -> TournamentConfig:
        return self.prepared.config

    @property
    def dataset(self):
        return self.prepared.dataset

    @property
    def windows(self):
        return self.prepared.windows

    def ensure_ray(self) -> None:
        """Start or attach to Ray and put the returns matrix into its object store, once,
        the first time a chunk must really be computed."""
        if self.returns_ref is not None:
            return
        import ray
        t0 = time.perf_counter()
        # Something must be computed, so the statistics will be too: their modules are
        # imported in a thread behind Stage 2 (preload_statistics_if_wanted; a fully
        # cached run never pays for them).
        _STATISTICS["wanted"] = True
        start_compute(self.ray_address, num_cpus=self.num_cpus,
                      simulators=self.config.simulators, engines=self.config.engines)
        self.warmups = warmup_refs()
        check_storage_reaches_all_nodes(storage_url(self.storage), shared=self.shared_storage)
        check_cluster_reachability()      # a loopback API URL on a multi-host cluster
        self.returns_ref = ray.put(self.dataset.returns)
        self.parallel["ray_start"] = (self.parallel.get("ray_start", 0.0)
                                      + time.perf_counter() - t0)

    def mark_first_submit(self) -> None:
        """Wall-clock time of the first task submitted (start-up ends there)."""
        self.parallel.setdefault("first_submit_epoch", time.time())

    def ensure_cube_ref(self) -> Any:
        if self.cube_ref is None:
            import ray
            self.ensure_ray()
            preload_statistics_if_wanted()
            self.cube_ref = ray.put(self.cube)
        return self.cube_ref


# Whether this process computes something (so it will compute statistics) and has started
# importing the statistics' modules (scipy.stats, arch with statsmodels: ~2 s of CPU).
_STATISTICS = {"wanted": False, "started": False}


def preload_statistics_if_wanted() -> None:
    """Import the statistics' modules in a thread, once, if this process computes something.
    Called when Stage 1 ends and when Stage 2 first submits to Ray: not earlier, where the
    import would take CPU from Ray's workers starting and importing on the same cores
    (a night's critical path), but behind Stage 2, where this process mostly waits."""
    if _STATISTICS["wanted"] and not _STATISTICS["started"]:
        _STATISTICS["started"] = True
        from tournament.outputs import preload_statistics_modules
        threading.Thread(target=preload_statistics_modules, name="preload-statistics",
                         daemon=True).start()


# The stage running in this thread. Its task runner starts Ray through it on the first submit
# (`ensure_current_ray`, a module function: a runner travels with its flow to the workers and
# must not hold the stage, which holds the data).
_CURRENT: ContextVar[StageRun | None] = ContextVar("tournament_stage", default=None)


# The stage flows' arguments, described once: each flow's docstring is built from these
# (Prefect shows them in the UI form), with the arguments that are the flow's own.
STAGE_ARGS = {
    "config": "the config as `TournamentConfig.to_dict()` gives it (a manifest's `config`); "
              "when None, `config_path` and `overrides` are loaded instead.",
    "data": "sp500 | synthetic[:DAYSxASSETS] | PATH (.csv/.parquet).",
    "data_kind": "what a data file holds: prices or returns.",
    "days": "the last N trading days; None = the source's default, 0 = whole history.",
    "result_storage": "Prefect result storage (path, fsspec URL or storage block slug).",
    "refresh": "ignore stored results and recompute.",
    "config_path": "TOML config file (when `config` is None).",
    "overrides": "flat config overrides (when `config` is None), e.g. {\"engines\": [\"custom\"]}.",
    "compute": "where the stage computes: {\"ray_address\": an existing Ray cluster, "
               "\"num_cpus\": local Ray CPUs, \"shared_storage\": true when a local result "
               "storage path is shared by every cluster node}; None = local Ray, all CPUs.",
    "progress": "the run's progress (flows.stage_run.progress_state), continued in the run "
                "directory's tournament_state.json; None = a progress bar only.",
    "label": "shown in the flow run's name.",
}


def stage_docstring(summary: str, *, returns: str, **own: str):
    """Decorator: the stage function's docstring (Google style, as Prefect parses it for the
    UI form): `summary`, an Args entry per parameter (its `own` text, else STAGE_ARGS'), then
    `returns`."""
    import inspect
    import textwrap

    def apply(fn):
        lines = [summary, "", "Args:"]
        for name in inspect.signature(fn).parameters:
            lines += textwrap.wrap(f"{name}: {own.get(name) or STAGE_ARGS[name]}", width=88,
                                   initial_indent="    ", subsequent_indent="        ")
        fn.__doc__ = "\n".join([*lines, "", returns])
        return fn
    return apply


def ensure_current_ray() -> None:
    stage = _CURRENT.get()
    if stage is not None:
        stage.ensure_ray()


@contextmanager
def current(stage: StageRun):
    """Make `stage` the running stage (for `ensure_current_ray`)."""
    token = _CURRENT.set(stage)
    try:
        yield stage
    finally:
        _CURRENT.reset(token)


# ----------------------------------------------------------------------------- building one
def resolve_config(config: dict[str, Any] | None = None, config_path: str | None = None,
                   overrides: dict[str, Any] | None = None) -> TournamentConfig:
    """A stage's config parameter: the dict form, else a TOML path plus overrides."""
    from tournament.config import load_config
    if config is not None:
        return config_from_dict(config)
    return load_config(config_path, **(overrides or {}))


class _QuietProgress(RunProgress):
    """Progress of a stage run on its own: the bar, but no tournament_state.json (the run
    directory's state belongs to whoever holds its lock)."""

    def write(self, final: bool = False) -> None:
        pass


def progress_state(progress: RunProgress) -> dict[str, Any]:
    """The run's progress as a stage parameter (small, JSON): the stage continues it in the
    run directory's tournament_state.json and returns its counts (`stage_counts`)."""
    return {"run_id": progress.run_id, "info": progress.info,
            "artifact_id": str(progress.artifact_id) if progress.artifact_id else None,
            "stages": {k: {"total": c.total, "done": c.done, FAILED: c.failed,
                           UNSUPPORTED: c.unsupported, "cached": c.cached}
                       for k, c in progress.stages.items()}}


def _continued_progress(run_dir: str, state: dict[str, Any]) -> RunProgress:
    progress = RunProgress(Path(run_dir), state["run_id"], dict(state["info"]),
                           {k: StageCounts(**v) for k, v in state["stages"].items()})
    progress.artifact_id = uuid.UUID(state["artifact_id"]) if state["artifact_id"] else None
    return progress


def stage_counts(progress: RunProgress) -> dict[str, dict[str, int]]:
    """What a stage returns of the progress: every stage's counts, for the caller to adopt."""
    return progress_state(progress)["stages"]


def build_stage_run(*, config: TournamentConfig, data: str, data_kind: str, days: int | None,
                    run_dir: str | None, result_storage: str | None, refresh: bool,
                    ray_address: str | None, num_cpus: int | None, shared_storage: bool,
                    progress: dict[str, Any] | None) -> StageRun:
    """The stage's inputs from its parameters: data prepared (flows.inputs.prepare_run),
    result storage opened, and the run's progress continued when the caller passed it (else
    a bar only)."""
    prepared = prepare_run(config, data=data, data_kind=data_kind, days=days)
    location = result_storage or default_result_storage(DEFAULT_RESULT_STORAGE)
    if progress is not None and run_dir:
        reporter = _continued_progress(run_dir, progress)
    else:
        reporter = _QuietProgress(Path("."), uuid.uuid4().hex[:12], {})
    return StageRun(prepared, make_result_storage(location), refresh, reporter,
                    ray_address=ray_address, num_cpus=num_cpus, shared_storage=shared_storage)


def stage_run_for(parameters: dict[str, Any]) -> StageRun:
    """build_stage_run from a stage flow's own parameters (its `locals()` on entry: the
    stage flows share these names), the config resolved from `config` or `config_path` +
    `overrides`."""
    p = parameters
    compute = dict(p["compute"] or {})
    unknown = set(compute) - {"ray_address", "num_cpus", "shared_storage"}
    if unknown:
        raise ConfigError(f"stage parameter compute: unknown keys {sorted(unknown)}; valid: "
                          "ray_address, num_cpus, shared_storage")
    config = resolve_config(p["config"], p["config_path"], p["overrides"])
    return build_stage_run(config=config, data=p["data"], data_kind=p["data_kind"],
                           days=p["days"], run_dir=p["run_dir"],
                           result_storage=p["result_storage"], refresh=p["refresh"],
                           ray_address=compute.get("ray_address"),
                           num_cpus=compute.get("num_cpus"),
                           shared_storage=bool(compute.get("shared_storage")),
                           progress=p["progress"])


# ----------------------------------------------------------------------------- chunks
def is_cached(future) -> bool:
    try:
        return future.state.name == "Cached"
    except Exception:
        return False


def stored_chunks(stage: StageRun, chunks: list[Chunk]) -> set[str]:
    """Keys of the chunks that compute nothing: their result, or each of their units'
    results, is already in result storage (none with --refresh). They replay in this
    process; the others go to Ray."""
    if stage.refresh or not chunks:
        return set()
    return replayable(chunks, stage.is_stored)


def split_stored(stage: StageRun, chunks: list[Chunk]) -> list[Chunk]:
    """Stage 1's chunks with the cells to solve gathered apart (flows.plan.split_partly_stored;
    unchanged with --refresh, which recomputes everything)."""
    if stage.refresh or not chunks:
        return chunks
    return split_partly_stored(chunks, stage.is_stored, n_assets=stage.dataset.n_assets,
                               workers=lambda: ray_cpus(stage.num_cpus))


def ray_cpus(num_cpus: int | None) -> int:
    """CPUs of the Ray cluster this process is attached to; when it is not attached yet, the
    local Ray's (`num_cpus`, else this machine's). Never imports Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        except Exception:  # noqa: BLE001 - a planning hint only
            pass
    return max(1, num_cpus or os.cpu_count() or 1)


def run_chunks(task, chunks: list[Chunk], stored: set[str], *, local_args, ray_args,
               on_submit=lambda: None):
    """Yield (chunk, future) as they finish. Stored chunks replay in this process through a
    thread pool (Prefect finds the cache and records Cached); the rest go to Ray through the
    subflow's task runner, which starts Ray on its first submit."""
    from prefect.task_runners import ThreadPoolTaskRunner
    remote = [c for c in chunks if c.key not in stored]
    local = [c for c in chunks if c.key in stored]
    futures = {}
    for chunk in remote:
        futures[task.submit(*ray_args(chunk), **chunk.task_kwargs())] = chunk
        on_submit()
    if local:
        on_submit()
        with ThreadPoolTaskRunner(max_workers=LOCAL_REPLAY_THREADS) as runner:
            replay = {runner.submit(task, parameters=_parameters(task, local_args(c), c)): c
                      for c in local}
            for fut in as_completed(list(replay)):
                yield replay[fut], fut
    for fut in as_completed(list(futures)):
        yield futures[fut], fut


def _parameters(task, args: tuple, chunk: Chunk) -> dict:
    import inspect
    names = list(inspect.signature(task.fn).parameters)
    return {**dict(zip(names, args)), **chunk.task_kwargs()}
