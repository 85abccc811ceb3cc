"""Shared fixtures.

* The bundled real data and a default-grid cube, built once per session.
* One Prefect server per session (a `prefect server start` subprocess on 127.0.0.1 with an
  isolated PREFECT_HOME), stopped by PID at the end. Flow tests run in this process, so Ray
  is initialised once for the session and shut down at the end.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Before anything imports prefect: isolated home, no telemetry.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="tournament-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_DIR / "prefect-home"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Never attach to services a user left running with `tournament up` (tests start their own).
os.environ["TOURNAMENT_NO_ATTACH"] = "1"
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba-cache"))
os.environ["TOURNAMENT_EXECUTION_LOG"] = str(_SESSION_DIR / "executions.jsonl")
REPO = Path(__file__).resolve().parents[1]


def _cpu_has(*flags: str) -> bool:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return all(f in words for f in flags)


# Before anything imports numpy: OpenBLAS picks its kernels by CPU, and an AVX-512 Intel
# CPU's ("SkylakeX") round differently from AMD's ("Zen") and AVX2 Intel's ("Haswell"): the
# default cube's weights then differ in the last bits. The golden digests are recorded with
# the Haswell kernels, so the suite and every process it starts (they inherit this) use
# them on any x86-64 CPU that has AVX2 and FMA (tournament.golden.GOLDEN_BLAS_CORE, named
# here, not imported: importing it would load numpy first).
if _cpu_has("avx2", "fma"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def sp500():
    from tournament.data import load_dataset
    return load_dataset("sp500")


@pytest.fixture(scope="session")
def default_cube(sp500):
    """The default grid on the bundled data (all engines, selections, profiles)."""
    from tournament.config import load_config
    from tournament.stage1 import run_stage1
    return run_stage1(sp500, load_config())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def stop_process_tree(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop exactly this process and its descendants, by PID."""
    import psutil
    try:
        parent = psutil.Process(proc.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    terminate_all(family, grace)


def sigkill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a driver and every process it started (its Ray raylet, workers), by PID.
    Processes that are not its descendants (e.g. an external cluster's raylets) stay up."""
    import psutil
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def terminate_all(procs, grace: float = 5.0) -> None:
    """SIGTERM these psutil processes, SIGKILL whatever is left after `grace` seconds."""
    import psutil
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server for the session; its URL is exported for Ray workers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(_SESSION_DIR / "prefect-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], stdout=log, stderr=log,
                            env={**os.environ, "PREFECT_UI_ENABLED": "false"})
    try:
        wait_http(f"{url}/health", timeout=90)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        # Flush the logs and events of the in-process flows while the server still answers:
        # left queued, Prefect's workers retry them against the stopped server at interpreter
        # exit ("Error logging to API: All connection attempts failed"), ~80 s after the
        # last test on this machine.
        from flows.runtime import drain_prefect_workers
        drain_prefect_workers()
        os.environ.pop("PREFECT_API_URL", None)
        stop_process_tree(proc)
        log.close()


@pytest.fixture(scope="session")
def ray_session(prefect_server):
    """Ray started once in this process (after the API URL is set, so workers inherit it)."""
    import ray

    from flows.runtime import init_ray
    started = init_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def executions(session_dir):
    """Counts real (non-cached) task executions since the fixture was created."""
    path = Path(os.environ["TOURNAMENT_EXECUTION_LOG"])
    start = path.stat().st_size if path.exists() else 0

    def read(kind: str | None = None) -> list[dict]:
        import json
        if not path.exists():
            return []
        with open(path) as fh:
            fh.seek(start)
            rows = [json.loads(line) for line in fh if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]
    return read


@pytest.fixture(scope="session")
def deployed_stack(tmp_path_factory):
    """One private Prefect server with prefect.yaml deployed from git and (on demand) one
    process worker, shared by tests/test_deployments_e2e.py and tests/test_nightly_e2e.py
    (tests/e2e_stack.py); every process it started is stopped by PID at the end."""
    from tests.e2e_stack import DeployedStack
    stack = DeployedStack(tmp_path_factory.mktemp("prefect-stack"))
    _DEPLOYED_STACKS.append(stack)
    try:
        stack.boot()
        stack.deploy()
        yield stack
    finally:
        stack.stop()
        _DEPLOYED_STACKS.remove(stack)


_DEPLOYED_STACKS: list = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the deployed stack as soon as no later test uses it (rather than idling on the
    2 cores until the session ends); its fixture's own teardown then has nothing left to do."""
    yield
    if _DEPLOYED_STACKS:
        items = item.session.items
        later = items[items.index(item) + 1:] if item in items else []
        if not any("deployed_stack" in getattr(i, "fixturenames", ()) for i in later):
            for stack in _DEPLOYED_STACKS:
                stack.stop()
