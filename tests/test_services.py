"""Local services: `tournament up/status/down`, attaching runs, stale state, first boot.

Every test gives the CLI its own services directory and ports, and removes
TOURNAMENT_NO_ATTACH only where attaching is the point. The first boot is checked on an
empty Prefect home of its own; the tests that only need a home use one after another
(`shared_home`), so only the first of them pays for creating its database. Processes started here are stopped
by PID (the `down` command itself, checked against /proc, or the fixtures)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.services import group_members
from tests.conftest import REPO, free_port, terminate_all

TINY = ["--data", "sp500", "--days", "260", "--fidelity", "low", "--selections", "all",
        "--engines", "custom", "--profiles", "equal_weight,min_variance",
        "--rebalances", "window", "--num-cpus", "2"]

pytestmark = [pytest.mark.server]


def cli(args, env, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def base_env(tmp_path: Path, *, attach: bool, home: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_UI_URL", "TOURNAMENT_EXECUTION_LOG")}
    env["TOURNAMENT_SERVICES_DIR"] = str(tmp_path / "services")
    env["PREFECT_HOME"] = str(home or tmp_path / "prefect-home")
    env["PYTHONPATH"] = str(REPO)
    if attach:
        env.pop("TOURNAMENT_NO_ATTACH", None)
    else:
        env["TOURNAMENT_NO_ATTACH"] = "1"
    return env


def get_json(url: str):
    import httpx
    return httpx.get(url, timeout=10).json()


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory) -> Path:
    """One PREFECT_HOME for the tests here whose claims do not depend on an empty home (up/
    status/run/down, stale state, a temporary server's UI settings). Its first user's server
    creates the database (the first boot: ~20-40 s of CPU on 2 cores); the tests after it,
    each with its own servers, stopped before the next test, find it migrated. The first boot itself is checked on an
    empty home of its own (test_first_boot_on_empty_home_with_both_cores_busy)."""
    return tmp_path_factory.mktemp("services-home") / "prefect-home"


@pytest.fixture
def services(tmp_path, shared_home):
    """`tournament up` on free ports; `tournament down` (and a PID sweep) afterwards."""
    env = base_env(tmp_path, attach=True, home=shared_home)
    prefect_port, ray_port = free_port(), free_port()
    up = cli(["up", "--prefect-port", str(prefect_port), "--ray-port", str(ray_port),
              "--num-cpus", "2"], env)
    state_file = tmp_path / "services" / "services.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        yield {"env": env, "state": state, "up": up, "prefect_port": prefect_port,
               "ray_port": ray_port, "tmp": tmp_path}
    finally:
        cli(["down"], env)
        if state:   # whatever `down` missed, by the PIDs `up` recorded
            import psutil
            left = [psutil.Process(p) for pid in (state["prefect_pid"], state["ray_pid"])
                    for p in group_members(pid)]
            terminate_all(left)


def test_up_status_run_down(services, tmp_path):
    env, state = services["env"], services["state"]
    port = services["prefect_port"]
    api = f"http://127.0.0.1:{port}/api"
    # The UI of the server that stays up calls its own API (not :4200).
    assert get_json(f"http://127.0.0.1:{port}/ui-settings")["api_url"] == api
    status = cli(["status"], env)
    assert status.returncode == 0, status.stdout
    assert f"UI http://127.0.0.1:{port}" in status.stdout and "up:" in status.stdout

    out, store = tmp_path / "out", tmp_path / "store"
    run = cli(["run", *TINY, "--out", str(out), "--result-storage", str(store)], env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("tournament: attached to the services of `tournament up`: "
                               f"Prefect UI http://127.0.0.1:{port}, Ray 127.0.0.1:"), lines[0]
    link = re.fullmatch(rf"run: http://127\.0\.0\.1:{port}/runs/flow-run/([0-9a-f-]{{36}})",
                        lines[-1])
    assert link, lines[-1]
    flow_run = get_json(f"{api}/flow_runs/{link.group(1)}")
    assert flow_run["name"] == "tournament low sp500 260d"      # <fidelity> <data> <days>
    assert flow_run["state"]["type"] == "COMPLETED"
    cold = json.loads((out / "manifest.json").read_text())
    assert cold["cache"]["stage1"]["computed"] > 0
    check_ui_in_browser(lines[-1].removeprefix("run: "), port, out, tmp_path)

    # Warm rerun: nothing computed, Ray never contacted, every chunk still a Cached task run.
    warm = cli(["run", *TINY, "--out", str(out), "--result-storage", str(store)], env)
    assert warm.returncode == 0, warm.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    s1, s2 = manifest["cache"]["stage1"], manifest["cache"]["stage2"]
    assert (s1["computed"], s2["computed"]) == (0, 0)
    assert s1["tasks_cached"] == s1["tasks"] and s2["tasks_cached"] == s2["tasks"]
    assert "ray_start" not in manifest["timings"]["parallel"]
    # The manifest's sequential phases account for the CLI's wall time up to its last write.
    timings = manifest["timings"]
    phases = sum(v for k, v in timings.items() if k not in ("total", "parallel"))
    assert phases == pytest.approx(timings["total"], rel=0.10)
    warm_id = warm.stderr.strip().splitlines()[-1].rsplit("/", 1)[-1]
    runs = get_json(f"{api}/flow_runs/{warm_id}")
    deadline = time.monotonic() + 30   # the server records states from events, a bit later
    while (tasks := stage_task_states(api, warm_id)) != ["Cached"]:
        assert time.monotonic() < deadline, tasks
        time.sleep(1)

    # Tests and CI never attach: the opt-out starts temporary services instead.
    opted = cli(["run", *TINY, "--out", str(tmp_path / "out-opt"), "--result-storage",
                 str(store)], {**env, "TOURNAMENT_NO_ATTACH": "1"})
    assert opted.returncode == 0, opted.stderr[-3000:]
    assert opted.stderr.splitlines()[0].startswith("tournament: temporary Prefect server")
    assert "View at" not in opted.stderr        # links of a server that dies with the run
    assert runs["state"]["type"] == "COMPLETED"

    import psutil
    started = {p.pid for pid in (state["prefect_pid"], state["ray_pid"])
               for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]}
    started |= {p for pid in (state["prefect_pid"], state["ray_pid"]) for p in group_members(pid)}
    down = cli(["down"], env)
    assert down.returncode == 0, down.stdout
    for pid in (state["prefect_pid"], state["ray_pid"]):
        assert group_members(pid) == [], f"process group {pid} still running"
    alive = [p for p in started if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, [psutil.Process(p).cmdline() for p in alive]
    assert not (tmp_path / "services" / "services.json").exists()
    assert cli(["status"], env).returncode == 1


def check_ui_in_browser(run_link: str, port: int, out: Path, tmp_path: Path) -> None:
    """The printed link, opened in headless Chromium with its JavaScript running, shows the
    run; its Subflow Runs tab lists both stages; the leaderboard artifact's page shows a
    strategy of results.parquet (key scheme `<deployment or cli>-<kind>`)."""
    import httpx
    import pandas as pd

    from tests.browser import Browser, chromium_path
    browser = Browser(chromium_path(), tmp_path)
    try:
        page = browser.open(run_link)
        page.wait_text("tournament low sp500 260d")
        assert "Oops" not in page.evaluate("document.body.innerText")
        page.evaluate("document.getElementById('subflow-runs').click()")
        # 260 days, 180/40/20: 5 windows (rebalances 179..259) x (2 profiles + the baseline)
        page.wait_text("stage1 low 15 cells", "stage2 low 3 strategies x 1 pairs")
        assert "Subflow" in page.evaluate("location.href") or "tab=" in page.evaluate(
            "location.href"), page.evaluate("location.href")
        results = pd.read_parquet(out / "results.parquet")
        best = results[results["status"] == "ok"].sort_values("sharpe").iloc[-1]
        page = browser.open(f"http://127.0.0.1:{port}/artifacts/key/cli-leaderboard")
        page.wait_text("cli-leaderboard", "tournament low sp500 260d")     # the key's history
        artifact = httpx.post(f"http://127.0.0.1:{port}/api/artifacts/filter", json={
            "artifacts": {"key": {"any_": ["cli-leaderboard"]}}}, timeout=10).json()[0]
        page = browser.open(f"http://127.0.0.1:{port}/artifacts/artifact/{artifact['id']}")
        page.wait_text(best["selection"], best["engine"], best["profile"])
        # The report artifact: the UI's markdown renderer shows its charts (inline data: URI
        # PNGs), decoded to real images, beside the leaderboard.
        report = httpx.post(f"http://127.0.0.1:{port}/api/artifacts/filter", json={
            "artifacts": {"key": {"any_": ["cli-report"]}}}, timeout=10).json()[0]
        page = browser.open(f"http://127.0.0.1:{port}/artifacts/artifact/{report['id']}")
        page.wait_text("Equity curves (custom)", best["profile"])
        shown = "Array.from(document.images).filter(i => i.src.startsWith('data:image/png') " \
                "&& i.complete && i.naturalWidth > 100).length"
        deadline = time.monotonic() + 30
        while page.evaluate(shown) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert page.evaluate(shown) >= 2, page.evaluate("document.body.innerText")[:2000]
    finally:
        browser.close()


def stage_task_states(api: str, parent_id: str) -> list[str]:
    """State names of every task run under the parent flow run's subflows and itself."""
    import httpx
    subflows = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {
        "parent_flow_run_id": {"any_": [parent_id]}}}, timeout=10).json()
    flow_ids = {parent_id} | {r["id"] for r in subflows}
    assert len(flow_ids) == 3, subflows          # the parent and its two stage subflows
    runs = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {
        "any_": sorted(flow_ids)}}}, timeout=10).json()
    # Tasks of the stage subflows (the parent's own "task runs" stand for the subflows).
    return sorted({r["state"]["name"] for r in runs if r["flow_run_id"] in flow_ids - {parent_id}})


