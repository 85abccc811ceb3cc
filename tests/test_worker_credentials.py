"""Credentials never travel in Ray's runtime_env, and workers still authenticate (issue 16,
item 3).

A Prefect server that requires an auth string (PREFECT_SERVER_API_AUTH_STRING), a Ray head
started WITHOUT the secret in its environment (as a node on another host would be), and a
driver holding the secret in its environment (PREFECT_API_AUTH_STRING) that attaches to the
head through flows.runtime.init_ray (by `host:port`, and by Ray Client `ray://host:port`)
and runs a flow of two tasks on RayTaskRunner:
* the flow and both task runs complete: the workers reached the API although the variable
  is not in their environment (prefect-ray sends the parent's settings with each task);
* the job's runtime_env (what Ray's dashboard and state API show) has no secret;
* no file in the cluster's temp directory (Ray's logs, session files) and nothing the driver
  printed contains it.
The cluster is stopped by PID (its own temp dir), never with `ray stop`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, stop_process_tree, wait_http

pytestmark = [pytest.mark.ray, pytest.mark.server, pytest.mark.timeout(400)]

RAY = str(Path(sys.executable).with_name("ray"))

DRIVER = r"""
import json, os, sys
import ray
from prefect import flow, task
from prefect_ray import RayTaskRunner
from flows.runtime import init_ray

@task
def probe(i: int) -> dict:
    import os, ray
    return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
            "auth_vars": sorted(k for k in os.environ if "AUTH_STRING" in k or k.endswith("API_KEY"))}

@flow(name="credentials-check", task_runner=RayTaskRunner())
def check() -> list:
    return [f.result() for f in probe.map(range(2))]

init_ray(sys.argv[1])
from flows.runtime import worker_env
out = {"runtime_env": ray.get_runtime_context().runtime_env, "tasks": check(),
       "driver_has_secret": bool(os.environ.get("PREFECT_API_AUTH_STRING"))}
print("RESULT " + json.dumps(out, default=str), flush=True)
ray.shutdown()
"""


@pytest.mark.parametrize("attach", ["host:port", "ray://"])
def test_secret_stays_out_of_ray_and_workers_still_authenticate(tmp_path, attach):
    """`host:port` = a driver on a cluster node; `ray://` = Ray Client from off the cluster
    (the README's `--ray-address ray://HEAD:10001`)."""
    import httpx

    from tests.test_multinode import _ray_start, stop_cluster
    secret = "tournament-" + secrets.token_hex(12)
    auth = f"admin:{secret}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    base.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO),
                PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], stdout=log, stderr=log,
                              env={**base, "PREFECT_SERVER_API_AUTH_STRING": auth})
    temp_dir = Path(f"/tmp/rt-{secrets.token_hex(4)}")
    ray_auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        deadline_ok = False
        for _ in range(300):
            try:
                deadline_ok = httpx.get(f"{url}/health", auth=("admin", secret), timeout=2
                                        ).status_code == 200
            except httpx.HTTPError:
                pass
            if deadline_ok:
                break
            import time
            time.sleep(0.3)
        assert deadline_ok, (tmp_path / "server.log").read_text()[-2000:]
        assert httpx.get(f"{url}/flows/filter", timeout=5).status_code == 401   # auth required
        assert httpx.post(f"{url}/flows/filter", timeout=5).status_code == 401

        # The head: no Prefect secret in its environment (another host's raylet).
        ray_port, client_port = free_port(), free_port()
        _ray_start(["--head", "--port", str(ray_port), "--ray-client-server-port",
                    str(client_port), "--node-ip-address", "127.0.0.1",
                    "--num-cpus", "2", "--temp-dir", str(temp_dir), "--include-dashboard",
                    "false", "--object-store-memory", str(200 * 1024 ** 2),
                    "--disable-usage-stats"], {**base, **ray_auth}, tmp_path / "ray.log")

        driver_env = {**base, **ray_auth, "PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": auth}
        address = (f"127.0.0.1:{ray_port}" if attach == "host:port"
                   else f"ray://127.0.0.1:{client_port}")
        proc = subprocess.run([sys.executable, "-c", DRIVER, address],
                              cwd=tmp_path, env=driver_env, capture_output=True, text=True,
                              timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        result = json.loads(next(l for l in proc.stdout.splitlines()
                                 if l.startswith("RESULT "))[7:])

        # Workers authenticated (the flow completed its task runs through the API) without
        # the variable in their environment.
        assert result["driver_has_secret"]
        assert len(result["tasks"]) == 2
        assert all(t["auth_vars"] == [] for t in result["tasks"]), result["tasks"]
        headers = {"Authorization": "Basic " + __import__("base64").b64encode(auth.encode()).decode()}
        # Task-run states reach the server as events, which it writes asynchronously: a run
        # the workers finished may appear a moment after the driver exits (CI saw 1 of 2).
        import time
        for _ in range(60):
            runs = httpx.post(f"{url}/task_runs/filter", headers=headers, json={},
                              timeout=10).json()
            probes = [r for r in runs if r["name"].startswith("probe")]
            if len(probes) == 2 and all(r["state_type"] == "COMPLETED" for r in probes):
                break
            time.sleep(0.5)
        assert len(probes) == 2 and all(r["state_type"] == "COMPLETED" for r in probes), probes
        flows_ = httpx.post(f"{url}/flow_runs/filter", headers=headers, json={}, timeout=10).json()
        assert [r["state_type"] for r in flows_] == ["COMPLETED"], flows_

        # Nothing of the secret in Ray: runtime_env, the cluster's files, the driver's output.
        env_vars = result["runtime_env"].get("env_vars", {})
        assert "PREFECT_API_URL" in env_vars and env_vars["PREFECT_API_URL"] == url
        assert secret not in json.dumps(result["runtime_env"])
        assert not any("AUTH_STRING" in k or "API_KEY" in k for k in env_vars), env_vars
        leaks, scanned = [], 0
        for path in temp_dir.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.name.endswith(".sock"):
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                scanned += 1
                if secret.encode() in data:
                    leaks.append(str(path))
        assert scanned > 5, "no Ray files scanned: wrong temp dir?"
        assert not leaks, leaks
        assert secret not in output
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        stop_process_tree(server)
        log.close()
