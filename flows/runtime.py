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


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_services(*, start_ray=None):
    """Yield the Prefect API URL, starting a local server when none is configured.

    `start_ray` (optional callable) runs WHILE the server boots: the URL is fixed first (a free
    port on 127.0.0.1), so Ray workers inherit PREFECT_API_URL and never fall back to
    per-process ephemeral servers. Overlapping the two start-ups saves ~3-5 s per run.
    On exit, Ray and the server are stopped in parallel (both are ours).
    """
    import threading

    from prefect.settings import PREFECT_API_URL, temporary_settings
    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if url:
        if start_ray:
            start_ray()
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    port = free_port()
    server = SubprocessASGIServer(port=port)
    url = server.api_url
    os.environ["PREFECT_API_URL"] = url
    failure: list[BaseException] = []

    def boot():
        try:
            server.start()
        except BaseException as exc:  # reported in the main thread
            failure.append(exc)

    booting = threading.Thread(target=boot, name="prefect-server-start", daemon=True)
    booting.start()
    try:
        if start_ray:
            start_ray()
        booting.join()
        if failure:
            raise failure[0]
        if server.api_url != url:
            raise RuntimeError(f"Prefect server moved from {url} to {server.api_url}")
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                # Flush logs/events while the server is up and still configured (outside
                # these settings Prefect would start a throwaway ephemeral server to do it).
                drain_prefect_workers()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stopping = threading.Thread(target=server.stop, daemon=True)
        stopping.start()
        shutdown_ray()
        stopping.join(timeout=10)


def drain_prefect_workers() -> None:
    """Flush Prefect's background log and event workers (as Prefect's test harness does);
    otherwise they retry against a stopped server at interpreter exit for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    for drain in (lambda: APILogWorker.instance().drain(), lambda: EventsWorker.drain_all()):
        try:
            drain()
        except Exception:
            pass


def shutdown_ray() -> None:
    import ray
    if ray.is_initialized():
        ray.shutdown()


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(THREAD_ENV)
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)})
    env.setdefault("NUMBA_CACHE_DIR", str(Path(".numba-cache").resolve()))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.update(extra or {})
    return env


PROJECT_PACKAGES = ("tournament", "flows", "tasks", "blocks")


def project_modules() -> list[str]:
    """Directories of the project's packages, shipped to cluster nodes by Ray's runtime env."""
    import importlib.util
    out = []
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out.append(list(spec.submodule_search_locations)[0])
    return out


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             runtime_env: dict | None = None) -> bool:
    """Start (or attach to) Ray once. Returns True when this call started it.

    On an existing cluster the project's packages travel in the runtime env (`py_modules`),
    so every node can import them without a separate install.
    """
    import ray
    if ray.is_initialized():
        return False
    env: dict = {"env_vars": worker_env()}
    if address:
        env["py_modules"] = project_modules()
    env.update(runtime_env or {})
    kwargs = dict(runtime_env=env, include_dashboard=False, log_to_driver=False,
                  namespace="tournament", configure_logging=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    return True


def prewarm_workers(simulators=(), engines=()) -> list:
    """Warm every Ray worker now: import Prefect, the task modules, the run's engines and
    simulators, and load vectorbt's numba cache with a one-day simulation. On the CLI path
    this overlaps the Prefect server's boot, so the first real tasks do not pay ~1-3 s each
    for it (returns refs; nobody needs to wait on them)."""
    import ray

    from tournament.registry import module_of

    @ray.remote(num_cpus=1)
    def warm(modules, vectorbt: bool):
        import importlib
        import time
        for name in modules:
            importlib.import_module(name)
        if vectorbt:
            _touch_vectorbt()
        time.sleep(0.2)     # hold the worker briefly so each CPU gets one warm-up task
        return os.getpid()

    modules = ["prefect", "prefect.task_engine", "tasks.stage1", "tasks.stage2"]
    modules += [module_of("engine", e) for e in engines]
    modules += [module_of("simulator", s) for s in simulators]
    n = int(ray.cluster_resources().get("CPU", 1))
    return [warm.remote(modules, "vectorbt" in simulators) for _ in range(n)]


def _touch_vectorbt() -> None:
    """A tiny vectorbt simulation: loads its numba functions from the on-disk cache."""
    import numpy as np

    from tournament.simulators.orders import orders_from_schedule
    from tournament.simulators.vectorbt_sim import VectorbtSimulator
    import pandas as pd
    returns = np.zeros((3, 2))
    orders = orders_from_schedule(np.full((1, 1, 2), 0.5), np.array([0]), 2, keys=[("w", "w", "w")],
                                  returns=returns, rebalance="window", cost_rate=0.0)
    VectorbtSimulator().simulate(returns, pd.bdate_range("2020-01-01", periods=3), orders)


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


def check_storage_reaches_all_nodes(location: str, *, shared: bool = False) -> None:
    """Refuse a node-local result path on a multi-host cluster (it would split the cache).

    A local path is fine when every alive node runs on the driver's host, or when the user
    declares it a shared mount (`shared=True`, e.g. NFS). fsspec URLs are always fine.
    """
    import socket

    import ray

    from tournament.errors import ConfigError
    if "://" in location and not location.startswith("file://"):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    hosts = {n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in nodes}
    here = {socket.gethostname(), "127.0.0.1", ray.util.get_node_ip_address()}
    foreign = hosts - here
    if len(nodes) > 1 and foreign and not shared:
        raise ConfigError(
            f"config error: result storage {location!r} is a local path but the Ray cluster has "
            f"{len(nodes)} nodes on other hosts ({', '.join(sorted(map(str, foreign)))}); a local "
            "path would split the cache per node. Use a shared path with --shared-storage, or an "
            "fsspec URL such as s3://bucket/tournament")
