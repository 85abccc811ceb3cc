"""One writer per run directory: `run_dir_lock(out_dir)`.

    with run_dir_lock(out):          # before anything is written into `out`
        ... run the tournament ...

An exclusive, non-blocking fcntl.flock on `<out_dir>/.tournament.lock`. The kernel drops the
lock when its holder exits for any reason (SIGKILL included), so a crashed run never leaves a
stale lock; the file itself (holding the last holder's PID, for the message) may remain.
Re-entrant within one process (the CLI and the flow may both take it). A second run on
the same directory gets a ConfigError (CLI exit code 2, nothing written).
Result storage shared by concurrent runs is protected separately (per-key locks in tasks.common).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from tournament.errors import ConfigError

LOCK_FILE = ".tournament.lock"
_HELD: dict[str, int] = {}     # resolved lock path -> depth (re-entrant within one process)


@contextmanager
def run_dir_lock(out_dir: str | os.PathLike):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    held = str(path.resolve())
    if held in _HELD:              # the CLI holds it and the flow asks again: same run
        _HELD[held] += 1
        try:
            yield path
        finally:
            _HELD[held] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise ConfigError(f"run directory error: another tournament is writing to "
                              f"{out.resolve()} (pid {holder}); wait for it to finish or use "
                              "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[held] = 1
        try:
            yield path
        finally:
            _HELD.pop(held, None)
    finally:
        os.close(fd)      # closing the descriptor releases the flock
