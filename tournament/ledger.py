"""Append-only, hash-chained audit ledger (`ledger.jsonl` in the run directory).

One JSON object per line. Every entry carries

  seq     0, 1, 2, ... (position in the file)
  event   "intent" | "outcome" | "seal"
  kind    "cell" (Stage 1 cell) | "simulation" (Stage 2 row) | "run" (seal only)
  key     what the entry is about (see `cell_key` / `simulation_key`)
  status  outcomes only: ok | failed | unsupported | fallback (a cell that could not be
          solved and was resolved by the declared `on_infeasible` policy)
  detail  free JSON-able mapping
  ts      UTC ISO timestamp
  prev    `hash` of the previous entry (GENESIS for the first one)
  hash    sha256 of the entry's canonical JSON without `hash`
          (json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))

Editing, deleting or reordering any line breaks the chain (the edited line's hash, or the
next line's `prev`, no longer matches). A deleted *tail* cannot break a chain, so a complete
write ends with a `seal` entry counting the intents/outcomes since the previous seal; an
unsealed ledger is reported as incomplete (a crashed run or a truncated file). For
protection against truncation back to an earlier seal, store `Ledger.head` (the last hash)
elsewhere, e.g. in manifest.json, and pass it to `verify_ledger(expected_head=...)`.

The invariant checked by `verify_ledger`: every intent is followed by exactly one outcome of
the same (kind, key) and every outcome answers a pending intent, so
``intents == ok + failed + unsupported + fallback``. Counts of `fallback` appear only when a
run has one, so ledgers written before that status existed still verify.

Single writer: appends open the file O_APPEND, take an exclusive flock, write and fsync
(`Ledger.batch()` groups many entries into one write + fsync); existing lines are never
rewritten. A torn last line (crash mid-append) makes `Ledger()` refuse to
append rather than repair it.

Kept in one module (~400 lines) on purpose: the format, its writer and its verifier must
change together, and reading them side by side is how a reviewer checks that they agree.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .schema import FAILED, FALLBACK, OK, RESULT_KEYS, STRATEGY_KEYS, UNSUPPORTED

GENESIS = "0" * 64
KINDS = ("cell", "simulation")
CORE_STATUSES = (OK, FAILED, UNSUPPORTED)     # an intent's outcome (a fallback cell is ok)
STATUSES = (*CORE_STATUSES, FALLBACK)

__all__ = ["Ledger", "LedgerError", "LedgerReport", "verify_ledger", "write_ledger_for_run",
           "cell_key", "simulation_key", "entry_hash", "GENESIS"]


class LedgerError(RuntimeError):
    pass


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str, allow_nan=True)


def entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def _jsonable(detail: dict | None) -> dict:
    # Round-trip so the hash is computed on exactly what a reader will parse back.
    return json.loads(canonical_json(dict(detail or {})))


class Ledger:
    """Appender for one ledger file (created on first append)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.head = GENESIS
        self.seq = 0
        self._segment = _empty_counts()     # counts since the last seal
        self._buffer: list[str] | None = None
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                raise LedgerError(f"{self.path}: last line is incomplete (torn write); "
                                  "refusing to append")
            entry = None
            for line in data.splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LedgerError(f"{self.path}: line {self.seq + 1} is not JSON "
                                      f"({exc})") from None
                self.seq += 1
                self._count(entry)
            if entry is not None:
                if entry.get("hash") != entry_hash(entry):
                    raise LedgerError(f"{self.path}: last entry's hash does not match")
                self.head = entry["hash"]

    def _count(self, entry: dict) -> None:
        event = entry.get("event")
        if event == "seal":
            self._segment = _empty_counts()
        elif event == "intent":
            self._segment["intents"] += 1
        elif event == "outcome":
            self._segment["outcomes"] += 1
            status = entry.get("status")
            self._segment[status] = self._segment.get(status, 0) + 1

    @contextmanager
    def batch(self):
        """Buffer appends and write them with one write + fsync at the end of the block."""
        self._buffer = []
        try:
            yield self
        finally:
            lines, self._buffer = self._buffer, None
            if lines:
                self._write("".join(lines))

    # ------------------------------------------------------------------ writing
    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                blob = text.encode("utf-8")
                while blob:
                    blob = blob[os.write(fd, blob):]
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _append(self, entry: dict) -> dict:
        entry = {**entry, "seq": self.seq, "ts": datetime.now(timezone.utc).isoformat(),
                 "prev": self.head}
        entry["hash"] = entry_hash(entry)
        line = canonical_json(entry) + "\n"
        if self._buffer is not None:
            self._buffer.append(line)
        else:
            self._write(line)
        self.head = entry["hash"]
        self.seq += 1
        self._count(entry)
        return entry

    def intent(self, kind: str, key: str, detail: dict | None = None) -> dict:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self._append({"event": "intent", "kind": kind, "key": str(key),
                             "detail": _jsonable(detail)})

    def outcome(self, kind: str, key: str, status: str, detail: dict | None = None) -> dict:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        return self._append({"event": "outcome", "kind": kind, "key": str(key),
                             "status": status, "detail": _jsonable(detail)})

    def seal(self, detail: dict | None = None) -> dict:
        """Close a batch: records the intent/outcome counts since the previous seal."""
        return self._append({"event": "seal", "kind": "run", "key": "seal",
                             "detail": {**_jsonable(detail), "counts": dict(self._segment)}})


