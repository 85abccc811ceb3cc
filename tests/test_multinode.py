"""A real two-node Ray cluster on loopback: the CLI attaches by address, work lands on both
nodes, results equal a local run, and a SIGKILLed driver resumes from the shared storage.

Isolation from any other Ray on the machine:
* the cluster has its own `--temp-dir` (/tmp/rt-<random>: unix socket paths must stay short)
  and its own auth token (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN, never ~/.ray/auth_token);
* it is stopped by PID (processes whose command line names its temp dir, and their
  descendants), never with `ray stop`, which stops every Ray on the machine.

Ray 2.60 auth: a driver connecting to "host:port" fails ("Failed to connect to Ray cluster")
unless RAY_AUTH_MODE=token is in its environment; the token must match the cluster's, so the
same RAY_AUTH_MODE and RAY_AUTH_TOKEN go to both `ray start` calls and the driver.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import free_port, sigkill_tree, stop_process_tree

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

RAY = str(Path(sys.executable).with_name("ray"))
GRID = ["--engines", "custom,skfolio", "--selections", "all,momentum,low_vol",
        "--profiles", "equal_weight,min_variance,hrp", "--rebalances", "window,daily"]


# ----------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    address: str
    temp_dir: Path
    env: dict[str, str]          # auth env for every process that talks to this cluster


def _cluster_processes(temp_dir: Path) -> list:
    """This cluster's processes: command line names its temp dir, plus their descendants
    (Ray workers rename themselves `ray::...` but are children of this cluster's raylets)."""
    import psutil
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}       # never this test process itself
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid not in skip and any(str(temp_dir) in part for part in (p.info["cmdline"] or [])):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    # Ray Client servers name the cluster by its GCS address, not its temp dir, and are
    # re-parented to init: match them by that address (Ray writes it to ray_current_cluster).
    try:
        gcs = (temp_dir / "ray_current_cluster").read_text().strip()
    except OSError:
        gcs = ""
    if gcs:
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = p.info["cmdline"] or []
                if p.pid not in skip and "ray.util.client.server" in cmd and \
                        f"--address={gcs}" in cmd:
                    roots.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            for child in p.children(recursive=True):
                if child.pid not in skip:
                    found.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def stop_cluster(temp_dir: Path, grace: float = 5.0) -> list[int]:
    """Stop exactly this cluster's processes by PID (SIGTERM, then SIGKILL). Returns PIDs."""
    from tests.conftest import terminate_all
    procs = _cluster_processes(temp_dir)
    terminate_all(procs, grace)
    return [p.pid for p in procs]


