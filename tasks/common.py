"""Shared task plumbing: explicit cache keys, locked cache policies and an execution log.

Concurrency: every task's cache policy is SERIALIZABLE with a lock file per cache key, so two
tournaments writing to the same result storage at once compute each chunk once (the second
waits for the lock, then finds the result Cached). The lock files live next to the results,
in `<result storage>/.locks/`, written through the storage's own filesystem: the local disk
for a path or LocalFileSystem block, fsspec (exclusive create, mode "xb") for a URL or
RemoteFileSystem block. So every host that can see the results sees the locks too; nothing
lives in a node's temp directory. The store is derived at run time from the task's result
storage (`lock_store_for`). A lock whose holder process died (SIGKILL, OOM) on this host is
stale and taken over, so a killed run never blocks its rerun; holders on another host are
trusted until a lease expires (TOURNAMENT_LOCK_LEASE s).
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.locking.filesystem import FileSystemLockManager

LOCKS_DIR = ".locks"
DEFAULT_LEASE_SECONDS = 3600.0


def key_from_parameters(context, parameters) -> str:
    """cache_key_fn: the key was computed by the flow from named parts (never from arrays);
    flows.plan.stored_key adds the test-only fault rules when they are set."""
    from flows.plan import stored_key
    return stored_key(parameters["cache_key"])


# ----------------------------------------------------------------------------- locking
class LockStoreError(RuntimeError):
    """The result storage cannot hold cache locks every host sees (one line)."""


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class LocalLockStore:
    """Lock files in a local (or NFS-mounted) directory: O_CREAT | O_EXCL."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(str(directory).removeprefix("file://")).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalLockStore({str(self.directory)!r})"

    def path(self, key: str) -> str:
        return str(self.directory.joinpath(key).with_suffix(".lock"))

    def create(self, key: str, data: bytes) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True

    def read(self, key: str) -> tuple[bytes, float] | None:
        path = Path(self.path(key))
        try:
            return path.read_bytes(), path.stat().st_mtime
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        Path(self.path(key)).unlink(missing_ok=True)


class FsspecLockStore:
    """Lock files through an fsspec filesystem (the result storage's own: s3://, gs://, ...).
    Creation is exclusive (`open(path, "xb")`); `check_exclusive` verifies the filesystem
    honours that before a run relies on it."""

    def __init__(self, fs, root: str) -> None:
        self.fs, self.root = fs, root.rstrip("/")

    def __repr__(self) -> str:
        return f"FsspecLockStore({self.root!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}.lock"

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except (FileExistsError, NotImplementedError):
            pass
        try:
            with self.fs.open(self.path(key), "xb") as fh:
                fh.write(data)
        except FileExistsError:
            return False
        return True

    def read(self, key: str) -> tuple[bytes, float] | None:
        path = self.path(key)
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            mtime = self.fs.modified(path).timestamp()
        except Exception:   # noqa: BLE001 - no mtime on this filesystem: treat as fresh
            mtime = time.time()
        return raw, mtime

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            pass

    def check_exclusive(self) -> None:
        """Refuse a filesystem whose "xb" silently overwrites (locks would not exclude)."""
        import uuid
        key = f".probe-{uuid.uuid4().hex}"
        try:
            if not self.create(key, b"1"):
                raise LockStoreError(f"cannot create lock files under {self.root}")
            try:
                second = self.create(key, b"2")
            except (ValueError, NotImplementedError, TypeError) as exc:
                second = exc
            if second is not False:
                raise LockStoreError(
                    f"result storage {self.root.rsplit('/', 1)[0]} cannot create files "
                    "exclusively (fsspec mode 'xb'), so its cache locks would not exclude other "
                    "hosts; use a filesystem that supports it (e.g. s3fs >= 2025.7) or a "
                    "shared path")
        finally:
            self.delete(key)


def lock_dir_for(location: str | os.PathLike) -> Path:
    """Where the per-key lock files of a LOCAL result storage path live."""
    location = str(location)
    if is_url(location):
        raise LockStoreError(f"{location} is not a local path; use lock_store_for()")
    return Path(location.removeprefix("file://")).expanduser().resolve() / LOCKS_DIR


