"""Process-level set-up for a run: the Prefect API, Ray, result storage, quiet logs.

* Prefect API: use PREFECT_API_URL when set; otherwise start ONE local server for this run on
  127.0.0.1 (never let Ray workers fall back to per-process ephemeral servers: ~3 s each).
* Ray: initialised once by the parent flow (local, or an existing cluster by address); both
  subflows' RayTaskRunner reuse it and leave it running.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# Worker processes must not oversubscribe 2 cores with BLAS/OpenMP threads.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1"}
# What reaches Ray workers through runtime_env.env_vars (shown in Ray's dashboard, state API
# and logs): an allow-list, never credentials. Workers authenticate to the Prefect API through
# the settings context prefect-ray sends with every task (it carries PREFECT_API_KEY /
# PREFECT_API_AUTH_STRING from the parent's settings), not through these variables.
FORWARDED_NAMES = ("PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED",
                   "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", "PREFECT_TASKS_REFRESH_CACHE",
                   "PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "PREFECT_API_SSL_CERT_FILE")
FORWARDED_PREFIXES = ("PREFECT_LOGGING_", "TOURNAMENT_", "NUMBA_")
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "AUTH", "CREDENTIAL")
# Result storage lives in flows.storage; re-exported here for the modules that set up a run.
from .storage import (check_storage_reaches_all_nodes, default_result_storage,  # noqa: E402,F401
                      is_block_slug, make_result_storage, storage_url)

NOISY_LOGGERS = ("cvxportfolio", "nautilus_trader", "numba", "vectorbt", "ray", "filelock",
                 "skfolio", "matplotlib")


def quiet_library_logs() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def temporary_services(*, start_ray=None, echo=None, timings: dict | None = None):
    """A Prefect server for this run only (127.0.0.1, a free port); yields its API URL.

    `start_ray` (optional callable) runs while the server boots, so the two start-ups
    overlap, EXCEPT on an empty PREFECT_HOME: the first boot creates and migrates the
    database (CPU-bound, ~17 s on 2 idle cores), so Ray then starts only once the server
    answers. The wait has no fixed limit while the server process lives (services.py says
    why). The server is our child and dies with us (even on SIGKILL); on exit Prefect's
    log/event workers are drained first, then Ray and the server stop in parallel.
    """
    import tempfile
    import threading

    from . import services
    timings = {} if timings is None else timings
    new_db = services.database_is_new()
    port = services.free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    fd, log_name = tempfile.mkstemp(prefix="tournament-prefect-server-", suffix=".log")
    os.close(fd)
    log_path = Path(log_name)
    t0 = time.perf_counter()
    server = services.launch_prefect_server(port, log_path=log_path, temporary=True)
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["PREFECT_UI_URL"] = api_url.removesuffix("/api")
    if echo and new_db:
        echo(f"tournament: first boot of the Prefect server on this PREFECT_HOME "
             f"({services.prefect_home()}): creating its database; Ray starts once it answers")
    ok = False
    try:
        if start_ray and not new_db:
            t1 = time.perf_counter()
            start_ray()
            timings["ray_start"] = time.perf_counter() - t1
        services.wait_for_server(api_url, server, log_path=log_path)
        timings["server_boot"] = time.perf_counter() - t0
        if new_db:
            timings["server_first_boot"] = timings["server_boot"]
        services.check_ui_settings(api_url)
        if start_ray and new_db:
            t1 = time.perf_counter()
            start_ray()
            timings["ray_start"] = time.perf_counter() - t1
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
        with temporary_settings({PREFECT_API_URL: api_url,
                                 PREFECT_UI_URL: api_url.removesuffix("/api")}):
            try:
                yield api_url
            finally:
                # Flush logs/events while the server is up and still configured (outside
                # these settings Prefect would start a throwaway ephemeral server to do it).
                drain_prefect_workers()
        ok = True
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop("PREFECT_UI_URL", None)
        t1 = time.perf_counter()
        stopping = threading.Thread(target=_stop_child, args=(server,), daemon=True)
        stopping.start()
        shutdown_ray()
        stopping.join(timeout=15)
        timings["services_stop"] = time.perf_counter() - t1
        if ok:
            log_path.unlink(missing_ok=True)


def _stop_child(proc, grace: float = 8.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except Exception:
        proc.kill()
        proc.wait(5)


class _HideViewAtLinks(logging.Filter):
    """Drops Prefect's 'View at <url>' lines: a temporary server's links die with the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("View at ")


