"""Dated run directories under an output root, a `latest` link and retention (issue 15).

    runs/nightly/
      2026-11-30T02-00-00Z/     one directory per run, named by its stamp (UTC, sortable)
      2026-12-01T02-00-00Z/
      latest -> 2026-12-01T02-00-00Z     the newest COMPLETE run directory

A run directory is complete when its tournament_state.json says it finished
(RUN_FINISHED: completed, with or without failed strategies): every output is written.
`latest` is a relative symlink replaced atomically (a new link, then a rename), so a reader
never finds it missing or pointing at a half-written run. Only names that parse as stamps
count as run directories: nothing else under the root is ever moved or removed.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .schema import RUN_FINISHED, STATE

LATEST = "latest"
STAMP_FORMAT = "%Y-%m-%dT%H-%M-%SZ"     # ':' is not portable in file names


def run_stamp(when: datetime) -> str:
    """`2026-12-01T02-00-00Z` for a moment (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime(STAMP_FORMAT)


def is_run_stamp(name: str) -> bool:
    try:
        datetime.strptime(name, STAMP_FORMAT)
    except ValueError:
        return False
    return True


def dated_run_dirs(root: str | Path) -> list[Path]:
    """The run directories under `root`, oldest first (stamps sort as times)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.is_symlink() and is_run_stamp(p.name))


def is_complete(run_dir: str | Path) -> bool:
    try:
        state = json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return False
    return state.get("status") in RUN_FINISHED


def point_latest(root: str | Path) -> Path | None:
    """Point `root/latest` at the newest complete run directory (atomically). Returns it,
    or None when no run directory is complete (then `latest` is left as it is)."""
    root = Path(root)
    complete = [p for p in dated_run_dirs(root) if is_complete(p)]
    if not complete:
        return None
    newest = complete[-1]
    tmp = root / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(newest.name)          # relative: the root can move or be mounted elsewhere
    os.replace(tmp, root / LATEST)
    return newest


def latest_target(root: str | Path) -> Path | None:
    link = Path(root) / LATEST
    return (Path(root) / os.readlink(link)) if link.is_symlink() else None


def prune_run_dirs(root: str | Path, keep: int | None, *, spare: Path | None = None
                   ) -> list[Path]:
    """Remove all but the newest `keep` run directories (None: keep all). The one `latest`
    points at and `spare` (the run doing the pruning) are never removed. Returns the removed."""
    if keep is None:
        return []
    if keep < 1:
        raise ValueError(f"keep_run_dirs must be at least 1, not {keep}")
    protected = {p.resolve() for p in (latest_target(root), spare) if p is not None}
    removed = []
    for old in dated_run_dirs(root)[:-keep]:
        if old.resolve() not in protected:
            shutil.rmtree(old)
            removed.append(old)
    return removed
