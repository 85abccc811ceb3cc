"""The tournament's vocabulary, defined once: key columns, statuses, run-directory files.

Every module names a cell, a strategy or a results row by these key lists, compares statuses
with these constants and opens run-directory files through `RunDir` (a test reads the source
and checks that no other module spells them out). Key lists are lists, not tuples, because
pandas reads `frame[("a", "b")]` as one column named by a tuple. Importing this module
imports neither numpy nor pandas.

A run directory:

    weights_cube.pkl        the cube (the spec's format), as Stage 1 produced it
    weights_cube.parquet    the cube's weights, long form (cell keys + asset + weight)
    cells.parquet           one row per cell: status, reason, solver, timing
    results.parquet         one row per (selection, engine, profile, rebalance, simulator)
    returns.parquet         daily net returns, long form (date + result keys + net_return)
    manifest.json           config, data fingerprint, versions, timings, confidence settings
    cache_keys.json         {cache key: its named parts} (tournament compare explains them)
    tournament_state.json   progress while a run is going, summary when it is done
    ledger.jsonl            the audit ledger (tournament.ledger)
    report.html             the self-contained report
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:      # pandas is imported when a frame is read: `--plan` stays light
    import pandas as pd

# ----------------------------------------------------------------------------- keys
STRATEGY_KEYS = ["selection", "engine", "profile"]            # a strategy's weights
CELL_KEYS = ["window_start", *STRATEGY_KEYS]                    # one optimisation
PATH_KEYS = [*STRATEGY_KEYS, "rebalance"]                       # a distinct traded strategy
RESULT_KEYS = [*PATH_KEYS, "simulator"]                         # one results row

# The baselines every tournament adds: raw-pool equal weight (a real engine, solved in
# Stage 1) and buy-and-hold of the data's benchmark index (simulated in Stage 2).
BASELINE_ENGINE = "baseline"
BASELINE_KEY = ("all", BASELINE_ENGINE, "equal_weight")
BENCHMARK_KEY = ("benchmark", BASELINE_ENGINE, "buy_and_hold")
BENCHMARK_SELECTION = BENCHMARK_KEY[0]

# ----------------------------------------------------------------------------- statuses
OK, FAILED, UNSUPPORTED, FALLBACK = "ok", "failed", "unsupported", "fallback"
STATUSES = (OK, FALLBACK, FAILED, UNSUPPORTED)
TRADABLE = (OK, FALLBACK)      # statuses whose weights a strategy can trade
# A whole run's end status (tournament_state.json "status"): both mean every output is written.
RUN_COMPLETED, RUN_COMPLETED_WITH_FAILURES = "completed", "completed_with_failures"
RUN_FINISHED = (RUN_COMPLETED, RUN_COMPLETED_WITH_FAILURES)

# ----------------------------------------------------------------------------- files
CUBE_PICKLE = "weights_cube.pkl"
CUBE_WEIGHTS = "weights_cube.parquet"
CELLS = "cells.parquet"
RESULTS = "results.parquet"
RETURNS = "returns.parquet"
MANIFEST = "manifest.json"
CACHE_KEYS = "cache_keys.json"
STATE = "tournament_state.json"
LEDGER = "ledger.jsonl"
REPORT_HTML = "report.html"
# In a local result storage: a run of this config on this data completed (flows.plan.run_digest).
STORED_RUN_MARKER = "tournament-run-{digest}.stored"


# ----------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | Path, write: Callable[[Path], None], *,
                 durable: bool = False) -> None:
    """Write through a temp file in the same directory, then rename: readers never see half
    a file. `write(tmp_path)` writes the content; `durable` also fsyncs it (~10 ms here),
    which a summary rewritten after every chunk can do without."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(
        json.dumps(obj, indent=2, sort_keys=True, default=str)), durable=durable)


def write_parquet(path: str | Path, frame: "pd.DataFrame") -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_bytes(path: str | Path, blob: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))


# ----------------------------------------------------------------------------- run directory
class RunDir:
    """Reads and writes one run directory. Readers choose what a missing file means:
    `required=True` raises FileNotFoundError naming the file, otherwise the caller's
    `default` (an empty frame, {} or None) stands for it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def require_dir(self) -> "RunDir":
        if not self.path.is_dir():
            raise FileNotFoundError(f"run directory not found: {self.path}")
        return self

    # reading
    def frame(self, name: str, *, required: bool = False, default: Any = None,
              columns: list[str] | None = None):
        import pandas as pd
        if not self.has(name):
            if required:
                raise FileNotFoundError(f"{self.path / name}: missing")
            return pd.DataFrame() if default is None else default
        return pd.read_parquet(self.path / name, columns=columns)

    def json(self, name: str, *, required: bool = False, default: Any = None,
             unreadable: str = "raise"):
        """A JSON file. `unreadable="default"` treats a corrupt file like a missing one
        (the report of a half-written run); the default raises, naming the file."""
        if not self.has(name):
            if required:
                raise FileNotFoundError(f"{self.path / name}: missing")
            return default
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError) as exc:
            if unreadable == "default":
                return default
            raise ValueError(f"{self.path / name}: unreadable JSON ({exc})") from None

    # writing
    def write_json(self, name: str, obj: Any, *, durable: bool = True) -> None:
        write_json(self.path / name, obj, durable=durable)

    def write_frame(self, name: str, frame: "pd.DataFrame") -> None:
        write_parquet(self.path / name, frame)

    def update_json(self, name: str, **fields: Any) -> dict[str, Any]:
        """Rewrite a JSON file with `fields` replaced (e.g. the manifest's final timings)."""
        data = self.json(name, required=True)
        data.update(fields)
        self.write_json(name, data)
        return data
