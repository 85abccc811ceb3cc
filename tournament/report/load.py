"""A run directory's files, as the report reads them: every file optional."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..schema import CELLS, MANIFEST, RESULTS, RETURNS, STATE, RunDir


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run directory's frames and JSON files. A missing or unreadable file is empty
    ({} / an empty frame) so a partial run still gets a report, which then says what is
    missing (e.g. "manifest.json missing", "no results")."""
    run = RunDir(run_dir)
    return {"dir": run.path, "results": run.frame(RESULTS), "returns": run.frame(RETURNS),
            "cells": run.frame(CELLS),
            "manifest": run.json(MANIFEST, default={}, unreadable="default"),
            "state": run.json(STATE, default={}, unreadable="default")}
