"""The deployment stack shared by tests/test_deployments_e2e.py and tests/test_nightly_e2e.py:
a private Prefect server (isolated PREFECT_HOME, 127.0.0.1), a process work pool, a bare git
repository holding this checkout's HEAD, `prefect --no-prompt deploy --all` from it, and a
process worker in its own venv started in an empty directory.

Both files need exactly this, and booting it (an empty database's first boot, four `prefect`
CLI calls, the worker venv and the worker's start) cost each of them ~40 s on a 2-core
machine, so the session builds it once (tests/conftest.py `deployed_stack`).

Every process the stack starts gets its own session (process group); teardown stops exactly
those groups and their descendants by PID (SIGTERM, then SIGKILL after a short grace: the
worker may ignore SIGTERM for >20 s). No other process is touched.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from tests.conftest import free_port, terminate_all

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "tournament-pool"
BRANCH = "e2e-deploy"


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
    _signal_group(proc, signal.SIGTERM)      # the group we created (start_new_session)
    terminate_all(family, grace)
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _run(args: list[str], env: dict, *, cwd: Path = REPO, timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, args))} -> {proc.returncode}\n{out[-4000:]}"
    return out


def _bare_repo_with_head(tmp_path: Path) -> str:
    """A bare repository holding this checkout's HEAD on BRANCH; returns its file:// URL."""
    bare = tmp_path / "tournament.git"
    subprocess.run(["git", "init", "--bare", "-q", str(bare)], check=True)
    subprocess.run(["git", "-C", str(REPO), "push", "-q", bare.as_uri(), f"HEAD:refs/heads/{BRANCH}"],
                   check=True, capture_output=True)
    return bare.as_uri()


def _worker_venv(tmp_path: Path) -> Path:
    """A venv for the worker that sees the shared site-packages (dependencies) as a plain
    path entry, so this project's own editable install there is NOT active: the project must
    come from the pull step's install. Returns its python."""
    venv = tmp_path / "worker-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _editable_files(site: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in site.iterdir() if "portfolio_tournament" in p.name}


class DeployedStack:
    """The server is up and every deployment of prefect.yaml is deployed from git when the
    fixture yields; the worker starts on the first `worker()` call (the deployments test
    pauses the nightly deployment's schedule before any worker runs)."""

    def __init__(self, root: Path):
        self.root = root
        home = root / "prefect-home"
        home.mkdir()
        port = free_port()
        self.url = url = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PREFECT_API_URL=url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
                   PREFECT_CLI_COLORS="false", PREFECT_CLI_WRAP_LINES="false",
                   # An enqueued run (deployment concurrency, ENQUEUE) retries its slot every
                   # 3 s rather than 30 s (tests/test_nightly_e2e.py); workers poll every 2 s.
                   PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="3",
                   PREFECT_WORKER_QUERY_SECONDS="2",
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env = env
        self._started: list[tuple[subprocess.Popen, object]] = []
        self._port = port
        self._worker_log: Path | None = None

    def boot(self) -> None:
        server, server_log = self.start([*PREFECT, "server", "start", "--host", "127.0.0.1",
                                         "--port", str(self._port)], "server", cwd=self.root)
        _wait_health(f"{self.url}/health", server, server_log)

    def start(self, args: list[str], name: str, **kw) -> tuple[subprocess.Popen, Path]:
        """Launch a tracked background process (its own session) with the stack's env."""
        log_path = self.root / f"{name}.log"
        log = open(log_path, "w")
        kw.setdefault("env", self.env)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
        self._started.append((proc, log))
        return proc, log_path

    def deploy(self) -> None:
        """The work pool, the git source as variables, every deployment in prefect.yaml."""
        self.repo_url = _bare_repo_with_head(self.root)
        _run([*PREFECT, "work-pool", "create", POOL, "--type", "process"], self.env)
        _run([*PREFECT, "variable", "set", "tournament_repository", self.repo_url], self.env)
        _run([*PREFECT, "variable", "set", "tournament_branch", BRANCH], self.env)
        self.deploy_output = _run([*PREFECT, "--no-prompt", "deploy", "--all"], self.env,
                                  timeout=180)

    def worker(self) -> Path:
        """A process worker in its own venv and an empty directory (no PYTHONPATH, not the
        repo), started once; returns its log. Records the worker venv's site-packages and the
        shared environment's editable-install files as they were before any flow run."""
        if self._worker_log is not None:
            return self._worker_log
        python = _worker_venv(self.root)
        self.worker_site = Path(subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True).stdout.strip())
        self.shared_site = Path(sysconfig.get_paths()["purelib"])
        self.shared_before = _editable_files(self.shared_site)
        self.worker_home = self.root / "worker-home"
        self.worker_home.mkdir()
        # No PYTHONPATH (the project must come from the clone); bytecode on, as the proof in
        # tests/test_deployments_e2e.py.
        worker_env = {k: v for k, v in self.env.items()
                      if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
        worker_env.update(PATH=f"{python.parent}{os.pathsep}{self.env['PATH']}",
                          PIP_NO_DEPS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        probe = subprocess.run([str(python), "-c", "import flows"], cwd=self.worker_home,
                               env=worker_env, capture_output=True, text=True)
        assert probe.returncode != 0, "the worker venv already imports the project: test is void"
        _, self._worker_log = self.start(
            [str(python), "-m", "prefect", "worker", "start", "--pool", POOL], "worker",
            cwd=self.worker_home, env=worker_env)
        return self._worker_log

    def stop(self) -> None:
        for proc, log in reversed(self._started):   # worker first, server last
            _stop(proc)
            log.close()
        self._started.clear()
