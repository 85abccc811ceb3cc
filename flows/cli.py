"""`tournament` command line: what each command does (its arguments: flows/cli_parser.py;
`tournament --help` lists the exit codes)."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tournament.errors import ConfigError, TournamentError

from .cli_parser import _overrides, build_parser  # noqa: F401 (tests import them from here)

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_STRICT, EXIT_RACE_STOPPED = 0, 1, 2, 3, 4


def cmd_run(args, clock: "RunClock") -> int:
    from flows.inputs import FlowInputs, prepare_run
    overrides = _overrides(args)
    # Validate before starting any server or writing anything.
    if args.num_cpus is not None and args.num_cpus < 1:
        from tournament.errors import ConfigError
        raise ConfigError(f"config error: --num-cpus must be >= 1, got {args.num_cpus}")
    # The flow merges the same values again (flows.inputs.resolve_inputs, which also types
    # the overrides for the UI); prepare_run then returns this preparation.
    inputs = FlowInputs(config_path=args.config, fidelity=args.fidelity, overrides=overrides,
                        data=args.data, data_kind=args.data_kind, days=args.days)
    config = inputs.config()
    if args.race:
        from tournament.race import RaceSettings
        if args.mode == "legacy":
            raise ConfigError("--race needs --mode two-stage")
        RaceSettings(top_k=args.race_top_k, cap=args.race_cap, min_tau=args.race_min_tau,
                     on_disagreement=args.race_on_disagreement)     # bad values: exit 2
    dataset = prepare_run(config, data=inputs.data, data_kind=inputs.data_kind,
                          days=inputs.days).dataset
    clock.lap("load_config_data")
    if args.plan:
        if args.mode == "legacy":
            from tournament.errors import ConfigError
            raise ConfigError("config error: --plan estimates the two-stage run, not "
                              "--mode legacy")
        from flows.plan_report import plan_command
        plan_command(config, dataset, result_storage=args.result_storage, refresh=args.refresh,
                     num_cpus=args.num_cpus, explicit_api_url=_configured_api_url(),
                     ray_address=args.ray_address, out=args.out, plan_history=args.plan_history,
                     data_load_seconds=clock.timings.get("load_config_data"))
        return EXIT_OK
    out = args.out or f"runs/{Path(args.data).stem if os.sep in args.data else args.data.replace(':', '-')}-{config.fidelity}"
    from flows.locking import run_dir_lock
    link = None
    with run_dir_lock(out):       # one run at a time per output directory
        if args.mode == "legacy":
            _run_legacy(dataset, config, out)
        else:
            link = _run_two_stage(args, config, dataset, overrides, out, clock)
    code = _finish(out, strict=args.strict)
    if link:
        _say(link)        # the very last line: the run in the UI that stays up
    return code


def _finish(out: str, *, strict: bool) -> int:
    """The last lines of a run: failures and fallbacks, then the run directory; exit code."""
    from tournament.outputs import run_summary
    lines, n_failed = run_summary(out)
    for line in lines:
        print(line)
    print(Path(out).resolve(), flush=True)
    return EXIT_STRICT if strict and n_failed else EXIT_OK


class RunClock:
    """Sequential phases of one CLI run, measured from the process start (interpreter
    start-up and imports included), so the manifest accounts for the whole wall time."""

    def __init__(self) -> None:
        try:
            import psutil
            started = psutil.Process().create_time()
        except Exception:
            started = time.time()
        self.t0 = started
        self.last = started
        self.timings: dict[str, float] = {}
        self.parallel: dict[str, float] = {}    # overlapped with, or inside, a phase
        self.lap("python_start")

    def lap(self, name: str) -> float:
        now = time.time()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now
        return self.timings[name]

    def since_start(self) -> float:
        return time.time() - self.t0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile (read as TOML,
    without importing Prefect: the server launch must not wait for that import)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    import tomllib
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(name, {}).get("PREFECT_API_URL") or None


def _cache_line(cache: dict) -> str:
    """What a run computed and reused, in cells and simulations (as the manifest has it)."""
    from tournament.report.frames import cache_lines
    return "; ".join(f"{stage} {line}" for stage, line in cache_lines(cache))


def _expects_compute(args, config, dataset) -> bool:
    """Whether the run should start Ray (and warm its workers) before it knows: unless the
    same run completed on this local result storage before (flows.plan.expects_compute).
    Ray then starts beside the server's boot, or right after attaching to services."""
    from flows.plan import expects_compute, run_digest
    return expects_compute(args.result_storage,
                           run_digest(config, dataset, raced=bool(args.race)),
                           refresh=args.refresh)