def test_stale_state_falls_back_to_temporary_services(tmp_path, shared_home):
    env = base_env(tmp_path, attach=True, home=shared_home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "services.json").write_text(json.dumps({
        "prefect_pid": dead.pid, "prefect_port": free_port(), "prefect_log": "x",
        "ray_pid": dead.pid, "ray_port": free_port(), "ray_log": "y",
        "prefect_home": str(tmp_path)}))
    status = cli(["status"], env)
    assert status.returncode == 1 and "stale:" in status.stdout
    run = cli(["run", *TINY, "--out", str(tmp_path / "out"), "--result-storage",
               str(tmp_path / "store")], env)
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = run.stderr.splitlines()[:2]
    assert first.startswith("tournament: services in ") and "are stale" in first
    assert f"Prefect server (pid {dead.pid}) is not running" in first
    assert second.startswith("tournament: temporary Prefect server")
    assert cli(["down"], env).returncode == 0
    assert not (tmp_path / "services" / "services.json").exists()


def test_port_taken_is_refused_in_one_line(tmp_path):
    env = base_env(tmp_path, attach=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = cli(["up", "--prefect-port", str(port), "--ray-port", str(free_port())], env,
                 timeout=60)
    assert up.returncode == 2
    assert up.stderr.strip() == (f"error: service error: port {port} on 127.0.0.1 is in use, "
                                 "so the Prefect server cannot start; choose another with "
                                 "--prefect-port")
    assert not (tmp_path / "services" / "services.json").exists()


def test_first_boot_on_empty_home_with_both_cores_busy(tmp_path):
    """The race that failed fresh machines: an empty PREFECT_HOME (database created and
    migrated on the first boot) while both cores are busy, and Ray to start as well. The run's
    own start-up path (temporary_services + init_ray) must come up; burners are ours, stopped
    by PID. (Every CLI test of the suite also boots on an empty home, without the burners.)"""
    import psutil
    env = base_env(tmp_path, attach=False)
    assert not Path(env["PREFECT_HOME"]).exists()
    code = ("import json, time, ray\n"
            "from flows.runtime import init_ray, temporary_services\n"
            "timings = {}\n"
            "with temporary_services(start_ray=lambda: init_ray(num_cpus=1), timings=timings,\n"
            "                        echo=print) as url:\n"
            "    assert ray.is_initialized()\n"
            "    import httpx\n"
            "    assert httpx.get(url + '/health', timeout=10).status_code == 200\n"
            "print(json.dumps(timings))\n")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=600, cwd=REPO)
    finally:
        terminate_all([psutil.Process(b.pid) for b in burners])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "first boot of the Prefect server" in proc.stdout
    timings = json.loads(proc.stdout.strip().splitlines()[-1])
    # Ray started only after the server answered (the first boot had the CPU to itself).
    assert timings["server_first_boot"] > 0 and timings["ray_start"] > 0


