"""Launching a local Prefect server and waiting for it; small process and port helpers.

Why our own launcher instead of Prefect's `SubprocessASGIServer`:
* its `start()` gives up after a fixed 20 s; a first boot on an empty PREFECT_HOME (creating
  and migrating the database) takes ~17 s on an idle 2-core machine and more when Ray starts
  beside it, so fresh machines failed at random. Here the wait has no fixed limit while the
  server process lives (a dead process is reported at once, with its log), and on an empty
  home Ray starts only after the server answers, so the first boot gets the CPU to itself;
* importing it costs ~5 s in the parent (it imports the whole server); a subprocess does not;
* its UI settings point at port 4200 whatever its port: every server started here gets
  PREFECT_UI_API_URL = its own API URL, checked through /ui-settings before use.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tournament.errors import TournamentError

BOOT_TIMEOUT_ENV = "TOURNAMENT_SERVER_BOOT_TIMEOUT"
# Only a safety net against a server that lives but never answers: the real condition is
# "the server process is alive and still booting".
DEFAULT_BOOT_TIMEOUT = 600.0


class ServiceError(TournamentError):
    """A service could not be started, reached or trusted (one line, says what to do)."""


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def http_get_json(url: str, timeout: float = 2.0):
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as resp:   # noqa: S310 (loopback)
        return json.loads(resp.read() or b"null")


def _log_tail(path: Path | None, lines: int = 6) -> str:
    if path is None or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").strip().splitlines()
    return " | ".join(t.strip() for t in text[-lines:])


# ----------------------------------------------------------------------------- Prefect server
def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGTERMs a temporary server when the run that started it dies
    (SIGKILL included), so a killed run never leaves a server behind."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


def server_env(port: int, *, temporary: bool) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ,
           "PREFECT_UI_API_URL": f"{base}/api",       # the UI calls its own API, not :4200
           "PREFECT_UI_URL": base,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)                   # a server is not a client of another
    if temporary:
        # A server that lives for one run needs no schedules, late-run marking or
        # cancellation clean-up: spare the CPU for the run.
        env.update({"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
                    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
                    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
                    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
                    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false"})
    return env


def launch_prefect_server(port: int, *, log_path: Path, temporary: bool) -> subprocess.Popen:
    """Start `uvicorn prefect.server.api.server:create_app` on 127.0.0.1:`port`.

    Temporary: a child that dies with its parent. Otherwise: detached in its own session, so
    it outlives the command and `tournament down` can stop its whole process group."""
    import importlib.util
    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(args, env=server_env(port, temporary=temporary), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=not temporary,
                                preexec_fn=_die_with_parent if temporary else None)
    finally:
        log.close()


def wait_for_server(api_url: str, proc: subprocess.Popen | None, *, pid: int | None = None,
                    log_path: Path | None = None, timeout: float | None = None) -> float:
    """Block until `api_url`/health answers. No fixed limit while the server process lives:
    a first boot's migrations take what they take. Returns the seconds waited."""
    limit = float(timeout or os.environ.get(BOOT_TIMEOUT_ENV) or DEFAULT_BOOT_TIMEOUT)
    t0 = time.monotonic()
    while True:
        try:
            if http_get_json(f"{api_url}/health", timeout=2) is not None:
                return time.monotonic() - t0
        except Exception:
            pass
        dead = (proc.poll() is not None) if proc is not None else not pid_alive(pid)
        if dead:
            code = proc.returncode if proc is not None else "?"
            raise ServiceError(f"service error: the Prefect server for {api_url} exited "
                               f"(code {code}) before answering; its log: "
                               f"{_log_tail(log_path) or log_path}")
        if time.monotonic() - t0 > limit:
            raise ServiceError(f"service error: the Prefect server for {api_url} is alive but "
                               f"did not answer within {limit:.0f} s ({BOOT_TIMEOUT_ENV}); "
                               f"its log: {log_path}")
        time.sleep(0.1)


def check_ui_settings(api_url: str) -> None:
    """Refuse a server whose UI would call another API (the UI then shows 'Oops')."""
    base = api_url.removesuffix("/api")
    try:
        served = http_get_json(f"{base}/ui-settings", timeout=5).get("api_url")
    except Exception as exc:
        raise ServiceError(f"service error: cannot read {base}/ui-settings ({exc})") from None
    if served != api_url:
        raise ServiceError(f"service error: the Prefect UI at {base} calls {served}, not its "
                           f"own API {api_url}; restart it with PREFECT_UI_API_URL={api_url}")
