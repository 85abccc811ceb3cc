"""What a run will compute: chunks of work and their cache keys, without Prefect or Ray.

The parent flow and the CLI share this, so the CLI can tell before any service starts
whether Stage 1 has anything to compute (a warm rerun then never starts Ray), and the flow
can run chunks that are already in result storage in its own process (no Ray round trip,
no transfer of the returns matrix or the cube) while Prefect still records them as Cached.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tournament.config import digest_of
from tournament.keys import (cache_key, cell_key_parts, engine_code_version,
                             horizon_fingerprint, simulation_key_parts, simulator_code_version,
                             slice_fingerprint, stage1_chunk_parts, stage2_key_parts)
from tournament.schema import STORED_RUN_MARKER
from tournament.stage1 import engine_instance, plan_cells

DEFAULT_RESULT_STORAGE = ".tournament-cache/results"

# Stage 1 chunking: a task costs ~0.1-0.2 s of Prefect/Ray overhead, so a chunk should hold
# about TARGET_CHUNK_SECONDS of solving. Measured mean cost per supported cell over the
# engine mix: ~3 ms at 20 assets, ~20 ms at 100, ~45 ms at 200 (one core).
TARGET_CHUNK_SECONDS = 4.0
MAX_WINDOW_BLOCKS = 8

# Strategies per Stage 2 task by simulator: 0 = every strategy of the pair in one task (the
# custom kernel simulates them all in ~0.05 s, less than a task's own ~0.2 s of Prefect and
# Ray overhead); None = one task per selection group (vectorbt: ~1 s per group when paths
# are simulated in full, so the groups balance the workers); n = pieces of n per selection
# (per-strategy simulators, ~1 s per backtest).
STAGE2_CHUNK = {"custom": 0, "vectorbt": None, "cvxportfolio": 4, "nautilus": 2}
# Rough relative cost per strategy, to submit the slowest chunks first (shorter tail).
STAGE2_COST = {"custom": 0.01, "vectorbt": 0.2, "cvxportfolio": 1.0, "nautilus": 2.0}


@dataclass
class Chunk:
    """One task's worth of work: its display name, its members, its cache key, and each
    member's own key (`unit_keys`, aligned with `members`; None = never stored: an
    unsupported cell), under which the task stores and finds that member's result."""
    name: str
    members: list
    key: str
    parts: dict
    unit_keys: list

    def task_kwargs(self) -> dict:
        return {"chunk_name": self.name, "cache_key": self.key, "key_parts": self.parts,
                "unit_keys": self.unit_keys}

    def stored_units(self) -> list[str]:
        return [k for k in self.unit_keys if k is not None]


def replayable(chunks: list[Chunk], exists) -> set[str]:
    """Keys of the chunks that compute nothing: stored themselves, or every unit stored
    (`exists(key)`: is that key in result storage). Units are looked up only for chunks not
    stored whole."""
    return {c.key for c in chunks
            if exists(c.key) or all(exists(k) for k in c.stored_units())}


def stored_key(key: str) -> str:
    """The key a task stores its result under. Under test-only fault injection
    (TOURNAMENT_FAULTS, see tournament.faults) the rules are part of the key, so injected
    failures never poison the cache of normal runs."""
    faults = os.environ.get("TOURNAMENT_FAULTS", "").strip()
    if faults:
        key += "-faults-" + hashlib.sha256(faults.encode()).hexdigest()[:10]
    return key


def estimated_cell_seconds(n_assets: int) -> float:
    return 3e-3 * max(n_assets / 20.0, 1.0) ** 1.2


