"""End to end through a real Prefect server: prefect.yaml deployments, a process worker, blocks
and the run's artifacts.

    server (isolated PREFECT_HOME)  ->  work pool  ->  `prefect --no-prompt deploy --all`
      -> nightly has an upcoming SCHEDULED run  ->  blocks register/save/load/resolve
      -> worker  ->  `prefect deployment run tournament/quick --watch` on a tiny grid
      -> flow run Completed, run directory written, table + markdown artifacts on the run.

Every process this test starts gets its own session (process group); teardown stops exactly
those groups and their descendants by PID (SIGTERM, then SIGKILL after a short grace: the
worker may ignore SIGTERM for >20 s). No other process is touched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "tournament-pool"
TINY_GRID = {"engines": ["custom"], "selections": ["all"],
             "profiles": ["equal_weight", "min_variance"], "rebalances": ["window"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, grace: float = 8.0) -> None:
    """SIGTERM this process's group and every descendant (by PID), SIGKILL after `grace`."""
    import psutil
    try:
        family = [psutil.Process(proc.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)   # the group we created (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def prefect_stack(tmp_path):
    """A private Prefect server; yields (api_url, env, start) where start() launches a tracked
    background process with that env. Everything started is stopped at teardown."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_CLI_COLORS="false", PREFECT_CLI_WRAP_LINES="false",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    started: list[tuple[subprocess.Popen, object]] = []

    def start(args: list[str], name: str, **kw) -> tuple[subprocess.Popen, Path]:
        log_path = tmp_path / f"{name}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, **kw)
        started.append((proc, log))
        return proc, log_path

    server, server_log = start([*PREFECT, "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], "server", cwd=tmp_path)
    try:
        _wait_health(f"{url}/health", server, server_log)
        yield url, env, start
    finally:
        for proc, log in reversed(started):   # worker first, server last
            _stop(proc)
            log.close()


def _run(args: list[str], env: dict, *, cwd: Path = REPO, timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, args))} -> {proc.returncode}\n{out[-4000:]}"
    return out


def _client(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Ctx:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: url})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            try:
                self._client.__exit__(*exc)
            finally:
                self._settings.__exit__(*exc)
    return _Ctx()


def _deployment_runs(client, deployment_id, state_types=None):
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId,
                                                FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    flow_filter = None
    if state_types:
        flow_filter = FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=list(state_types))))
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=flow_filter)


BLOCKS_SCRIPT = r"""
import json, sys
from blocks.tournament_blocks import (ComputeBlock, DataSourceBlock, TournamentGridBlock,
                                      resolve_blocks)
TournamentGridBlock(engines=["custom"], selections=["all"], fidelity="low", train=120,
                    max_weight=0.5).save("e2e-grid", overwrite=True)
DataSourceBlock(kind="sp500", days=300).save("e2e-data", overwrite=True)
ComputeBlock(num_cpus=2, result_storage="/tmp/x", storage_credentials="s3cr3t-value").save(
    "e2e-compute", overwrite=True)
loaded = ComputeBlock.load("e2e-compute")
assert loaded.credentials() == "s3cr3t-value"
assert "s3cr3t-value" not in repr(loaded)
print("RESOLVED " + json.dumps(resolve_blocks("e2e-grid", "e2e-data", "e2e-compute"), sort_keys=True))
"""


PUBLISH_SCRIPT = r"""
import sys
from prefect import flow
from prefect.runtime import flow_run
from tasks.artifacts import publish_artifacts

@flow(name="publish-check")
def publish_check(run_dir: str) -> str:
    out = publish_artifacts(run_dir, key_prefix="E2E check")
    assert out["report"].endswith("report.html")
    return flow_run.id

print("FLOW_RUN " + publish_check(sys.argv[1]))
"""


def test_deployments_end_to_end(prefect_stack, tmp_path):
    from prefect.client.schemas.objects import StateType

    url, env, start = prefect_stack
    t0 = time.monotonic()

    # 1. Work pool + every deployment in prefect.yaml (from the repo root).
    _run([*PREFECT, "work-pool", "create", POOL, "--type", "process"], env)
    out = _run([*PREFECT, "--no-prompt", "deploy", "--all"], env, timeout=180)
    for name in ("nightly", "adhoc", "quick"):
        assert f"tournament/{name}" in out, out[-3000:]

    # 2. The nightly cron schedule produced upcoming runs; deployments are on the pool.
    with _client(url) as client:
        deps = {n: client.read_deployment_by_name(f"tournament/{n}")
                for n in ("nightly", "adhoc", "quick")}
        for name, dep in deps.items():
            assert dep.work_pool_name == POOL, name
            assert dep.entrypoint == "flows.tournament_flow:tournament"
            assert dep.pull_steps and "set_working_directory" in json.dumps(dep.pull_steps)
            assert Path(dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
                        ["directory"]).resolve() == REPO.resolve()
        assert deps["nightly"].parameters["fidelity"] == "high"
        assert deps["quick"].parameters["fidelity"] == "low"
        assert deps["nightly"].schedules and deps["nightly"].schedules[0].schedule.cron == "0 2 * * *"
        assert not deps["quick"].schedules
        deadline = time.monotonic() + 60
        scheduled = []
        while time.monotonic() < deadline and not scheduled:
            scheduled = _deployment_runs(client, deps["nightly"].id, [StateType.SCHEDULED])
            if not scheduled:
                time.sleep(1)
        assert scheduled, "nightly deployment has no upcoming scheduled run"
        assert all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 0
                   for r in scheduled)
        # The worker below must never pick up a (high fidelity) nightly run: pause the
        # deployment and drop its upcoming runs.
        client.pause_deployment(deps["nightly"].id)
        for r in _deployment_runs(client, deps["nightly"].id, [StateType.SCHEDULED]):
            client.delete_flow_run(r.id)

    # 3. Blocks: register the types, save, load by name, resolve to flow kwargs.
    _run([*PREFECT, "block", "register", "-m", "blocks.tournament_blocks"], env)
    out = _run([sys.executable, "-c", BLOCKS_SCRIPT], env)
    resolved = json.loads(next(line for line in out.splitlines() if line.startswith("RESOLVED "))[9:])
    assert resolved == {
        "fidelity": "low", "data": "sp500", "days": 300, "data_kind": "prices",
        "ray_address": None, "result_storage": "/tmp/x", "num_cpus": 2,
        "overrides": {"engines": ["custom"], "selections": ["all"], "train": 120,
                      "max_weight": 0.5}}
    assert "s3cr3t-value" not in out

    # 4. A process worker (from the repo root), then the quick deployment on a tiny grid.
    worker, worker_log = start([*PREFECT, "worker", "start", "--pool", POOL], "worker", cwd=REPO)
    run_dir = tmp_path / "run"
    params = {"out": str(run_dir), "result_storage": str(tmp_path / "cache"),
              "overrides": TINY_GRID, "num_cpus": 2, "days": 400}
    t_trigger = time.monotonic()
    proc = subprocess.run([*PREFECT, "deployment", "run", "tournament/quick",
                           "--params", json.dumps(params), "--watch",
                           "--watch-timeout", "300"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=330,
                          start_new_session=True)
    trigger_seconds = time.monotonic() - t_trigger
    watch_out = proc.stdout + proc.stderr

    def diagnostics() -> str:
        return (f"\n--- deployment run (exit {proc.returncode}) ---\n{watch_out[-3000:]}"
                f"\n--- worker log ---\n{worker_log.read_text()[-6000:]}")

    with _client(url) as client:
        runs = _deployment_runs(client, deps["quick"].id)
        assert len(runs) == 1, diagnostics()
        run = runs[0]
        assert run.state is not None and run.state.is_completed(), (
            f"quick run state {run.state!r}" + diagnostics())
        assert run.parameters["overrides"] == TINY_GRID

        # The run directory was written where the parameters said.
        for name in ("results.parquet", "returns.parquet", "cells.parquet", "manifest.json"):
            assert (run_dir / name).is_file(), name + diagnostics()

        # 5a. publish_artifacts itself, inside a tiny flow, on that run directory.
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        def run_artifacts(flow_run_id):
            return client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

        copy_dir = tmp_path / "published"
        shutil.copytree(run_dir, copy_dir)
        (copy_dir / "report.html").unlink(missing_ok=True)
        out = _run([sys.executable, "-c", PUBLISH_SCRIPT, str(copy_dir)], env, cwd=tmp_path)
        tiny_run_id = next(line for line in out.splitlines() if line.startswith("FLOW_RUN "))[9:]
        tiny = {(a.type, a.key) for a in run_artifacts(tiny_run_id)}
        assert {("table", "e2e-check-leaderboard"), ("markdown", "e2e-check-summary")} <= tiny, tiny
        assert (copy_dir / "report.html").is_file()

        # 5b. Artifacts of the deployment's flow run (need publish_artifacts in the flow).
        artifacts = run_artifacts(run.id)
        kinds = {a.type: a for a in artifacts}
        print(f"\ne2e: deploy+schedule checks {t_trigger - t0:.1f}s, quick run trigger->done "
              f"{trigger_seconds:.1f}s, artifacts {sorted((a.type, a.key) for a in artifacts)}")
        assert "table" in kinds and "markdown" in kinds, (
            "flow run has no table/markdown artifacts: is tasks.artifacts.publish_artifacts "
            f"called at the end of the tournament flow? found {[(a.type, a.key) for a in artifacts]}")
        assert kinds["table"].key == "tournament-leaderboard"
        assert kinds["markdown"].key == "tournament-summary"
        table = kinds["table"].data
        table = json.loads(table) if isinstance(table, str) else table
        assert table and {"selection", "engine", "profile", "sharpe"} <= set(table[0])
        assert "## Top" in kinds["markdown"].data
        assert (run_dir / "report.html").is_file()