def _running(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "a") as fh:
        proc = subprocess.run([RAY, "start", *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=120)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    temp_dir = Path(f"/tmp/rt-{secrets.token_hex(4)}")     # short: socket paths < 108 chars
    port = free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path_factory.mktemp("ray-cluster") / "ray-start.log"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp_dir),
              "--object-store-memory", str(200 * 1024 ** 2), "--disable-usage-stats"]
    try:
        _ray_start(["--head", "--port", str(port), "--resources", '{"head_node": 1}',
                    "--include-dashboard", "false", *common], env, log)
        _ray_start(["--address", f"127.0.0.1:{port}", "--resources", '{"worker_node": 1}',
                    *common], env, log)
        raylets = [p for p in _cluster_processes(temp_dir)
                   if p.name() == "raylet" or "raylet" in " ".join(p.cmdline()[:1])]
        assert len(raylets) == 2, [p.cmdline()[:2] for p in raylets]     # one per node
        yield Cluster(f"127.0.0.1:{port}", temp_dir, auth)
    finally:
        pids = stop_cluster(temp_dir)
        leftover = [p for p in pids if _running(p)]
        assert not leftover, f"cluster processes still alive: {leftover}"
        assert not _cluster_processes(temp_dir), "cluster processes still alive"
        shutil.rmtree(temp_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI runs
def _cli(tmp: Path, out: str, api_url: str, *, storage: str, address: str | None = None,
         env_extra: dict[str, str] | None = None, log: Path | None = None,
         stdout=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    if log is not None:
        env["TOURNAMENT_EXECUTION_LOG"] = str(log)
    args = [sys.executable, "-m", "flows.cli", "run", "--data", "sp500", "--fidelity", "low",
            "--out", str(tmp / out), "--result-storage", str(tmp / storage), *GRID]
    args += ["--ray-address", address] if address else ["--num-cpus", "2"]
    return subprocess.Popen(args, cwd=tmp, env=env, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        stop_process_tree(proc)
    assert proc.returncode == 0, output[-4000:]
    return output


def _results(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet").drop(columns="sim_seconds")


def _wait_state(path: Path, predicate, proc: subprocess.Popen, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early ({proc.returncode}): "
                                 f"{proc.stdout.read()[-3000:]}")
        try:
            state = json.loads(path.read_text())
            if predicate(state):
                return state
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"state never matched: {path}")


@pytest.fixture(scope="module")
def cluster_run(ray_cluster, prefect_server, tmp_path_factory):
    """One clean run of the grid on the two-node cluster. The local run (its own Ray, its
    own storage) the first test compares it with starts beside it: the cluster run mostly
    waits (TOURNAMENT_TASK_DELAY, one CPU per node); `local()` waits for that one."""
    tmp = tmp_path_factory.mktemp("multinode")
    log = tmp / "executions.jsonl"
    local_out = open(tmp / "local.log", "w")      # a file, not a pipe: read once it ended
    local = _cli(tmp, "local", prefect_server, storage="local-cache",
                 log=tmp / "local-executions.jsonl", stdout=local_out)

    def wait_local() -> Path:
        try:
            local.wait(timeout=400)
        finally:
            stop_process_tree(local)
            local_out.close()
        assert local.returncode == 0, (tmp / "local.log").read_text()[-4000:]
        return tmp / "local"
    try:
        t0 = time.perf_counter()
        proc = _cli(tmp, "cluster", prefect_server, storage="cache",
                    address=ray_cluster.address,
                    env_extra={**ray_cluster.env, "TOURNAMENT_TASK_DELAY": "0.3"}, log=log)
        output = _finish(proc)
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        yield {"dir": tmp, "out": tmp / "cluster", "rows": rows, "output": output,
               "seconds": time.perf_counter() - t0, "local": wait_local}
    finally:
        if local.poll() is None:
            stop_process_tree(local)
        local_out.close()


def test_cluster_run_uses_both_nodes_and_equals_local_run(cluster_run, ray_cluster,
                                                          prefect_server):
    rows = cluster_run["rows"]
    assert rows, "no task executions were logged"
    nodes = {r["node"] for r in rows}
    assert None not in nodes
    assert len(nodes) == 2, f"tasks ran on {len(nodes)} node(s): {sorted(nodes)}"
    for kind in ("stage1", "stage2"):
        assert any(r["kind"] == kind for r in rows), kind
    state = json.loads((cluster_run["out"] / "tournament_state.json").read_text())
    assert state["status"] == "completed"
    assert state["stages"]["stage1"]["pending"] == 0 and state["stages"]["stage2"]["pending"] == 0

    local = cluster_run["local"]()          # the local run (own Ray, own storage), waited for
    pd.testing.assert_frame_equal(_results(cluster_run["out"]), _results(local))


def test_sigkilled_driver_resumes_on_the_cluster_from_shared_storage(
        cluster_run, ray_cluster, prefect_server, tmp_path):
    import psutil
    cluster_pids = {p.pid for p in _cluster_processes(ray_cluster.temp_dir)
                    if "raylet" in p.name() or "gcs_server" in p.name()}
    state_file = tmp_path / "resumed" / "tournament_state.json"
    proc = _cli(tmp_path, "resumed", prefect_server, storage="cache",
                address=ray_cluster.address,
                env_extra={**ray_cluster.env, "TOURNAMENT_TASK_DELAY": "1.5"})
    try:
        _wait_state(state_file, lambda s: 0 < s["stages"]["stage1"]["total"]
                    - s["stages"]["stage1"]["pending"] < s["stages"]["stage1"]["total"], proc)
    finally:
        if proc.poll() is None:
            sigkill_tree(proc)
    killed = json.loads(state_file.read_text())
    assert killed["status"] == "running"                   # it really died mid-stage-1
    assert not (tmp_path / "resumed" / "results.parquet").exists()
    # The cluster survived the driver: its GCS and both raylets are still running.
    assert cluster_pids and all(psutil.pid_exists(p) for p in cluster_pids)

    rerun = _cli(tmp_path, "resumed", prefect_server, storage="cache",
                 address=ray_cluster.address, env_extra=ray_cluster.env)
    _finish(rerun)
    final = json.loads(state_file.read_text())
    assert final["status"] == "completed"
    assert final["stages"]["stage1"]["cached"] > 0          # resumed from stored results
    pd.testing.assert_frame_equal(_results(tmp_path / "resumed"), _results(cluster_run["out"]))


# ----------------------------------------------------------------------------- storage check
def _fake_cluster(monkeypatch, hosts: list[str]) -> None:
    import socket

    import ray
    nodes = [{"Alive": True, "NodeManagerHostname": h, "NodeManagerAddress": h} for h in hosts]
    nodes.append({"Alive": False, "NodeManagerHostname": "dead-host",
                  "NodeManagerAddress": "10.9.9.9"})        # dead nodes are ignored
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.1")
    monkeypatch.setattr(socket, "gethostname", lambda: "head-host")


def test_local_storage_is_refused_on_a_multi_host_cluster(monkeypatch, tmp_path):
    from flows.runtime import check_storage_reaches_all_nodes
    from tournament.errors import ConfigError
    _fake_cluster(monkeypatch, ["head-host", "worker-7"])
    with pytest.raises(ConfigError) as err:
        check_storage_reaches_all_nodes(str(tmp_path / "cache"))
    message = str(err.value)
    assert "local path" in message and "split the cache" in message
    assert "worker-7" in message and "--shared-storage" in message and "s3://" in message
    # Accepted: a remote URL, or a local path declared shared (e.g. an NFS mount).
    check_storage_reaches_all_nodes("s3://bucket/tournament-cache")
    check_storage_reaches_all_nodes(str(tmp_path / "cache"), shared=True)


def test_local_storage_is_fine_when_every_node_is_on_this_host(monkeypatch, tmp_path):
    from flows.runtime import check_storage_reaches_all_nodes
    _fake_cluster(monkeypatch, ["head-host", "10.0.0.1"])      # two raylets, one machine
    check_storage_reaches_all_nodes(str(tmp_path / "cache"))
    _fake_cluster(monkeypatch, ["worker-7"])                   # a single node is never split
    check_storage_reaches_all_nodes(str(tmp_path / "cache"))
