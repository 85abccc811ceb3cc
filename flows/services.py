"""Local services: a Prefect server and a Ray head, for one run or kept up between runs.

    tournament up        # detached Prefect server + Ray head on 127.0.0.1 (state file below)
    tournament status    # what is up, with its URLs; stale entries explained
    tournament down      # stops exactly the processes `up` started, by process group

`tournament run` attaches to services that are up (and says so in its first line); without
them it starts temporary ones for the run (`temporary_services`). Tests and CI set
TOURNAMENT_NO_ATTACH=1 so they never attach to services a user left running.

The server launcher (and why it is ours, not Prefect's SubprocessASGIServer) is in
flows/prefect_server.py.
No module-level Prefect or Ray import: `tournament status` must stay instant.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .prefect_server import (ServiceError, _log_tail, check_ui_settings,  # noqa: F401
                             free_port, http_get_json, launch_prefect_server, pid_alive,
                             port_answers, port_is_free, wait_for_server)

NO_ATTACH_ENV = "TOURNAMENT_NO_ATTACH"
SERVICES_DIR_ENV = "TOURNAMENT_SERVICES_DIR"
STATE_FILE = "services.json"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_RAY_PORT = 6390


def services_dir() -> Path:
    return Path(os.environ.get(SERVICES_DIR_ENV) or Path.home() / ".tournament").expanduser()


def state_path() -> Path:
    return services_dir() / STATE_FILE


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def database_is_new() -> bool:
    """True when the server's first boot will create and migrate its database (the slow,
    CPU-bound case). A custom database URL is assumed to exist."""
    if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or os.environ.get(
            "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        return False
    return not (prefect_home() / "prefect.db").exists()


# ----------------------------------------------------------------------------- state file
@dataclass
class ServiceState:
    """What `tournament up` started; written atomically to services.json."""
    prefect_pid: int
    prefect_port: int
    prefect_log: str
    ray_pid: int
    ray_port: int
    ray_log: str
    prefect_home: str
    num_cpus: int | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}"

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    def problems(self) -> list[str]:
        """Why these services cannot be used (empty when both are up)."""
        out = []
        if not pid_alive(self.prefect_pid):
            out.append(f"Prefect server (pid {self.prefect_pid}) is not running")
        else:
            try:
                http_get_json(f"{self.api_url}/health", timeout=2)
            except Exception:
                out.append(f"Prefect server (pid {self.prefect_pid}) does not answer on "
                           f"{self.api_url}")
        if not pid_alive(self.ray_pid):
            out.append(f"Ray head (pid {self.ray_pid}) is not running")
        elif not port_answers(self.ray_port):
            out.append(f"Ray head (pid {self.ray_pid}) does not answer on {self.ray_address}")
        return out


def read_state() -> ServiceState | None:
    path = state_path()
    try:
        raw = json.loads(path.read_text())
        return ServiceState(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"service error: {path} is not a services file ({exc}); remove it "
                           "or run `tournament down`") from None


def write_state(state: ServiceState) -> None:
    from tournament.outputs import write_json
    write_json(state_path(), asdict(state))


@dataclass
class Attachment:
    """Services a run uses: where they came from and the one line that says so."""
    api_url: str | None
    ray_address: str | None
    ui_url: str | None
    source: str            # "up", "explicit" or "temporary"
    note: str = ""


def find_running_services(*, explicit_api_url: str | None,
                          explicit_ray: str | None) -> Attachment | None:
    """Services to attach to, or None (start temporary ones). Explicit settings win, each
    for its own service; a stale state file gets a one-line note and is ignored."""
    state = None
    note = ""
    if not os.environ.get(NO_ATTACH_ENV):
        try:
            state = read_state()
        except ServiceError as exc:
            note, state = str(exc), None
        if state is not None and (problems := state.problems()):
            note = (f"tournament: services in {state_path()} are stale ({'; '.join(problems)}); "
                    "using temporary services for this run (`tournament down` clears the file)")
            state = None
    if state is None and not explicit_api_url:
        return Attachment(None, explicit_ray, None, "temporary", note) if note else None
    api = explicit_api_url or state.api_url
    ray_address = explicit_ray or (state.ray_address if state else None)
    ui = state.ui_url if state and not explicit_api_url else None
    if state is not None:
        check_ui_settings(state.api_url)
    source = "up" if state is not None and not explicit_api_url and not explicit_ray else (
        "explicit" if state is None else "up+explicit")
    return Attachment(api, ray_address, ui, source, note)


# ----------------------------------------------------------------------------- up / down
def _terminate_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by `pid` (a detached service), SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
        except (OSError, ValueError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def ray_token_path(env: dict | None = None) -> Path:
    """Where Ray (2.60, token auth) looks for the token when RAY_AUTH_TOKEN is not set:
    RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token"


