"""What `tournament simulate` reads, checks and merges: no Prefect, no Ray, so the CLI
validates a request before any service starts (flows.simulate_flow runs it).

`prepare_simulation` keeps what it loaded in an in-process cache keyed by its arguments and
the size and mtime of the run directory's input files, so the CLI's validation and the flow
it then starts load the cube and the data once; the flow's parameters stay small.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tournament.config import TournamentConfig, config_from_dict  # noqa: F401 (re-exported)
from tournament.cube import WeightsCube
from tournament.data import BUNDLED, SYNTHETIC, Dataset, load_dataset, validate_for_config
from tournament.errors import ConfigError, DataError, unknown_name
from tournament.registry import REBALANCE_MODES, SIMULATORS
from tournament.schema import CACHE_KEYS, CUBE_PICKLE, LEDGER, MANIFEST, RESULTS, RETURNS

INPUT_FILES = (MANIFEST, CUBE_PICKLE, RESULTS, RETURNS, CACHE_KEYS, LEDGER)
_PREPARED: dict[tuple, "SimulateInputs"] = {}


def load_cube(run_dir: str | None, dataset: Dataset) -> WeightsCube:
    """The cube of a run directory (weights_cube.pkl), checked against the dataset."""
    path = Path(run_dir or ".") / CUBE_PICKLE
    if not run_dir or not path.is_file():
        raise ConfigError(f"run directory error: no weights cube at {path} (run `tournament "
                          "run --out RUN_DIR` first)")
    cube = WeightsCube.from_pickle(path)
    if tuple(cube.assets) != tuple(dataset.assets):
        raise ConfigError(f"data error: the cube in {run_dir} is over other assets than the "
                          f"data {dataset.source}")
    return cube


@dataclass
class SimulateInputs:
    run_dir: Path
    manifest: dict[str, Any]
    config: TournamentConfig          # the run's, with the requested pairs' names added
    request: TournamentConfig         # only the requested rebalances and simulators
    dataset: Dataset
    data_spec: dict[str, Any]         # data, data_kind, days: how the dataset was reloaded
    cube: WeightsCube
    pairs: list[tuple[str, str]]
    benchmarks: list[str]             # rebalance modes that get the benchmark row added
    results: pd.DataFrame             # the run's results and returns before this step
    returns: pd.DataFrame
    cache_keys: dict


def _names(kind: str, given, valid, default: tuple[str, ...]) -> tuple[str, ...]:
    if given is None:
        return tuple(default)
    if isinstance(given, str):
        given = [g.strip() for g in given.split(",") if g.strip()]
    if not given:
        raise ConfigError(f"simulate error: --{kind} must name at least one of: "
                          f"{', '.join(sorted(valid))}")
    for name in given:
        if name not in valid:
            raise ConfigError(f"simulate error: --{kind}: "
                              + unknown_name(kind[:-1], name, valid))
    return tuple(dict.fromkeys(given))


def _read_manifest(run: Path) -> dict[str, Any]:
    path = run / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict) \
            or not isinstance(manifest.get("data"), dict):
        raise ConfigError(f"run directory error: {path} is missing or unreadable (not a "
                          "finished run directory)")
    return manifest


def data_candidates(described: dict[str, Any], *, data: str | None, data_kind: str | None,
                    days: int | None) -> list[dict[str, Any]]:
    """How to reload a run's data: explicit arguments win; else the manifest's source and
    length (a synthetic source without its seed suffix; a file as prices, then returns)."""
    n_days = described.get("days")
    if data is not None:
        return [{"data": data, "data_kind": data_kind or "prices",
                 "days": n_days if days is None else days}]
    source = str(described.get("source") or "")
    if source.startswith(SYNTHETIC + ":") and source.count(":") == 2:
        source = source.rsplit(":", 1)[0]          # synthetic:DxN:seed7 -> synthetic:DxN
    is_file = source != BUNDLED and not source.startswith(SYNTHETIC)
    kinds = [data_kind] if data_kind else (["prices", "returns"] if is_file else ["prices"])
    return [{"data": source, "data_kind": k, "days": n_days if days is None else days}
            for k in kinds]


def reload_dataset(run: Path, described: dict[str, Any], **given) -> tuple[Dataset, dict]:
    """The run's dataset, reloaded; refuses (one line) unless its fingerprint is the
    manifest's."""
    expected = described.get("fingerprint")
    seen, error = [], None
    for spec in data_candidates(described, **given):
        try:
            ds = load_dataset(spec["data"], days=spec["days"], kind=spec["data_kind"])
        except DataError as exc:
            error = exc
            continue
        if ds.fingerprint == expected:
            return ds, spec
        seen.append(f"{spec['data']} ({spec['data_kind']}, {spec['days']} days) has "
                    f"fingerprint {ds.fingerprint}")
    if not seen and error is not None:
        raise DataError(f"{error}; reloading the data of {run} (pass --data if it moved)")
    raise DataError(f"data error: {run} was run on data with fingerprint {expected} "
                    f"(source {described.get('source')}), but {'; '.join(seen)}; pass the "
                    "run's data with --data/--data-kind/--days")


