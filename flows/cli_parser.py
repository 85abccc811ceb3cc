"""The `tournament` command's arguments: subcommands, and one flag per config field
(tournament.config_fields), so the CLI offers exactly what the config accepts."""
from __future__ import annotations

import argparse

from tournament.config_fields import DATA_KINDS, DEFAULT_SP500_DAYS, FIELDS, NOT_IN_OVERRIDES
from tournament.registry import REBALANCE_MODES, SIMULATORS

# What `tournament --help` opens with: the exit codes (flows/cli.py returns them).
HELP = """`tournament` command line.

Exit codes: 0 = the tournament completed and wrote all outputs, even if some strategies
failed (the last lines list failed strategies and fallback windows, then the run directory);
1 = the run itself failed; 2 = bad input (config/data), nothing computed or overwritten;
3 = with --strict only: completed, but some strategy failed. Fallback windows (resolved by
--on-infeasible hold|cash) are not failures.
"""


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tournament", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a tournament (Stage 1 cube + Stage 2 simulations)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--config", help="TOML config file (see configs/default.toml)")
    run.add_argument("--data", default="sp500",
                     help="sp500 (bundled, offline) | synthetic[:DAYSxASSETS] | PATH (.csv/.parquet)")
    run.add_argument("--data-kind", default=DATA_KINDS[0], choices=DATA_KINDS,
                     help="what a data file holds")
    run.add_argument("--days", type=int, help="keep the last N trading days (default: sp500 "
                     f"{DEFAULT_SP500_DAYS}, synthetic its DAYS, a file every row; 0 = whole history)")
    run.add_argument("--out", help="run directory (default runs/<data>-<fidelity>)")
    run.add_argument("--ray-address", help="existing Ray cluster (e.g. auto or host:6379)")
    run.add_argument("--mode", default="two-stage", choices=["two-stage", "legacy"])
    run.add_argument("--refresh", action="store_true", help="ignore cached results, recompute")
    run.add_argument("--result-storage", help="Prefect result storage: path, fsspec URL or "
                     "storage block slug such as local-file-system/NAME (default: "
                     "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK if set, else .tournament-cache/results)")
    run.add_argument("--shared-storage", action="store_true",
                     help="declare a local --result-storage path as shared by all cluster nodes")
    run.add_argument("--num-cpus", type=int, help="local Ray CPUs (default: all)")
    run.add_argument("--race", action="store_true",
                     help="multi-fidelity racing: the cheapest tier on every strategy, each "
                     "further tier on the strategies promoted out of the one before")
    run.add_argument("--race-top-k", type=int, default=10,
                     help="best-ranked strategies promoted out of each tier (with the MCS)")
    run.add_argument("--race-cap", type=float, default=0.25,
                     help="at most this share of the strategies is promoted")
    run.add_argument("--race-min-tau", type=float, default=0.5,
                     help="Kendall tau vs the previous tier below which a tier is not trusted")
    run.add_argument("--race-on-disagreement", choices=["widen", "stop"], default="widen",
                     help="an untrusted tier promotes every strategy it ran, or stops the run")
    _add_config_flags(run)
    run.add_argument("--strict", action="store_true",
                     help="exit 3 when any strategy failed (default: 0 once the run completed)")
    run.add_argument("--plan", action="store_true",
                     help="print the grid, the cells and simulations (and which are already "
                     "in result storage) and an estimated wall time and peak memory; compute "
                     "nothing, write nothing")
    run.add_argument("--plan-history", metavar="DIR", default="runs",
                     help="--plan: earlier run directories to learn costs from (searched, "
                     "with --out's parent); none: the shipped cost model")
    up = sub.add_parser("up", help="start a detached local Prefect server and Ray head "
                        "(127.0.0.1) that later runs attach to",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server/UI port")
    up.add_argument("--ray-port", type=int, default=6390, help="Ray head (GCS) port")
    up.add_argument("--num-cpus", type=int, help="Ray CPUs (default: all)")
    sub.add_parser("down", help="stop the services `tournament up` started")
    sub.add_parser("status", help="report the services `tournament up` started")
    cmp = sub.add_parser("compare", help="what changed between two run directories, and why")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--limit", type=int, default=10, help="rows listed per section")
    sim = sub.add_parser("simulate", help="Stage 2 again on an existing run directory: add "
                         "simulators or rebalance modes without re-solving Stage 1",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sim.add_argument("run_dir", help="a run directory written by `tournament run`")
    sim.add_argument("--simulators", type=_names, help="comma list of: "
                     f"{', '.join(SIMULATORS)} (default: the run's)")
    sim.add_argument("--rebalances", type=_names, help="comma list of: "
                     f"{', '.join(REBALANCE_MODES)} (default: the run's)")
    sim.add_argument("--result-storage", help="Prefect result storage (default: the run's, "
                     "from its manifest)")
    sim.add_argument("--data", help="the run's data when the manifest's source cannot be "
                     "reloaded (e.g. a moved file); its fingerprint must match the manifest's")
    sim.add_argument("--data-kind", choices=DATA_KINDS,
                     help="what --data holds (default: tried in turn)")
    sim.add_argument("--days", type=int, help="trading days of --data (default: the run's)")
    sim.add_argument("--ray-address", help="existing Ray cluster (e.g. auto or host:6379)")
    sim.add_argument("--refresh", action="store_true", help="recompute the simulations")
    sim.add_argument("--shared-storage", action="store_true",
                     help="declare a local --result-storage path as shared by all cluster nodes")
    sim.add_argument("--num-cpus", type=int, help="local Ray CPUs (default: all)")
    sim.add_argument("--strict", action="store_true",
                     help="exit 3 when any strategy failed (default: 0 once it completed)")
    led = sub.add_parser("verify-ledger", help="check a run's hash-chained audit ledger")
    led.add_argument("run_dir")
    return p


def _add_config_flags(run: argparse.ArgumentParser) -> None:
    """One flag per config field (tournament.config_fields.FIELDS), named by its TOML key:
    --engines, --top-k, --on-infeasible... Unset (None) keeps the config file's value."""
    for spec in FIELDS:
        flag = "--" + spec.key.replace("_", "-")
        default = (",".join(spec.default) or "empty") if spec.kind == "names" else spec.default
        text = f"{spec.help} (unset: the config file's, else {default})"
        if spec.kind == "names":
            run.add_argument(flag, dest=spec.key, type=_names,
                             help=f"comma list of: {', '.join(spec.choices)}; {text}")
        elif spec.kind == "choice":
            run.add_argument(flag, dest=spec.key, choices=spec.choices, help=text)
        elif spec.kind == "date":
            run.add_argument(flag, dest=spec.key, metavar="YYYY-MM-DD", help=text)
        else:
            run.add_argument(flag, dest=spec.key, type=int if spec.kind == "int" else float,
                             help=text)


def _overrides(args) -> dict:
    """The config flags given, as `load_config(**overrides)` keywords. Fidelity is passed on
    its own (a parameter of load_config and of the flow), so it is not among them."""
    out = {}
    for spec in FIELDS:
        value = getattr(args, spec.key)
        if value is not None and spec.name not in NOT_IN_OVERRIDES:
            out[spec.name] = value
    return out
