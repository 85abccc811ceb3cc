"""Shared task plumbing: explicit cache keys, locked cache policies and an execution log.

Concurrency: every task's cache policy is SERIALIZABLE with a file lock per cache key, so two
tournaments writing to the same result storage at once compute each chunk once (the second
waits for the lock, then finds the result Cached). The lock files live next to the results
(`<result storage>/.locks/`; for an fsspec URL, a local directory named after it), derived at
run time from the task's result storage (`with_storage` makes it explicit). A lock whose
holder process died (SIGKILL, OOM) is stale and taken over, so a killed run never blocks its
rerun; holders on another host are trusted until a lease expires (TOURNAMENT_LOCK_LEASE s).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.locking.filesystem import FileSystemLockManager

LOCKS_DIR = ".locks"
DEFAULT_LEASE_SECONDS = 3600.0


def key_from_parameters(context, parameters) -> str:
    """cache_key_fn: the key was computed by the flow from named parts (never from arrays).

    Under test-only fault injection (TOURNAMENT_FAULTS, see tournament.faults) the rules are
    part of the key, so injected failures never poison the cache of normal runs."""
    key = parameters["cache_key"]
    faults = os.environ.get("TOURNAMENT_FAULTS", "").strip()
    if faults:
        key += "-faults-" + hashlib.sha256(faults.encode()).hexdigest()[:10]
    return key


# ----------------------------------------------------------------------------- locking
def lock_dir_for(location: str | os.PathLike) -> Path:
    """Where the per-key lock files of a result storage live."""
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        digest = hashlib.sha256(location.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "tournament-locks" / digest
    return Path(location.removeprefix("file://")).expanduser().resolve() / LOCKS_DIR


def _storage_location(storage) -> str | None:
    basepath = getattr(storage, "basepath", None)
    return str(basepath) if basepath else None


def _this_host() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}:{boot}"


def _start_time(pid: int) -> str | None:
    """Process start time (clock ticks since boot) to tell a reused PID apart; Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]   # zombie = dead


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_started = _start_time(pid)
    if Path("/proc").is_dir() and now_started is None:
        return False                           # zombie or vanished
    return started is None or now_started is None or now_started == started


class StorageLockManager(FileSystemLockManager):
    """FileSystemLockManager that (1) finds its directory from the running task's result
    storage when none is given, (2) records holder PID/host/start time and treats a lock of a
    dead process as stale, (3) tolerates a lock file caught half-written."""

    def __init__(self, lock_files_directory: Path | None = None,
                 lease_seconds: float | None = None) -> None:
        self._explicit_dir = (None if lock_files_directory is None
                              else Path(lock_files_directory).expanduser().resolve())
        self._locks = {}
        self.lease_seconds = lease_seconds

    @property
    def lock_files_directory(self) -> Path:     # type: ignore[override]
        if self._explicit_dir is not None:
            return self._explicit_dir
        from prefect.context import TaskRunContext
        ctx = TaskRunContext.get()
        location = _storage_location(ctx.result_store.result_storage) if (
            ctx and ctx.result_store) else None
        return lock_dir_for(location or ".tournament-cache/results")

    @lock_files_directory.setter
    def lock_files_directory(self, value) -> None:
        self._explicit_dir = None if value is None else Path(value).expanduser().resolve()

    def _lease(self) -> float:
        if self.lease_seconds is not None:
            return self.lease_seconds
        return float(os.environ.get("TOURNAMENT_LOCK_LEASE", DEFAULT_LEASE_SECONDS))

    def _get_lock_info(self, key: str, use_cache: bool = True):
        if use_cache and (info := self._locks.get(key)) is not None:
            return info
        path = self._lock_path_for_key(key)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            partial = not isinstance(info, dict)
        except ValueError:
            partial = True
        if partial:   # created but not yet written: locked by someone, unless long abandoned
            return {"holder": "", "expiration": None, "path": path, "partial": True,
                    "mtime": mtime}
        from prefect.types._datetime import parse_datetime
        info["path"] = path
        exp = info.get("expiration")
        info["expiration"] = parse_datetime(exp) if exp else None
        self._locks[key] = info
        return info

    async def _aget_lock_info(self, key: str, use_cache: bool = True):
        return self._get_lock_info(key, use_cache=use_cache)

    def _stale(self, info: dict) -> bool:
        from prefect.types._datetime import now
        if info.get("partial"):
            return time.time() - info.get("mtime", time.time()) > 30
        exp = info.get("expiration")
        if exp is not None and exp < now("UTC"):
            return True
        pid = info.get("pid")
        if pid is not None and info.get("host") == _this_host():
            return not _alive(int(pid), info.get("started"))
        return False

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        info = self._get_lock_info(key, use_cache=use_cache)
        if info is None:
            return False
        if self._stale(info):
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return True

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        from prefect.types._datetime import now
        directory = self.lock_files_directory
        directory.mkdir(parents=True, exist_ok=True)
        path = directory.joinpath(key).with_suffix(".lock")
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            if self.is_locked(key) and not self.is_lock_holder(key, holder):
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.01)
                if not self.wait_for_lock(key, remaining):
                    return False
            expiration = now("UTC") + timedelta(seconds=hold_timeout or self._lease())
            pid = os.getpid()
            info = {"holder": holder, "expiration": str(expiration), "pid": pid,
                    "host": _this_host(), "started": _start_time(pid)}
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.is_lock_holder(key, holder):
                    return True
                if deadline is not None and time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(info))
            self._locks[key] = {**info, "expiration": expiration, "path": path}
            return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        info = self._get_lock_info(key, use_cache=False)
        if info is not None and info.get("holder") == holder:
            Path(info["path"]).unlink(missing_ok=True)
        self._locks.pop(key, None)


def locked_policy(lock_files_directory: Path | None = None) -> CacheKeyFnPolicy:
    """key_from_parameters + SERIALIZABLE isolation + per-key file locks."""
    return CacheKeyFnPolicy(cache_key_fn=key_from_parameters).configure(
        isolation_level="SERIALIZABLE",
        lock_manager=StorageLockManager(lock_files_directory))


def with_storage(task, storage, location: str | os.PathLike, refresh: bool):
    """`task` writing results to `storage` (saved block for `location`), its locks in
    `lock_dir_for(location)`; `refresh` recomputes and overwrites cached results."""
    return task.with_options(result_storage=storage, refresh_cache=refresh,
                             cache_policy=locked_policy(lock_dir_for(location)))


# ----------------------------------------------------------------------------- audits
def log_execution(kind: str, cache_key: str, count: int) -> None:
    """Append one line per real execution (not cache hit) when TOURNAMENT_EXECUTION_LOG is set.

    Tests and benchmarks count solver calls and simulations this way across Ray workers.
    """
    path = os.environ.get("TOURNAMENT_EXECUTION_LOG")
    if not path:
        return
    line = json.dumps({"kind": kind, "key": cache_key, "count": count, "pid": os.getpid(),
                       "node": _ray_node_id(), "time": time.time()})
    with open(path, "a") as fh:   # O_APPEND lines < PIPE_BUF are atomic on Linux
        fh.write(line + "\n")


def injected_delay() -> None:
    """Sleep TOURNAMENT_TASK_DELAY seconds at task start (fault-injection tests use it to
    kill a run mid-stage deterministically). Unset in normal runs."""
    delay = float(os.environ.get("TOURNAMENT_TASK_DELAY", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def _ray_node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None