def _stamp(run: Path) -> tuple:
    out = []
    for name in INPUT_FILES:
        try:
            st = (run / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append((name, None, None))
    return tuple(out)


def prepare_simulation(run_dir: str | Path, *, simulators=None, rebalances=None,
                       data: str | None = None, data_kind: str | None = None,
                       days: int | None = None) -> SimulateInputs:
    """Everything `simulate` needs, validated; raises TournamentError (one line) before
    anything is computed or written. Cached in this process (module docstring)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run directory error: {run}: no such directory")
    key = (str(run.resolve()), json.dumps([simulators, rebalances, data, data_kind, days],
                                          default=str), _stamp(run))
    if key in _PREPARED:
        return _PREPARED[key]
    manifest = _read_manifest(run)
    if not (run / CUBE_PICKLE).is_file():
        raise ConfigError(f"run directory error: no weights cube at {run / CUBE_PICKLE}"
                          " (run `tournament run --out RUN_DIR` first)")
    config = config_from_dict(manifest["config"], source=str(run / MANIFEST))
    sims = _names("simulators", simulators, SIMULATORS, config.simulators)
    rebs = _names("rebalances", rebalances, REBALANCE_MODES, config.rebalances)
    _check_ledger(run, manifest)
    dataset, spec = reload_dataset(run, manifest["data"], data=data, data_kind=data_kind,
                                   days=days)
    merged = config
    all_sims = tuple(dict.fromkeys([*config.simulators, *sims]))
    if set(all_sims) != set(config.simulators):
        merged = dataclasses.replace(merged, simulator_list=all_sims)
    all_rebs = tuple(dict.fromkeys([*config.rebalances, *rebs]))
    if all_rebs != config.rebalances:
        merged = dataclasses.replace(merged, rebalances=all_rebs)
    validate_for_config(dataset, merged)
    request = dataclasses.replace(merged, rebalances=rebs, simulator_list=sims)
    cube = load_cube(str(run), dataset)
    results = _frame(run / RESULTS)
    returns = _frame(run / RETURNS)
    from tournament.stage2 import BENCHMARK_KEY
    have = set(results.loc[results["selection"] == BENCHMARK_KEY[0], "rebalance"]) \
        if not results.empty else set()
    cache_keys = {}
    if (run / CACHE_KEYS).is_file():
        try:
            cache_keys = json.loads((run / CACHE_KEYS).read_text())
        except ValueError:
            cache_keys = {}
    inputs = SimulateInputs(run, manifest, merged, request, dataset, spec, cube,
                            [(r, s) for r in rebs for s in sims],
                            [r for r in rebs if r not in have], results, returns, cache_keys)
    _PREPARED.clear()                 # one prepared run at a time is all a process needs
    _PREPARED[key] = inputs
    return inputs


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def _check_ledger(run: Path, manifest: dict) -> None:
    from tournament.ledger import verify_ledger
    path = run / LEDGER
    if not path.exists():
        return
    report = verify_ledger(path, expected_head=manifest.get("ledger_head"))
    if not report.ok:
        first = report.errors[0] if report.errors else "unbalanced"
        raise ConfigError(f"ledger error: {path} does not verify ({first}); refusing to "
                          "append to it (`tournament verify-ledger` shows why)")


# ----------------------------------------------------------------------------- merging
def merge_run_frames(inputs: SimulateInputs, new_results: pd.DataFrame,
                     new_returns: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's results and returns with the new rows in place of the old rows of the same
    five keys, without the statistics columns (recomputed on the merged frames), in the
    order a run of the merged config would write them."""
    from tournament.stage2 import BENCHMARK_KEY, RESULT_KEYS
    columns = list(new_results.columns)
    new_keys = new_results[RESULT_KEYS].drop_duplicates()
    old = inputs.results
    if not old.empty:
        old = old[_not_in(old, new_keys)][[c for c in columns if c in old.columns]]
    results = pd.concat([old, new_results], ignore_index=True) if not old.empty \
        else new_results
    results = results[columns].sort_values(RESULT_KEYS, kind="stable").reset_index(drop=True)
    old_ret = inputs.returns
    if not old_ret.empty:
        old_ret = old_ret[_not_in(old_ret, new_keys)]
    returns = pd.concat([old_ret, new_returns], ignore_index=True) if not old_ret.empty \
        else new_returns
    # As stage2_flow orders them: (rebalance, simulator) pairs sorted, strategies sorted
    # within a pair, each path by date; then the benchmark, in the config's rebalance order.
    bench = (returns["selection"] == BENCHMARK_KEY[0]).to_numpy()
    strategies = returns[~bench].sort_values(["rebalance", "simulator", "selection", "engine",
                                              "profile", "date"])
    rank = {r: i for i, r in enumerate(inputs.config.rebalances)}
    benchmark = returns[bench]
    benchmark = (benchmark.assign(_rank=benchmark["rebalance"].map(rank))
                 .sort_values(["_rank", "date"]).drop(columns="_rank"))
    returns = pd.concat([strategies, benchmark], ignore_index=True)
    return results, returns[list(new_returns.columns)]


def _not_in(frame: pd.DataFrame, keys: pd.DataFrame):
    from tournament.stage2 import RESULT_KEYS
    index = pd.MultiIndex.from_frame(frame[RESULT_KEYS].astype(str))
    drop = pd.MultiIndex.from_frame(keys[RESULT_KEYS].astype(str))
    return ~index.isin(drop)