def ensure_ray_token(env: dict | None = None) -> Path | None:
    """Make sure the Ray head we start has a token to enforce, and drivers on this machine
    one to present. `ray start --head` with RAY_AUTH_MODE=token refuses to start when there is
    none (a fresh machine has no ~/.ray/auth_token), so one is generated as `ray
    get-auth-token --generate` would: 256 random bits, readable by this user only. A token
    given in RAY_AUTH_TOKEN, or an existing file, is used as it is. Returns the file written,
    or None."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN"):
        return None
    path = ray_token_path(env)
    if path.is_file() and path.read_text().strip():
        return None
    import secrets
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def start_ray_head(port: int, *, num_cpus: int | None, log_path: Path) -> subprocess.Popen:
    """`ray start --head --block` in its own session on 127.0.0.1, token auth on."""
    ray_bin = Path(sys.executable).with_name("ray")
    args = [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(port), "--include-dashboard", "false", "--disable-usage-stats"]
    if num_cpus:
        args += ["--num-cpus", str(num_cpus)]
    from .runtime import THREAD_ENV
    env = {**os.environ, **THREAD_ENV, "RAY_AUTH_MODE": "token"}
    ensure_ray_token(env)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


def services_up(*, prefect_port: int = DEFAULT_PREFECT_PORT, ray_port: int = DEFAULT_RAY_PORT,
                num_cpus: int | None = None, echo=print) -> ServiceState:
    """Start the detached services (or report the ones already up)."""
    state = read_state()
    if state is not None:
        if not state.problems():
            echo(f"already up: Prefect UI {state.ui_url}, Ray {state.ray_address}")
            return state
        echo(f"replacing stale services file {state_path()} ({'; '.join(state.problems())})")
        services_down(echo=lambda *_: None)
    for port, what, flag in ((prefect_port, "Prefect server", "--prefect-port"),
                             (ray_port, "Ray head", "--ray-port")):
        if not port_is_free(port):
            raise ServiceError(f"service error: port {port} on 127.0.0.1 is in use, so the "
                               f"{what} cannot start; choose another with {flag}")
    logs = services_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    new_db = database_is_new()
    echo(f"starting Prefect server on 127.0.0.1:{prefect_port}"
         + (" (first boot: creating its database, ~20-60 s)" if new_db else ""))
    prefect_log = logs / "prefect-server.log"
    server = launch_prefect_server(prefect_port, log_path=prefect_log, temporary=False)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    ray_proc = None
    t0 = time.monotonic()
    try:
        if new_db:       # the first boot gets the CPU to itself (no race with Ray)
            wait_for_server(api_url, server, log_path=prefect_log)
        echo(f"starting Ray head on 127.0.0.1:{ray_port}")
        ray_log = logs / "ray-head.log"
        ray_proc = start_ray_head(ray_port, num_cpus=num_cpus, log_path=ray_log)
        wait_for_server(api_url, server, log_path=prefect_log)
        waited = time.monotonic() - t0
        check_ui_settings(api_url)
        _wait_ray(ray_port, ray_proc, ray_log)
    except BaseException:
        _terminate_group(server.pid)
        if ray_proc is not None:
            _terminate_group(ray_proc.pid)
        raise
    state = ServiceState(prefect_pid=server.pid, prefect_port=prefect_port,
                         prefect_log=str(prefect_log), ray_pid=ray_proc.pid, ray_port=ray_port,
                         ray_log=str(ray_log), prefect_home=str(prefect_home()),
                         num_cpus=num_cpus)
    write_state(state)
    echo(f"up: Prefect UI {state.ui_url} (API {state.api_url}), Ray {state.ray_address} "
         f"(ready in {waited:.1f} s); `tournament run` attaches to them, "
         "`tournament down` stops them")
    return state


def _wait_ray(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise ServiceError(f"service error: `ray start --head` exited (code "
                               f"{proc.returncode}); its log: {_log_tail(log)}")
        # --block prints this once the head's processes are all started
        if port_answers(port) and "Ray runtime started" in Path(log).read_text(errors="ignore"):
            return
        time.sleep(0.2)
    raise ServiceError(f"service error: the Ray head on port {port} did not start within "
                       f"{timeout:.0f} s; its log: {log}")


def services_down(*, echo=print) -> int:
    state = read_state()
    if state is None:
        echo("nothing to stop: no services file at " + str(state_path()))
        return 0
    for name, pid in (("Ray head", state.ray_pid), ("Prefect server", state.prefect_pid)):
        if pid_alive(pid) or _group_alive(pid):
            _terminate_group(pid)
            echo(f"stopped {name} (process group {pid})")
        else:
            echo(f"{name} (pid {pid}) was not running")
    state_path().unlink(missing_ok=True)
    return 0


def services_status(*, echo=print) -> int:
    """0 when both services are up, 1 otherwise (one line each)."""
    try:
        state = read_state()
    except ServiceError as exc:
        echo(str(exc))
        return 1
    if state is None:
        echo("down: no services (start them with `tournament up`; runs start temporary ones)")
        return 1
    problems = state.problems()
    echo(f"Prefect server: pid {state.prefect_pid}, UI {state.ui_url}, API {state.api_url}, "
         f"home {state.prefect_home}")
    echo(f"Ray head: pid {state.ray_pid}, address {state.ray_address}")
    if problems:
        echo("stale: " + "; ".join(problems) + " (run `tournament down`, then `tournament up`)")
        return 1
    echo("up: `tournament run` attaches to these services")
    return 0