def hide_run_links() -> None:
    for name in ("prefect.flow_runs", "prefect.flow_engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideViewAtLinks) for f in logger.filters):
            logger.addFilter(_HideViewAtLinks())


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


def forwarded(name: str) -> bool:
    """True when `name` may travel to Ray workers: the allow-list, never a credential
    (any name holding KEY/SECRET/TOKEN/PASSWORD/AUTH/CREDENTIAL is dropped, even with an
    allowed prefix, e.g. TOURNAMENT_S3_SECRET or PREFECT_API_KEY)."""
    if any(word in name.upper() for word in SECRET_WORDS):
        return False
    return name in FORWARDED_NAMES or name in THREAD_ENV or name.startswith(FORWARDED_PREFIXES)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(THREAD_ENV)
    env.update({k: v for k, v in os.environ.items() if forwarded(k)})
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
    # Token auth stays on (Ray 2.60's default for a new local cluster). Its start-up warning
    # that it is on is noise in every run; setting RAY_AUTH_MODE here instead would leave
    # this process's already-loaded Ray config in "disabled" mode (client/GCS mismatch).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    env: dict = {"env_vars": worker_env()}
    if address and not _is_this_machine(address):
        # Another host's workers get the project's packages through the runtime env. A head
        # on this machine (e.g. `tournament up`) runs from this checkout's environment, and
        # packaging + unpacking the modules would cost every run ~1-2 s of worker start.
        env["py_modules"] = project_modules()
    env.update(runtime_env or {})
    kwargs = dict(runtime_env=env, include_dashboard=False, log_to_driver=False,
                  namespace="tournament", configure_logging=True, logging_level=logging.WARNING)
    if address and address.startswith("ray://"):
        _connect_ray_client(address, kwargs)
    elif address:
        ray.init(address=address, **kwargs)
    else:
        # address="local": a new Ray for this run even when a `ray start` head (e.g. the one
        # of `tournament up`) runs on this machine; plain ray.init() would join that one.
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    return True


RAY_CLIENT_ATTEMPTS = 3


def _connect_ray_client(address: str, kwargs: dict) -> None:
    """Ray Client (`ray://`): a head that has just started can refuse the first connections
    ("Starting Ray client server failed": its client proxy is still looking up the runtime-env
    agent, measured here ~3 s after `ray start --head`); each refusal costs the proxy's 30 s
    timeout. Try again, a few times, saying so."""
    import ray
    for attempt in range(1, RAY_CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except (ConnectionAbortedError, RuntimeError) as exc:
            if "client server failed" not in str(exc) or attempt == RAY_CLIENT_ATTEMPTS:
                raise
            logging.getLogger(__name__).warning(
                "tournament: Ray Client at %s refused the connection (attempt %d of %d: its "
                "client server did not start); retrying", address, attempt, RAY_CLIENT_ATTEMPTS)
            ray.shutdown()
            time.sleep(2)


def _is_this_machine(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1")


def start_compute(address: str | None, *, num_cpus: int | None, simulators=(),
                  engines=()) -> None:
    """Start (or attach to) Ray and warm its workers, once per process."""
    if init_ray(address, num_cpus=num_cpus):
        prewarm_workers(simulators, engines)


def prewarm_workers(simulators=(), engines=()) -> list:
    """Warm every Ray worker now: import Prefect, the task modules, the run's engines and
    simulators. On the CLI path this overlaps the Prefect server's boot or the flow's
    planning, so the first real tasks do not pay ~2-3 s each for it (returns refs; nobody
    needs to wait on them). vectorbt's numba cache is loaded (a one-day simulation) in a
    thread of the worker, so Stage 2's vectorbt tasks find it loaded: at once when the run
    has no engines, else once the worker's first Stage 1 task ends (numba_load_after_stage1):
    a night's few new cells then solve without that thread (~2 s of CPU) taking turns with
    them at the GIL."""
    import ray

    from tournament.registry import warm_modules

    @ray.remote(num_cpus=1)
    def warm(modules, vectorbt: bool, defer_numba: bool):
        import importlib
        import time
        t0 = time.perf_counter()
        for name in modules:
            importlib.import_module(name)
        t1 = time.perf_counter()
        if vectorbt:
            (defer_numba_load if defer_numba else start_numba_load)()
        time.sleep(0.2)     # hold the worker briefly so each CPU gets one warm-up task
        return {"pid": os.getpid(), "imports": t1 - t0}

    modules = ["prefect", "prefect.task_engine", "tasks.stage1", "tasks.stage2",
               "tasks.outputs", "matplotlib.pyplot"]
    modules += [m for e in engines for m in warm_modules("engine", e)]
    modules += [m for s in simulators for m in warm_modules("simulator", s)]
    n = int(ray.cluster_resources().get("CPU", 1))
    refs = [warm.remote(modules, "vectorbt" in simulators, bool(engines)) for _ in range(n)]
    _WARMUPS[:] = refs
    return refs


_WARMUPS: list = []     # this process's prewarm tasks (their reports go into the manifest)
_NUMBA_SECONDS: list[float] = []    # in a worker: its numba load (see numba_load_seconds)


def warmup_refs() -> list:
    return list(_WARMUPS)


def numba_load_seconds(timeout: float = 5.0) -> float | None:
    """The longest numba load of the warm-up threads, asked of the workers (one small task
    per CPU; None when no worker has finished one)."""
    import ray

    @ray.remote(num_cpus=1)
    def report():
        import time
        time.sleep(0.05)                # one report per worker, as in the warm-up
        return _numba_seconds_here()

    n = int(ray.cluster_resources().get("CPU", 1))
    refs = [report.remote() for _ in range(n)]
    done, _ = ray.wait(refs, num_returns=n, timeout=timeout)
    seconds = [s for values in ray.get(done) for s in values]
    return max(seconds) if seconds else None


def _numba_seconds_here() -> list[float]:
    # A module function: a remote function reaches this worker's own list through it (a
    # global named in a remote function's body would travel as the driver's copy).
    return list(_NUMBA_SECONDS)


# In a worker: whether its numba load waits for its first Stage 1 task, and whether it started.
_NUMBA_LOAD = {"deferred": False, "started": False}
_NUMBA_LOCK = threading.Lock()


def defer_numba_load() -> None:
    _NUMBA_LOAD["deferred"] = True


def start_numba_load() -> None:
    """Load vectorbt's numba functions in a thread of this process, once."""
    with _NUMBA_LOCK:
        if _NUMBA_LOAD["started"]:
            return
        _NUMBA_LOAD["started"] = True
    threading.Thread(target=_touch_vectorbt, name="numba-load", daemon=True).start()


def numba_load_after_stage1() -> None:
    """Called as a Stage 1 task ends: a worker whose warm-up deferred its numba load starts it
    now (elsewhere, e.g. the driver replaying stored chunks, nothing happens)."""
    if _NUMBA_LOAD["deferred"]:
        start_numba_load()


def _touch_vectorbt() -> None:
    """A tiny vectorbt simulation: loads its numba functions from the on-disk cache."""
    t0 = time.perf_counter()
    _vectorbt_simulation()
    _NUMBA_SECONDS.append(time.perf_counter() - t0)


def _vectorbt_simulation() -> None:
    import numpy as np

    from tournament.simulators.base import Market, run_simulator
    from tournament.simulators.orders import orders_from_schedule
    from tournament.simulators.vectorbt_sim import VectorbtSimulator
    import pandas as pd
    returns = np.zeros((3, 2))
    orders = orders_from_schedule(np.full((1, 1, 2), 0.5), np.array([0]), 2, keys=[("w", "w", "w")],
                                  returns=returns, rebalance="window", cost_rate=0.0)
    run_simulator(VectorbtSimulator(), Market(returns, pd.bdate_range("2020-01-01", periods=3)),
                  orders)


# ----------------------------------------------------------------------------- many hosts
def _is_loopback(host: str | None) -> bool:
    import ipaddress
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_addresses() -> set[str]:
    """Every address and name of this host (loopback included)."""
    import socket

    import psutil
    out = {socket.gethostname(), socket.getfqdn()}
    for addrs in psutil.net_if_addrs().values():
        out.update(a.address.split("%")[0] for a in addrs
                   if a.family in (socket.AF_INET, socket.AF_INET6))
    return out


def nodes_on_other_hosts(nodes: list[dict], here: set[str]) -> list[str]:
    """Addresses of alive `ray.nodes()` entries that are not on this host (sorted)."""
    foreign = set()
    for n in nodes:
        if not n.get("Alive", True):
            continue
        addr, name = n.get("NodeManagerAddress"), n.get("NodeManagerHostname")
        if _is_loopback(addr) or addr in here or name in here:
            continue
        foreign.add(str(addr or name))
    return sorted(foreign)


def check_api_reaches_all_nodes(api_url: str | None, nodes: list[dict],
                                here: set[str] | None = None) -> None:
    """Refuse a loopback Prefect API URL when Ray nodes run on other hosts: their task runs
    would report to their own 127.0.0.1 (one line saying what to set). `nodes` is
    `ray.nodes()`-shaped; `here` this host's addresses (default: `local_addresses()`)."""
    from urllib.parse import urlparse

    from tournament.errors import ConfigError
    if not api_url or not _is_loopback(urlparse(api_url).hostname):
        return
    foreign = nodes_on_other_hosts(nodes, local_addresses() if here is None else here)
    if foreign:
        raise ConfigError(
            f"config error: the Prefect API URL {api_url} is a loopback address but Ray nodes "
            f"run on other hosts ({', '.join(foreign)}); set PREFECT_API_URL to an address every "
            "node can reach (e.g. http://<this host's IP>:4200/api, server started with "
            "--host 0.0.0.0 behind your firewall) or a Prefect Cloud workspace URL")


def current_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL
    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()


def check_cluster_reachability() -> None:
    """On the Ray cluster this process is attached to: the API URL reaches every node."""
    import ray
    check_api_reaches_all_nodes(current_api_url(), ray.nodes())