def _run_two_stage(args, config, dataset, overrides: dict, out: str, clock: RunClock) -> int:
    from flows.runtime import hide_run_links
    with _services(args, clock, simulators=config.simulators, engines=config.engines,
                   needs_compute=lambda: _expects_compute(args, config, dataset)) as svc:
        from flows.tournament_flow import tournament
        if svc["ui_url"] is None:
            hide_run_links()        # a temporary server's links die with the run
        clock.lap("prefect_import")
        summary = tournament(config_path=args.config, fidelity=args.fidelity, data=args.data,
                             data_kind=args.data_kind, days=args.days, out=out,
                             ray_address=svc["ray_address"], refresh=args.refresh,
                             result_storage=args.result_storage, overrides=overrides,
                             num_cpus=args.num_cpus, shared_storage=args.shared_storage,
                             race=args.race, race_top_k=args.race_top_k,
                             race_cap=args.race_cap, race_min_tau=args.race_min_tau,
                             race_on_disagreement=args.race_on_disagreement)
        clock.lap("flow")
    clock.lap("shutdown")
    _record_cli_timings(out, clock, summary)
    _say(f"wrote {out} ({summary['status']}; {_cache_line(summary['cache'])})")
    if svc["ui_url"] and summary.get("flow_run_id"):
        return f"run: {svc['ui_url']}/runs/flow-run/{summary['flow_run_id']}"
    return None


@contextmanager
def _services(args, clock: RunClock, *, simulators, engines, needs_compute):
    """The Prefect API (and Ray) a CLI flow runs against: the services of `tournament up` or
    an explicit PREFECT_API_URL when there are any, else temporary ones for this command
    (Ray started beside the server's boot when `needs_compute()` says there is work).
    Yields {"ray_address", "ui_url"}; drains Prefect's workers after an attached run."""
    from contextlib import nullcontext

    from flows import services
    from flows.runtime import quiet_library_logs, start_compute, temporary_services
    quiet_library_logs()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    attached = services.find_running_services(explicit_api_url=_configured_api_url(),
                                              explicit_ray=args.ray_address)
    ray_address, ui_url = args.ray_address, None
    if attached is not None and attached.source != "temporary":
        ray_address, ui_url = attached.ray_address, attached.ui_url
        if attached.source == "up":
            _say(f"tournament: attached to the services of `tournament up`: Prefect UI {ui_url}, "
                 f"Ray {ray_address}")
        else:
            _say(f"tournament: using the Prefect API {attached.api_url}"
                 + (f" and Ray at {ray_address}" if ray_address else
                    "; Ray starts locally for this run"))
        os.environ["PREFECT_API_URL"] = attached.api_url
        if ui_url:
            os.environ["PREFECT_UI_URL"] = ui_url
        if ray_address and not args.ray_address:
            os.environ.setdefault("RAY_AUTH_MODE", "token")   # `up` keeps Ray's token auth on
        context = nullcontext(attached.api_url)
        eager = needs_compute()
        clock.lap("plan")
        if eager:
            # Attach to Ray now (counted in services_start): the workers of this run (a new
            # Ray job: new processes) start and import behind the Prefect import, the flow's
            # start and its planning.
            start_compute(ray_address, num_cpus=args.num_cpus, simulators=simulators,
                          engines=engines)
    else:
        if attached is not None and attached.note:
            _say(attached.note)
        _say("tournament: temporary Prefect server and Ray for this run; the Prefect UI closes "
             "with the run (`tournament up` keeps one running)")
        def start_ray():
            start_compute(args.ray_address, num_cpus=args.num_cpus, simulators=simulators,
                          engines=engines)

        eager = needs_compute()
        clock.lap("plan")
        context = temporary_services(start_ray=start_ray if eager else None, echo=_say,
                                     timings=clock.parallel)
    with context:
        clock.lap("services_start")
        yield {"ray_address": ray_address, "ui_url": ui_url}
        if attached is not None and attached.source != "temporary":
            from flows.runtime import drain_prefect_workers
            drain_prefect_workers()      # logs and events reach the server before we exit