def _empty_counts() -> dict:
    return {"intents": 0, "outcomes": 0, **{s: 0 for s in CORE_STATUSES}}


# ---------------------------------------------------------------------- verification
@dataclass
class LedgerReport:
    path: str
    n_entries: int = 0
    intents: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {s: 0 for s in CORE_STATUSES})
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    chain_ok: bool = True
    balanced: bool = True          # intents == ok + failed + unsupported, pairwise
    sealed: bool = False           # last entry is a seal
    head: str = GENESIS
    errors: list[str] = field(default_factory=list)
    require_seal: bool = True

    @property
    def ok(self) -> bool:
        return (self.chain_ok and self.balanced and not self.errors
                and (self.sealed or not self.require_seal))

    def summary(self) -> str:
        state = "OK" if self.ok else "FAILED"
        out = (f"ledger {self.path}: {state}; {self.n_entries} entries, {self.intents} intents, "
               + ", ".join(f"{k} {v}" for k, v in self.outcomes.items())
               + f"; chain {'intact' if self.chain_ok else 'BROKEN'}"
               + f"; {'sealed' if self.sealed else 'NOT sealed'}")
        return "\n".join([out, *(f"  - {e}" for e in self.errors[:20])])


def verify_ledger(path: str | Path, *, require_seal: bool = True,
                  expected_head: str | None = None) -> LedgerReport:
    """Check the hash chain, the seq numbers, the seals and intent/outcome pairing."""
    path = Path(path)
    rep = LedgerReport(str(path), require_seal=require_seal)
    if not path.exists():
        rep.errors.append("ledger file does not exist")
        rep.chain_ok = False
        return rep
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        rep.errors.append("last line is incomplete (torn write)")
    prev = GENESIS
    pending: Counter = Counter()
    segment = _empty_counts()
    last_event = None
    for lineno, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            rep.errors.append(f"line {lineno}: blank line")
            rep.chain_ok = False
            continue
        try:
            e = json.loads(raw)
        except json.JSONDecodeError as exc:
            rep.errors.append(f"line {lineno}: not JSON ({exc})")
            rep.chain_ok = False
            continue
        rep.n_entries += 1
        if e.get("hash") != entry_hash(e):
            rep.chain_ok = False
            rep.errors.append(f"line {lineno}: hash mismatch (entry edited)")
        if e.get("prev") != prev:
            rep.chain_ok = False
            rep.errors.append(f"line {lineno}: prev does not match the previous entry's hash "
                              "(entry deleted, inserted or reordered)")
        if e.get("seq") != lineno - 1:
            rep.chain_ok = False
            rep.errors.append(f"line {lineno}: seq {e.get('seq')} != {lineno - 1}")
        prev = e.get("hash")
        event, kind, key = e.get("event"), e.get("kind"), e.get("key")
        last_event = event
        if event == "seal":
            counts = (e.get("detail") or {}).get("counts")
            if counts != segment:
                rep.errors.append(f"line {lineno}: seal counts {counts} != entries {segment}")
            if sum(pending.values()):
                rep.balanced = False
                rep.errors.append(f"line {lineno}: seal with {sum(pending.values())} intents "
                                  "still pending")
            segment = _empty_counts()
            continue
        if kind not in KINDS:
            rep.errors.append(f"line {lineno}: unknown kind {kind!r}")
            continue
        bk = rep.by_kind.setdefault(kind, {"intents": 0, **{s: 0 for s in CORE_STATUSES}})
        if event == "intent":
            rep.intents += 1
            bk["intents"] += 1
            segment["intents"] += 1
            if pending[(kind, key)]:
                rep.balanced = False
                rep.errors.append(f"line {lineno}: second intent for {kind} {key} before its "
                                  "outcome")
            pending[(kind, key)] += 1
        elif event == "outcome":
            status = e.get("status")
            if status not in STATUSES:
                rep.errors.append(f"line {lineno}: unknown status {status!r}")
                continue
            rep.outcomes[status] = rep.outcomes.get(status, 0) + 1
            bk[status] = bk.get(status, 0) + 1
            segment["outcomes"] += 1
            segment[status] = segment.get(status, 0) + 1
            if pending[(kind, key)] <= 0:
                rep.balanced = False
                rep.errors.append(f"line {lineno}: outcome for {kind} {key} without an intent")
            else:
                pending[(kind, key)] -= 1
        else:
            rep.errors.append(f"line {lineno}: unknown event {event!r}")
    open_intents = [k for k, v in pending.items() if v > 0]
    if open_intents:
        rep.balanced = False
        kind, key = open_intents[0]
        rep.errors.append(f"{len(open_intents)} intents without an outcome (first: {kind} {key})")
    if rep.intents != sum(rep.outcomes.values()):
        rep.balanced = False
    rep.sealed = last_event == "seal"
    rep.head = prev
    if require_seal and not rep.sealed:
        rep.errors.append("ledger is not sealed (incomplete run or truncated tail)")
    if expected_head is not None and rep.head != expected_head:
        rep.chain_ok = False
        rep.errors.append(f"head {rep.head[:12]} != expected {expected_head[:12]} "
                          "(entries appended or removed since)")
    return rep