def stage1_chunks(cells, *, n_assets: int) -> list[tuple[str, list]]:
    """Chunk cells so each task holds ~TARGET_CHUNK_SECONDS of work.

    Small problems: one chunk per (selection, engine). Large ones: one per (selection,
    engine, profile), split into fixed blocks of consecutive windows. A chunk's membership
    depends only on its own cells' identity and the data shape, so changing one selection
    mode leaves every other chunk (and its cache key) unchanged.
    """
    per_cell = estimated_cell_seconds(n_assets)
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c.selection, c.engine), []).append(c)
    out = []
    for (sel, eng), group in sorted(groups.items()):
        if len(group) * per_cell <= TARGET_CHUNK_SECONDS:
            out.append((f"{sel}/{eng}", group))
            continue
        n_windows = max(c.window for c in group) + 1
        # ~TARGET seconds per chunk, but at most MAX_WINDOW_BLOCKS blocks per strategy so the
        # task count stays in the hundreds (Prefect slows down past ~2k tasks per run).
        block = max(1, int(TARGET_CHUNK_SECONDS / per_cell), -(-n_windows // MAX_WINDOW_BLOCKS))
        by_profile: dict[str, list] = {}
        for c in group:
            by_profile.setdefault(c.profile, []).append(c)
        for prof, cs in sorted(by_profile.items()):
            blocks: dict[int, list] = {}
            for c in sorted(cs, key=lambda c: c.window):     # block = window index // size
                blocks.setdefault(c.window // block, []).append(c)
            for piece in blocks.values():
                out.append((f"{sel}/{eng}/{prof}/w{piece[0].window}-{piece[-1].window}", piece))
    return out


def stage1_plan(config, dataset, windows) -> tuple[list[Chunk], dict[str, dict]]:
    """Stage 1's chunks, and every cell's key parts ({cell key: parts}, what cache_keys.json
    records). Each window's training slice is fingerprinted once, for all its cells."""
    dates = [str(dataset.dates[w.rebalance].date()) for w in windows]
    slices = [slice_fingerprint(dataset.returns, dataset.dates, dataset.assets, w.train_rows)
              for w in windows]
    out, cell_parts = [], {}
    for name, cells in stage1_chunks(plan_cells(config, windows), n_assets=dataset.n_assets):
        unit_keys = []
        for c in cells:
            if not engine_instance(c.engine).supports(c.profile):
                unit_keys.append(None)          # never solved, never stored
                continue
            parts = cell_key_parts(c, window_date=dates[c.window],
                                   slice_fingerprint=slices[c.window], config=config)
            unit_keys.append(cache_key(parts))
            cell_parts[unit_keys[-1]] = parts
        out.append(cell_chunk(name, cells, unit_keys))
    return out, cell_parts


def cell_chunk(name: str, cells: list, unit_keys: list) -> Chunk:
    """A Stage 1 chunk of `cells` (their keys aligned), keyed by its cells' keys. An
    unsupported cell is named, so its recorded reason belongs to this chunk's key."""
    parts = stage1_chunk_parts([k or f"unsupported {c.engine}/{c.profile}"
                                for k, c in zip(unit_keys, cells)])
    return Chunk(name, cells, cache_key(parts), parts, unit_keys)


def split_partly_stored(chunks: list[Chunk], exists, *, n_assets: int,
                        workers=lambda: 1) -> list[Chunk]:
    """Stage 1's chunks with the cells that must be solved gathered apart (`exists(key)`: is
    that key in result storage).

    A chunk stored whole, or with every cell stored, or with none, is kept. The others (e.g.
    every chunk holding all windows of a strategy, the night a window is appended) are split:
    their stored and unsupported cells become ONE chunk that computes nothing (replayed in
    this process), and their missing cells are packed together into chunks of about
    TARGET_CHUNK_SECONDS, and into at least `workers()` chunks (the CPUs that can solve them
    at once; asked only when there are cells to solve), dealt round-robin so each holds a mix
    of engines. So a night's few new cells take a task per worker, not one per old chunk,
    and no stored cell is solved again whatever the grouping."""
    keep, stored_part, missing = [], [], []
    for chunk in chunks:
        if exists(chunk.key):
            keep.append(chunk)
            continue
        found = [k is None or exists(k) for k in chunk.unit_keys]
        if all(found) or not any(k is not None and f for k, f in zip(chunk.unit_keys, found)):
            keep.append(chunk)
            continue
        for cell, key, is_stored in zip(chunk.members, chunk.unit_keys, found):
            (stored_part if is_stored else missing).append((cell, key))
    out = list(keep)
    if stored_part:
        out.append(cell_chunk("stored cells", *map(list, zip(*stored_part))))
    per_cell = estimated_cell_seconds(n_assets)
    size = max(1, int(TARGET_CHUNK_SECONDS / per_cell))
    missing.sort(key=lambda m: (m[0].selection, m[0].engine, m[0].profile, m[0].window))
    if missing:
        n = max(-(-len(missing) // size), min(int(workers()), len(missing)))
        for i in range(n):
            out.append(cell_chunk(f"new cells #{i}", *map(list, zip(*missing[i::n]))))
    return out


def stage2_chunks(keys, simulator: str, *, whole: bool = False) -> list[tuple[str, list]]:
    """Group strategies by selection, then fixed-size pieces for per-strategy simulators; or
    one group of every strategy (STAGE2_CHUNK 0, or `whole`)."""
    size = 0 if whole else STAGE2_CHUNK.get(simulator)
    groups: dict[str, list] = {}
    for k in sorted(keys):
        groups.setdefault("every" if size == 0 else k[0], []).append(k)
    size = size or None
    out = []
    for sel, group in sorted(groups.items()):
        step = size or len(group)
        for i in range(0, len(group), step):
            out.append((f"{sel}#{i // step}", group[i:i + step]))
    return out


@dataclass
class SimulationChunk(Chunk):
    rebalance: str = ""
    simulator: str = ""
    cost: float = 0.0

    def task_kwargs(self) -> dict:
        return {**super().task_kwargs(), "rebalance": self.rebalance, "simulator": self.simulator}


def stage2_plan(config, dataset, cube, strategies, pairs, *,
                whole_pairs=frozenset()) -> list[SimulationChunk]:
    """Stage 2 chunks, most expensive first (a shorter tail on the workers). The data enters
    each key as the fingerprint of the horizon rows every path simulates, once. The pairs in
    `whole_pairs` get one chunk of every strategy (see continuing_pairs)."""
    from tournament.simulators.orders import horizon_rows
    digests = {k: cube.schedule_digest(k) for k in strategies}
    rows, end = horizon_rows(cube, dataset.dates)
    returns_fp = horizon_fingerprint(dataset.returns, dataset.dates, dataset.assets,
                                     int(rows[0]), end)
    out = []
    for rebalance, simulator in pairs:
        for name, chunk in stage2_chunks(strategies, simulator,
                                         whole=(rebalance, simulator) in whole_pairs):
            parts = stage2_key_parts([digests[k] for k in chunk], rebalance=rebalance,
                                     simulator=simulator, returns_fingerprint=returns_fp,
                                     config=config)
            units = [cache_key(simulation_key_parts(parts, digests[k])) for k in chunk]
            cost = STAGE2_COST.get(simulator, 1.0) * len(chunk) * (3 if rebalance == "daily" else 1)
            out.append(SimulationChunk(f"{rebalance}/{simulator}/{name}", chunk, cache_key(parts),
                                       parts, units, rebalance=rebalance, simulator=simulator,
                                       cost=cost))
    out.sort(key=lambda c: -c.cost)
    return out


def continuing_pairs(chunks: list[SimulationChunk], exists, end_key) -> set[tuple[str, str]]:
    """The (rebalance, simulator) pairs to simulate in ONE task each: those of a simulator
    that continues paths (tournament.simulators.base.BatchSimulator.simulate_from) with a
    simulation to compute (`exists(key)`: is that key in result storage; a pair whose chunks
    all replay keeps its grouping, so a warm rerun finds its chunks) and a stored path end
    for every strategy (`end_key(strategy, rebalance, simulator)`): a night after a run of
    this grid. Continuing a path simulates only the new days (milliseconds), less than a
    task's own Prefect and Ray overhead, so one task per pair beats one per selection. A
    stored end that turns out not to match (a corrected price) is simulated in full, in
    that one task: correct, only less parallel."""
    from tournament.stage2 import simulator_instance
    by_pair: dict[tuple[str, str], list[SimulationChunk]] = {}
    for c in chunks:
        by_pair.setdefault((c.rebalance, c.simulator), []).append(c)
    out = set()
    for (rebalance, simulator), group in by_pair.items():
        if len(group) < 2 or not simulator_instance(simulator).continues_paths():
            continue
        if replayable(group, exists) == {c.key for c in group}:
            continue
        if all(exists(end_key(k, rebalance, simulator)) for c in group for k in c.members):
            out.add((rebalance, simulator))
    return out


def local_storage_path(location: str | os.PathLike) -> Path | None:
    """The directory of a local result storage, or None for a remote (fsspec) one."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        return None
    return Path(location.removeprefix("file://")).expanduser().resolve()


# ----------------------------------------------------------------------------- whole runs
# A completed run leaves a marker in a local result storage. The next run of the same config
# on the same data (and code) then expects to compute nothing and starts Ray only if a chunk
# turns out to need it; any other run starts Ray and warms its workers at once, so their
# start-up (~5 s: a new job's processes, imports) overlaps planning and replaying stored work.
# The marker is a hint about *when* Ray starts: what is computed is decided per key.
def run_digest(config, dataset, *, raced: bool = False) -> str:
    return digest_of([config.digest(), dataset.fingerprint, raced,
                      *[engine_code_version(e) for e in config.engines],
                      *[simulator_code_version(s) for s in config.simulators]])


def stored_run_marker(location: str | os.PathLike | None, digest: str) -> Path | None:
    """Where a local result storage keeps that run's marker; None for a remote one (or a
    storage block)."""
    from .runtime import is_block_slug
    location = str(location or DEFAULT_RESULT_STORAGE)
    if is_block_slug(location):
        return None
    path = local_storage_path(location)
    return None if path is None else path / STORED_RUN_MARKER.format(digest=digest)


def expects_compute(location: str | os.PathLike | None, digest: str, *, refresh: bool) -> bool:
    """Whether a run should start Ray before it knows (False: the same run completed on this
    local storage before)."""
    marker = stored_run_marker(location, digest)
    return refresh or marker is None or not marker.exists()


def mark_stored_run(location: str | os.PathLike | None, digest: str) -> None:
    marker = stored_run_marker(location, digest)
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def uncached_count(chunks: list[Chunk], location: str | os.PathLike | None) -> int | None:
    """How many chunks would compute something (neither stored whole nor every unit
    stored; a file check, no Prefect): None when the storage is remote and cannot be
    checked this cheaply."""
    path = local_storage_path(location or DEFAULT_RESULT_STORAGE)
    if path is None:
        return None
    return len(chunks) - len(replayable(chunks, lambda k: (path / stored_key(k)).exists()))


# ----------------------------------------------------------------------------- stored results
def stored_keys(keys: list[str], location: str | None) -> set[str] | None:
    """The keys among `keys` whose result is in storage; None when it cannot be checked
    without Prefect's API (a storage block slug) or the check fails."""
    from .runtime import is_block_slug
    location = str(location or DEFAULT_RESULT_STORAGE)
    try:
        if is_block_slug(location):
            return None                   # a saved block: Block.load needs the Prefect API
    except Exception:      # noqa: BLE001
        return None
    path = local_storage_path(location)
    if path is not None:
        return {k for k in keys if (path / stored_key(k)).exists()}
    try:
        import fsspec
        fs, root = fsspec.core.url_to_fs(location)
        return {k for k in keys if fs.exists(f"{root.rstrip('/')}/{stored_key(k)}")}
    except Exception:      # noqa: BLE001 - unknown, not an error: the plan says so
        return None


def stored_units(chunks: list[Chunk], location: str | None
                 ) -> tuple[set[str], set[str]] | None:
    """(chunk keys stored, unit keys stored) of `chunks`; None when storage cannot be
    checked. A chunk stored whole has every unit stored (its task wrote each one); the
    others' units are looked up one by one."""
    whole = stored_keys([c.key for c in chunks], location)
    if whole is None:
        return None
    rest = stored_keys([k for c in chunks if c.key not in whole for k in c.stored_units()],
                       location)
    if rest is None:
        return None
    return whole, rest | {k for c in chunks if c.key in whole for k in c.stored_units()}


def load_stored(key: str, location: str | None):
    """A stored task result (local storage only), or None. Prefect's result record format;
    a pickle, so only from storage this tool wrote (see README, Trust)."""
    from .runtime import is_block_slug
    location = str(location or DEFAULT_RESULT_STORAGE)
    path = None if is_block_slug(location) else local_storage_path(location)
    if path is None:
        return None
    try:
        from prefect.results import ResultRecord
        return ResultRecord.deserialize((path / stored_key(key)).read_bytes()).result
    except Exception:      # noqa: BLE001 - unreadable: counted as not stored
        return None
