"""Process-level set-up for a run: the Prefect API, Ray, result storage, quiet logs.

* Prefect API: use PREFECT_API_URL when set; otherwise start ONE local server for this run on
  127.0.0.1 (never let Ray workers fall back to per-process ephemeral servers: ~3 s each).
* Ray: initialised once by the parent flow (local, or an existing cluster by address); both
  subflows' RayTaskRunner reuse it and leave it running.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

# Worker processes must not oversubscribe 2 cores with BLAS/OpenMP threads.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1"}
FORWARDED_PREFIXES = ("PREFECT_", "TOURNAMENT_", "NUMBA_")
NOISY_LOGGERS = ("cvxportfolio", "nautilus_trader", "numba", "vectorbt", "ray", "filelock",
                 "skfolio", "matplotlib")


def quiet_library_logs() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def prefect_api():
    """Yield the API URL in use, starting a local server when none is configured."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()
    server.start()   # binds 127.0.0.1; stopped by Prefect's atexit hook (stop() can be slow)
    os.environ["PREFECT_API_URL"] = server.api_url   # reaches Ray workers via runtime_env
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(THREAD_ENV)
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)})
    env.setdefault("NUMBA_CACHE_DIR", str(Path(".numba-cache").resolve()))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.update(extra or {})
    return env


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             runtime_env: dict | None = None) -> bool:
    """Start (or attach to) Ray once. Returns True when this call started it."""
    import ray
    if ray.is_initialized():
        return False
    env = {"env_vars": worker_env()}
    env.update(runtime_env or {})
    kwargs = dict(runtime_env=env, include_dashboard=False, log_to_driver=False,
                  namespace="tournament", configure_logging=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    return True


def make_result_storage(location: str | os.PathLike):
    """A Prefect filesystem for task results: local path, or an fsspec URL (s3://, gs://...)."""
    import hashlib

    from prefect.filesystems import LocalFileSystem, RemoteFileSystem
    location = str(location)
    if "://" in location and not location.startswith("file://"):
        block = RemoteFileSystem(basepath=location)
    else:
        path = Path(location.removeprefix("file://")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        location = str(path)
        block = LocalFileSystem(basepath=location)
    # Prefect requires result storage to be a saved block; name it after its location.
    name = "tournament-results-" + hashlib.sha256(location.encode()).hexdigest()[:10]
    block.save(name, overwrite=True)
    return block
