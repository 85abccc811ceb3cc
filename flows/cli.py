"""`tournament` command line.

Exit codes: 0 = run completed, every cell ok or declared unsupported; 3 = run completed and
wrote all outputs, but some cells or simulations failed (listed in results.parquet and the
report); 2 = bad input (config/data), nothing computed or overwritten; 1 = the run crashed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tournament.errors import TournamentError
from tournament.registry import (FIDELITY_TIERS, PROFILES, REBALANCE_MODES, SELECTIONS,
                                 SIMULATORS, USER_ENGINES)

EXIT_OK, EXIT_CRASH, EXIT_BAD_INPUT, EXIT_PARTIAL = 0, 1, 2, 3


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tournament", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a tournament (Stage 1 cube + Stage 2 simulations)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--config", help="TOML config file (see configs/default.toml)")
    run.add_argument("--fidelity", choices=sorted(FIDELITY_TIERS),
                     help="low = custom; medium = + vectorbt; high = + cvxportfolio + nautilus")
    run.add_argument("--data", default="sp500",
                     help="sp500 (bundled, offline) | synthetic[:DAYSxASSETS] | PATH (.csv/.parquet)")
    run.add_argument("--data-kind", default="prices", choices=["prices", "returns"],
                     help="what a data file holds")
    run.add_argument("--days", type=int, default=500, help="use the last N trading days")
    run.add_argument("--out", help="run directory (default runs/<data>-<fidelity>)")
    run.add_argument("--ray-address", help="existing Ray cluster (e.g. auto or host:6379)")
    run.add_argument("--mode", default="two-stage", choices=["two-stage", "legacy"])
    run.add_argument("--refresh", action="store_true", help="ignore cached results, recompute")
    run.add_argument("--result-storage", help="Prefect result storage: path or fsspec URL "
                     "(default .tournament-cache/results)")
    run.add_argument("--shared-storage", action="store_true",
                     help="declare a local --result-storage path as shared by all cluster nodes")
    run.add_argument("--num-cpus", type=int, help="local Ray CPUs (default: all)")
    for name, valid in (("selections", SELECTIONS), ("engines", USER_ENGINES),
                        ("profiles", PROFILES), ("rebalances", REBALANCE_MODES),
                        ("simulators", tuple(SIMULATORS))):
        run.add_argument(f"--{name}", type=_names, help=f"comma list of: {', '.join(valid)}")
    for name in ("train", "test", "step", "top_k"):
        run.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    run.add_argument("--max-weight", dest="max_weight", type=float)
    cmp = sub.add_parser("compare", help="what changed between two run directories, and why")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--limit", type=int, default=10, help="rows listed per section")
    led = sub.add_parser("verify-ledger", help="check a run's hash-chained audit ledger")
    led.add_argument("run_dir")
    return p


def _overrides(args) -> dict:
    mapping = {"selections": "selections", "engines": "engines", "profiles": "profiles",
               "rebalances": "rebalances", "simulators": "simulator_list", "train": "train",
               "test": "test", "step": "step", "top_k": "top_k", "max_weight": "max_weight"}
    out = {}
    for arg, field in mapping.items():
        value = getattr(args, arg)
        if value is not None:
            out[field] = value
    return out


def cmd_run(args) -> int:
    from tournament.config import load_config
    from tournament.data import load_dataset, validate_for_config
    overrides = _overrides(args)
    # Validate before starting any server or writing anything.
    config = load_config(args.config, fidelity=args.fidelity, **overrides)
    dataset = load_dataset(args.data, days=args.days, kind=args.data_kind)
    validate_for_config(dataset, config)
    out = args.out or f"runs/{Path(args.data).stem if os.sep in args.data else args.data.replace(':', '-')}-{config.fidelity}"
    from flows.locking import run_dir_lock
    with run_dir_lock(out):       # one run at a time per output directory
        if args.mode == "legacy":
            return _run_legacy(dataset, config, out)
        return _run_two_stage(args, config, overrides, out)


def _run_two_stage(args, config, overrides: dict, out: str) -> int:
    from flows.runtime import init_ray, local_services, prewarm_workers, quiet_library_logs
    quiet_library_logs()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    t0 = time.perf_counter()

    def start_ray():
        init_ray(args.ray_address, num_cpus=args.num_cpus)
        prewarm_workers(config.simulators, config.engines)

    with local_services(start_ray=start_ray) as url:
        print(f"Prefect API {url} and Ray ready in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        from flows.tournament_flow import tournament
        summary = tournament(config_path=args.config, fidelity=args.fidelity, data=args.data,
                             data_kind=args.data_kind, days=args.days, out=out, ray_address=args.ray_address,
                             refresh=args.refresh, result_storage=args.result_storage,
                             overrides=overrides, num_cpus=args.num_cpus,
                             shared_storage=args.shared_storage)
    print(f"wrote {out} ({summary['status']}; cache: {summary['cache']})", file=sys.stderr)
    return EXIT_OK if summary["failed"] == 0 else EXIT_PARTIAL


def _run_legacy(dataset, config, out: str) -> int:
    from tournament.outputs import finalize_run, leaderboard
    from tournament.pipeline import run_legacy
    result = run_legacy(dataset, config)
    manifest = {"mode": "legacy", "config": config.to_dict(), "config_digest": config.digest(),
                "data": dataset.describe(),
                "timings": result.timings}
    results = finalize_run(out, cube=result.cube, results=result.results,
                           returns=result.returns, manifest=manifest,
                           periods=config.annualization)
    print(leaderboard(results, top=15).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    failed = int((results["status"] == "failed").sum())
    print(f"wrote {out} (legacy, {result.timings['legacy']:.1f}s)", file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_PARTIAL


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "compare":
            from tournament.compare import compare_runs, format_comparison
            print(format_comparison(compare_runs(args.run_a, args.run_b), limit=args.limit))
            return EXIT_OK
        if args.command == "verify-ledger":
            from tournament.ledger import LEDGER_FILE, verify_ledger
            report = verify_ledger(Path(args.run_dir) / LEDGER_FILE)
            print(report.summary())
            return EXIT_OK if report.ok else EXIT_CRASH
    except TournamentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
