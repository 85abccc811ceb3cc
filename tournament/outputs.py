"""Run directory writers: every file is written atomically (temp file + rename).

Layout of one run directory:
  weights_cube.pkl, weights_cube.parquet, cells.parquet   Stage 1 (the cube)
  results.parquet    one row per (selection, engine, profile, rebalance, simulator)
  returns.parquet    daily net returns, long form (date + the five keys + net_return)
  tournament_state.json, manifest.json, ledger.jsonl, report.html
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

LIBRARIES = ("numpy", "pandas", "scipy", "cvxpy", "clarabel", "skfolio", "cvxportfolio",
             "vectorbt", "nautilus_trader", "prefect", "prefect-ray", "ray", "pyarrow")


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


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
    cube.to_pickle(out / "weights_cube.pkl")
    cube.to_parquet(out)
    write_parquet(out / "results.parquet", results)
    write_parquet(out / "returns.parquet", returns)
    write_json(out / "manifest.json", {**manifest, "versions": library_versions()})


def finalize_run(out_dir: str | Path, *, cube, results: pd.DataFrame, returns: pd.DataFrame,
                 manifest: dict[str, Any], key_parts: dict | None = None,
                 periods: int = 252) -> pd.DataFrame:
    """Everything a finished run writes, in one place (flow and legacy mode alike):
    overfitting-aware leaderboard columns, the audit ledger, the run files, cache-key parts.
    Returns the results frame with the added columns."""
    from .leaderboard import add_overfitting_columns
    from .ledger import LEDGER_FILE, verify_ledger, write_ledger_for_run
    out = Path(out_dir)
    results = add_overfitting_columns(results, returns, periods=periods)
    head = write_ledger_for_run(out / LEDGER_FILE, cube, results, run_id=manifest.get("run_id"))
    report = verify_ledger(out / LEDGER_FILE, expected_head=head)
    if not report.ok:   # intents must equal ok + failed + unsupported outcomes
        raise RuntimeError(f"audit ledger check failed: {report.summary()}")
    write_run(out, cube=cube, results=results, returns=returns,
              manifest={**manifest, "ledger_head": head})
    if key_parts is not None:
        write_json(out / "cache_keys.json", key_parts)
    return results


def leaderboard(results: pd.DataFrame, top: int | None = 20) -> pd.DataFrame:
    """Ok rows by Sharpe (desc), then the rows that did not run, with their status."""
    ok = results[results["status"] == "ok"].sort_values("sharpe", ascending=False)
    cols = ["selection", "engine", "profile", "rebalance", "simulator", "sharpe", "cagr",
            "volatility", "max_drawdown", "turnover", "costs"]
    extra = [c for c in ("dsr", "pbo", "friction_decay", "temporal_fragility") if c in results]
    board = ok[cols + extra]
    return board.head(top) if top else board
