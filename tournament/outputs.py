"""What a finished run writes into its run directory (the layout is in tournament.schema),
every file atomically (temp file + rename)."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .schema import (CACHE_KEYS, CELLS, CUBE_PICKLE, FAILED, FALLBACK, LEDGER, MANIFEST,
                     RESULT_KEYS, RESULTS, RETURNS, STRATEGY_KEYS, RunDir, write_json,
                     write_parquet)

__all__ = ["write_json", "write_parquet", "write_run", "finalize_run", "update_manifest",
           "run_summary", "failed_strategy_lines", "compute_statistics",
           "preload_statistics_modules", "library_versions"]

LIBRARIES = ("numpy", "pandas", "scipy", "cvxpy", "clarabel", "skfolio", "cvxportfolio",
             "vectorbt", "nautilus_trader", "prefect", "prefect-ray", "ray", "pyarrow", "arch")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def write_run(out_dir: str | Path, *, cube, results: pd.DataFrame, returns: pd.DataFrame,
              manifest: dict[str, Any]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cube.to_pickle(out / CUBE_PICKLE)
    cube.to_parquet(out)
    write_parquet(out / RESULTS, results)
    write_parquet(out / RETURNS, returns)
    write_json(out / MANIFEST, {**manifest, "versions": library_versions()})


def preload_statistics_modules() -> None:
    """Import what compute_statistics needs (scipy.stats, arch with statsmodels: ~2.8 s of
    the ~4.6 s of cold statistics on the default grid). A run that will compute its
    statistics calls this in a thread while its stages run, so the imports overlap them."""
    import arch.bootstrap  # noqa: F401
    from . import confidence, overfitting  # noqa: F401


def compute_statistics(results: pd.DataFrame, returns: pd.DataFrame, *, periods: int = 252
                       ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The leaderboard's statistics: overfitting columns, then the confidence set.
    Returns (results with the added columns, the confidence set's settings for the manifest)."""
    from .confidence import add_confidence_columns
    from .overfitting import add_overfitting_columns
    results = add_overfitting_columns(results, returns, periods=periods)
    return add_confidence_columns(results, returns)


def finalize_run(out_dir: str | Path, *, cube, results: pd.DataFrame, returns: pd.DataFrame,
                 manifest: dict[str, Any], key_parts: dict | None = None,
                 periods: int = 252, statistics=None, ledger_rows: pd.DataFrame | None = None,
                 ledger_detail: dict | None = None) -> pd.DataFrame:
    """Everything a finished run writes, in one place (flow, `tournament simulate` and
    legacy mode alike): overfitting-aware leaderboard columns, the confidence set (mcs,
    spa_pvalue, stepm; its bootstrap settings go to the manifest), the audit ledger, the run
    files, cache-key parts. Returns the results frame with the added columns. `statistics`
    may hold them already, as compute_statistics returns them (the flow's cached task);
    default: computed here.

    The ledger gets one new sealed segment: every cell and every results row, or, with
    `ledger_rows` (a frame holding the five result keys), only those results rows and no
    cells (`tournament simulate`: Stage 1 was not run), its seal carrying `ledger_detail`.
    The whole ledger, earlier segments included, must verify before any run file is written."""
    from .ledger import verify_ledger, write_ledger_for_run
    out = Path(out_dir)
    if statistics is None:
        statistics = compute_statistics(results, returns, periods=periods)
    results, confidence = statistics
    if ledger_rows is None:
        head = write_ledger_for_run(out / LEDGER, cube, results,
                                    run_id=manifest.get("run_id"), detail=ledger_detail)
    else:
        recorded = results.merge(ledger_rows[RESULT_KEYS].drop_duplicates(), on=RESULT_KEYS,
                                 how="inner")
        head = write_ledger_for_run(out / LEDGER, cube, recorded, cells=False,
                                    run_id=manifest.get("run_id"), detail=ledger_detail)
    report = verify_ledger(out / LEDGER, expected_head=head)
    if not report.ok:   # intents must equal ok + failed + unsupported outcomes
        raise RuntimeError(f"audit ledger check failed: {report.summary()}")
    write_run(out, cube=cube, results=results, returns=returns,
              manifest={**manifest, "ledger_head": head, "confidence": confidence})
    if key_parts is not None:
        write_json(out / CACHE_KEYS, key_parts)
    return results


def update_manifest(out_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Rewrite manifest.json with `fields` replaced (e.g. the final timings)."""
    return RunDir(out_dir).update_json(MANIFEST, **fields)


def run_summary(out_dir: str | Path) -> tuple[list[str], int]:
    """(lines, number of failed strategies) of a finished run directory: every failed
    strategy with its first reason, and every fallback window with its reason and policy.
    A strategy is failed when any of its results rows failed (cube or simulator)."""
    run = RunDir(out_dir)
    cells, results = run.frame(CELLS, required=True), run.frame(RESULTS, required=True)
    keys = STRATEGY_KEYS
    failed = results[results["status"] == FAILED].drop_duplicates(keys)
    fallback = cells[cells["status"] == FALLBACK].sort_values(
        [*keys, "window_start"], kind="stable")
    lines = [f"fallback windows: {len(fallback)} in "
             f"{len(fallback.drop_duplicates(keys))} strategies"]
    for row in fallback.itertuples(index=False):
        lines.append(f"  fallback {pd.Timestamp(row.window_start).date()} {row.selection}/"
                     f"{row.engine}/{row.profile}: {row.policy} ({row.reason})")
    lines.append(f"failed strategies: {len(failed)}")
    lines += [f"  {line}" for line in failed_strategy_lines(results)]
    return lines, len(failed)


def failed_strategy_lines(results: pd.DataFrame) -> list[str]:
    """One line per failed strategy with its first failed row's reason, e.g.
    `failed all/custom/min_variance [window/custom]: EngineError: ...`."""
    failed = results[results["status"] == FAILED].drop_duplicates(STRATEGY_KEYS)
    return [f"failed {row.selection}/{row.engine}/{row.profile}"
            f" [{row.rebalance}/{row.simulator}]: {row.reason}"
            for row in failed.itertuples(index=False)]