# ---------------------------------------------------------------------- run recording
def cell_key(row) -> str:
    return (f"{pd.Timestamp(row['window_start']).date()}/{row['selection']}/{row['engine']}/"
            f"{row['profile']}")


def simulation_key(row) -> str:
    return "/".join(str(row[k]) for k in RESULT_KEYS)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if x == x else None   # NaN -> null


def write_ledger_for_run(path: str | Path, cube, results: pd.DataFrame, *,
                         run_id: str | None = None, cells: bool = True,
                         detail: dict | None = None) -> str:
    """Record one intent + one outcome per Stage 1 cell and per results row; seal; return
    the head hash (store it in the manifest to detect later truncation). The entries form
    one new sealed segment appended after any earlier ones (a rerun into the same run
    directory appends; nothing is rewritten).

    * `cells=False`: no cell entries (Stage 1 was not run: `tournament simulate` adds
      simulations to an existing cube), and `results` holds only the rows this step wrote.
      The seal's detail says so (`cells: 0`, plus `detail`, e.g. the simulated pairs).

    * Cells: kind "cell", key "YYYY-MM-DD/selection/engine/profile", outcome status = the
      cell's status, detail = reason, solver, solve_seconds, n_selected.
    * Simulations: kind "simulation", key "selection/engine/profile/rebalance/simulator".
      Rows actually simulated (their strategy is ok in the cube, plus the benchmark) get
      their simulator status. Rows whose status comes from the cube (strategy not ok, never
      simulated) are recorded too, as an intent + outcome with the cube's status
      (failed/unsupported) and ``detail.skipped = true, detail.source = "cube"``, so the
      simulation entries match results.parquet row for row and the invariant
      intents == ok + failed + unsupported holds per kind.

    This records after the fact; a live flow can call `Ledger.intent` before submitting and
    `Ledger.outcome` on completion instead, then `Ledger.seal`.
    """
    ledger = Ledger(path)
    with ledger.batch():
        _record_run(ledger, cube, results, run_id, cells=cells, seal_detail=detail)
    return ledger.head


def _record_run(ledger: Ledger, cube, results: pd.DataFrame, run_id: str | None, *,
                cells: bool = True, seal_detail: dict | None = None) -> None:
    recorded = cube.cells if cells else cube.cells.iloc[0:0]
    for row in recorded.to_dict("records"):
        key = cell_key(row)
        ledger.intent("cell", key, {"window_start": str(pd.Timestamp(row["window_start"]).date()),
                                    "window_end": str(pd.Timestamp(row["window_end"]).date()),
                                    "selection": row["selection"], "engine": row["engine"],
                                    "profile": row["profile"]})
        ledger.outcome("cell", key, row["status"],
                       {"reason": row["reason"], "solver": row["solver"],
                        "solver_status": row.get("solver_status", ""),
                        "policy": row.get("policy", ""),
                        "solve_seconds": _num(row["solve_seconds"]),
                        "n_selected": int(row["n_selected"])})
    st = cube.strategies()
    not_ok = {tuple(x) for x in st.loc[st["status"] != OK,
                                       STRATEGY_KEYS].itertuples(index=False)}
    for row in results.to_dict("records"):
        key = simulation_key(row)
        from_cube = (row["selection"], row["engine"], row["profile"]) in not_ok
        detail = {k: row[k] for k in RESULT_KEYS}
        if from_cube:
            detail.update(skipped=True, source="cube")
        ledger.intent("simulation", key, detail)
        out = {"reason": row.get("reason", "") or ""}
        if from_cube:
            out.update(skipped=True, source="cube")
        else:
            out.update(sharpe=_num(row.get("sharpe")), final_equity=_num(row.get("final_equity")),
                       sim_seconds=_num(row.get("sim_seconds")))
        ledger.outcome("simulation", key, row["status"], out)
    ledger.seal({**(seal_detail or {}), "run_id": run_id, "cells": int(len(recorded)),
                 "simulations": int(len(results))})