def lock_store_for(storage) -> LocalLockStore | FsspecLockStore:
    """The lock store next to a result storage: a path, an fsspec URL, or a Prefect
    LocalFileSystem / RemoteFileSystem block. Anything else is refused (one line)."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem
    if isinstance(storage, (str, os.PathLike)):
        location = str(storage)
        if not is_url(location):
            return LocalLockStore(lock_dir_for(location))
        storage = RemoteFileSystem(basepath=location)
    if isinstance(storage, LocalFileSystem):
        return LocalLockStore(lock_dir_for(storage.basepath or "."))
    if isinstance(storage, RemoteFileSystem):
        if not is_url(storage.basepath):
            return LocalLockStore(lock_dir_for(storage.basepath))
        return FsspecLockStore(storage.filesystem, f"{storage.basepath.rstrip('/')}/{LOCKS_DIR}")
    raise LockStoreError(
        f"result storage block {type(storage).__name__} has no path the cache locks can use; "
        "use a local-file-system or remote-file-system block (basepath s3://..., gs://...), "
        "a path or an fsspec URL")


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
    """The lock holder still runs: its PID is alive (not a zombie) and, where known, it is
    the same process (same start time), not a reused PID."""
    from flows.services import pid_alive
    if not pid_alive(pid):
        return False
    now_started = _start_time(pid)
    return started is None or now_started is None or now_started == started


class StorageLockManager(FileSystemLockManager):
    """Per-key lock files that (1) live next to the running task's result storage, through
    its own filesystem, when no directory is given (`lock_store_for`), (2) record holder
    PID/host/start time, a lock of a dead process on this host being stale, (3) tolerate a
    lock file caught half-written."""

    def __init__(self, lock_files_directory: Path | None = None,
                 lease_seconds: float | None = None) -> None:
        self._explicit_dir = (None if lock_files_directory is None
                              else Path(lock_files_directory).expanduser().resolve())
        self._locks = {}
        self.lease_seconds = lease_seconds

    def store(self) -> LocalLockStore | FsspecLockStore:
        if self._explicit_dir is not None:
            return LocalLockStore(self._explicit_dir)
        from prefect.context import TaskRunContext
        ctx = TaskRunContext.get()
        storage = ctx.result_store.result_storage if ctx and ctx.result_store else None
        if storage is None:
            raise LockStoreError("no result storage for this task: cache locks need one "
                                 "(the tournament flow always sets it)")
        return lock_store_for(storage)

    @property
    def lock_files_directory(self) -> Path:     # type: ignore[override]
        store = self.store()
        if not isinstance(store, LocalLockStore):
            raise LockStoreError(f"locks live in {store.root}, not in a local directory")
        return store.directory

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
        found = self.store().read(key)
        if found is None:
            return None
        raw, mtime = found
        try:
            info = json.loads(raw)
            partial = not isinstance(info, dict)
        except ValueError:
            partial = True
        if partial:   # created but not yet written: locked by someone, unless long abandoned
            return {"holder": "", "expiration": None, "partial": True, "mtime": mtime}
        from prefect.types._datetime import parse_datetime
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
            self.store().delete(key)
            self._locks.pop(key, None)
            return False
        return True

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        from prefect.types._datetime import now
        store = self.store()
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
            if not store.create(key, json.dumps(info).encode()):
                if self.is_lock_holder(key, holder):
                    return True
                if deadline is not None and time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
                continue
            self._locks[key] = {**info, "expiration": expiration}
            return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        info = self._get_lock_info(key, use_cache=False)
        if info is not None and info.get("holder") == holder:
            self.store().delete(key)
        self._locks.pop(key, None)


def locked_policy(lock_files_directory: Path | None = None) -> CacheKeyFnPolicy:
    """key_from_parameters + SERIALIZABLE isolation + per-key file locks."""
    return CacheKeyFnPolicy(cache_key_fn=key_from_parameters).configure(
        isolation_level="SERIALIZABLE",
        lock_manager=StorageLockManager(lock_files_directory))


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