def cmd_simulate(args, clock: RunClock) -> int:
    """`tournament simulate RUN_DIR`: validate everything first (nothing is started or
    written on bad input), then the `tournament-simulate` flow under the run's lock."""
    from flows.locking import run_dir_lock
    from flows.runtime import hide_run_links
    from flows.rerun import prepare_simulation
    inputs = prepare_simulation(args.run_dir, simulators=args.simulators,
                                rebalances=args.rebalances, data=args.data,
                                data_kind=args.data_kind, days=args.days)
    clock.lap("load_config_data")
    out = args.run_dir

    def needs_compute() -> bool:
        if args.refresh:
            return True
        from flows.plan import stage2_plan, uncached_count
        from tournament.stage2 import ok_strategies
        chunks = stage2_plan(inputs.config, inputs.dataset, inputs.cube,
                             ok_strategies(inputs.cube), inputs.pairs)
        missing = uncached_count(chunks, args.result_storage
                                 or inputs.manifest.get("result_storage"))
        return missing is None or missing > 0

    link = None
    with run_dir_lock(out):
        with _services(args, clock, simulators=[s for _, s in inputs.pairs], engines=(),
                       needs_compute=needs_compute) as svc:
            from flows.simulate_flow import simulate
            if svc["ui_url"] is None:
                hide_run_links()
            clock.lap("prefect_import")
            summary = simulate(run_dir=out, simulators=args.simulators,
                               rebalances=args.rebalances, result_storage=args.result_storage,
                               data=args.data, data_kind=args.data_kind, days=args.days,
                               refresh=args.refresh, ray_address=svc["ray_address"],
                               num_cpus=args.num_cpus, shared_storage=args.shared_storage)
            clock.lap("flow")
        clock.lap("shutdown")
        _record_cli_timings(out, clock, summary)
    _say(f"wrote {out} (simulate {', '.join('/'.join(p) for p in summary['pairs'])}: "
         f"{summary['status']}; 0 cells computed; "
         f"{_cache_line({'stage2': summary['cache']['stage2']})})")
    if svc["ui_url"] and summary.get("flow_run_id"):
        link = f"run: {svc['ui_url']}/runs/flow-run/{summary['flow_run_id']}"
    code = _finish(out, strict=args.strict)
    if link:
        _say(link)
    return code


def _record_cli_timings(out: str, clock: RunClock, summary: dict) -> None:
    """The manifest's timings: the CLI's sequential phases with the flow's phases inside
    `flow` broken out, so the entries add up to the wall time up to this write."""
    from tournament.outputs import update_manifest
    flow_phases = dict(summary.get("timings", {}))
    parallel = {**clock.parallel, **flow_phases.pop("parallel", {})}
    flow_total = clock.timings.pop("flow", 0.0)
    inner = sum(v for v in flow_phases.values() if isinstance(v, (int, float)))
    timings = {**clock.timings, **flow_phases, "flow_overhead": max(flow_total - inner, 0.0)}
    if "first_submit_epoch" in parallel:    # start-up: process start -> first task submitted
        parallel["startup"] = parallel.pop("first_submit_epoch") - clock.t0
    timings["parallel"] = parallel
    timings["total"] = clock.since_start()
    try:
        update_manifest(out, timings=timings)
    except FileNotFoundError:
        pass


def _run_legacy(dataset, config, out: str) -> int:
    from tournament.leaderboard import leaderboard_text
    from tournament.outputs import finalize_run
    from tournament.pipeline import run_legacy
    result = run_legacy(dataset, config)
    manifest = {"mode": "legacy", "config": config.to_dict(), "config_digest": config.digest(),
                "data": dataset.describe(),
                "timings": result.timings}
    results = finalize_run(out, cube=result.cube, results=result.results,
                           returns=result.returns, manifest=manifest,
                           periods=config.annualization)
    print(leaderboard_text(results, top=15))
    print(f"wrote {out} (legacy, {result.timings['legacy']:.1f}s)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    clock = RunClock()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, clock)
        if args.command == "simulate":
            return cmd_simulate(args, clock)
        if args.command in ("up", "down", "status"):
            from flows import services
            if args.command == "up":
                services.services_up(prefect_port=args.prefect_port, ray_port=args.ray_port,
                                     num_cpus=args.num_cpus, echo=_say)
                return EXIT_OK
            if args.command == "down":
                return services.services_down(echo=_say)
            return services.services_status(echo=print)
        if args.command == "compare":
            from tournament.compare import compare_runs, format_comparison
            print(format_comparison(compare_runs(args.run_a, args.run_b), limit=args.limit))
            return EXIT_OK
        if args.command == "verify-ledger":
            from tournament.ledger import verify_ledger
            from tournament.schema import LEDGER
            report = verify_ledger(Path(args.run_dir) / LEDGER)
            print(report.summary())
            return EXIT_OK if report.ok else EXIT_CRASH
    except TournamentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        from tournament.race import RaceStopped
        stopped = exc if isinstance(exc, RaceStopped) else getattr(exc, "__cause__", None)
        if isinstance(stopped, RaceStopped):
            print(f"error: {stopped}", file=sys.stderr)
            return EXIT_RACE_STOPPED
        raise
    return EXIT_CRASH


def entry() -> None:
    """Console-script entry: run, flush, and leave without interpreter teardown.

    Everything this process started has been stopped explicitly by then (temporary services,
    Ray, Prefect's log and event workers). Teardown only runs C++ static destructors, and one
    of the loaded libraries occasionally aborts there ("terminate called without an active
    exception", exit -6, seen once in 4 legacy runs after all outputs were written); it also
    costs ~1 s."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