def test_temporary_server_ui_settings_report_its_own_api(tmp_path, shared_home):
    env = base_env(tmp_path, attach=False, home=shared_home)
    code = ("import json, urllib.request\n"
            "from flows.runtime import temporary_services\n"
            "with temporary_services() as url:\n"
            "    base = url.removesuffix('/api')\n"
            "    got = json.load(urllib.request.urlopen(base + '/ui-settings'))['api_url']\n"
            "    print(json.dumps({'url': url, 'ui_api_url': got}))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["ui_api_url"] == seen["url"]
    assert not seen["url"].startswith("http://127.0.0.1:4200")


def test_ui_settings_mismatch_is_refused():
    """A server whose UI calls another API is refused with one line saying what to set."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from flows.services import ServiceError, check_ui_settings

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"api_url": "http://127.0.0.1:4200/api"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api"
        with pytest.raises(ServiceError) as err:
            check_ui_settings(url)
        assert str(err.value) == (
            f"service error: the Prefect UI at http://127.0.0.1:{server.server_port} calls "
            f"http://127.0.0.1:4200/api, not its own API {url}; restart it with "
            f"PREFECT_UI_API_URL={url}")
    finally:
        server.shutdown()
        server.server_close()


def test_explicit_settings_win_over_attach(tmp_path, monkeypatch):
    """An explicit PREFECT_API_URL or --ray-address wins over `tournament up`, each for its
    own service; the opt-out ignores the services file altogether."""
    from flows import services
    monkeypatch.setenv("TOURNAMENT_SERVICES_DIR", str(tmp_path))
    monkeypatch.delenv("TOURNAMENT_NO_ATTACH", raising=False)
    assert services.find_running_services(explicit_api_url=None, explicit_ray=None) is None
    got = services.find_running_services(explicit_api_url="http://10.0.0.5:4200/api",
                                         explicit_ray="ray://head:10001")
    assert (got.api_url, got.ray_address, got.source) == (
        "http://10.0.0.5:4200/api", "ray://head:10001", "explicit")
    (tmp_path / "services.json").write_text("{not json")
    monkeypatch.setenv("TOURNAMENT_NO_ATTACH", "1")
    assert services.find_running_services(explicit_api_url=None, explicit_ray=None) is None
    monkeypatch.delenv("TOURNAMENT_NO_ATTACH")
    got = services.find_running_services(explicit_api_url=None, explicit_ray=None)
    assert got.source == "temporary" and "is not a services file" in got.note
