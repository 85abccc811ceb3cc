"""A run directory's files, as the report reads them: every file optional."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run directory's frames and JSON files. A missing or unreadable file is empty
    ({} / an empty frame) so a partial run still gets a report, which then says what is
    missing (e.g. "manifest.json missing", "no results")."""
    run = Path(run_dir)

    def frame(name: str) -> pd.DataFrame:
        path = run / name
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    def js(name: str) -> dict:
        path = run / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    return {"dir": run, "results": frame("results.parquet"), "returns": frame("returns.parquet"),
            "cells": frame("cells.parquet"), "manifest": js("manifest.json"),
            "state": js("tournament_state.json")}
