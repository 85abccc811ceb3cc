"""The run as Markdown (the `-summary` artifact) and the leaderboard as JSON-safe rows (the
`-leaderboard` table artifact); tasks/artifacts.py publishes both."""
from __future__ import annotations

from pathlib import Path

from ..leaderboard import STRATEGY, leaderboard_columns, leaderboard_frame
from ..schema import REPORT_HTML
from .format import json_safe, md, md_table
from .frames import (REFERENCE_SIMULATOR, agreement_frame, column_measures, confidence_view,
                     failures_frames, fallback_frame, race_view, status_counts, summary_items,
                     cache_lines)
from .load import load_run

# Longer tables are cut here in Markdown (report.html has them whole).
MAX_ROWS = 30


def leaderboard_table(run_dir: str | Path, top: int = 20) -> list[dict]:
    """Top `top` strategies by Sharpe (all simulators) plus the baselines, JSON-safe rows."""
    results = load_run(run_dir)["results"]
    board = leaderboard_frame(results, top=top)
    if board.empty:
        return []
    cols = leaderboard_columns(results)
    cols.insert(1, "kind")
    return [{c: json_safe(row.get(c)) for c in cols} for _, row in board.iterrows()]


def _confidence_lines(run: dict) -> list[str]:
    conf = confidence_view(run)
    if conf is None:
        return []
    out = [f"**{md(conf['sentence'])}**", "", md(conf["measure"]), ""]
    if not conf["in_set"].empty:
        out += [md_table(conf["in_set"].head(MAX_ROWS), list(conf["in_set"].columns)), ""]
        if len(conf["in_set"]) > MAX_ROWS:
            out += [f"_... {len(conf['in_set']) - MAX_ROWS} more in report.html_", ""]
    out += ["Beat equal weight (StepM): " + (md(", ".join(conf["stepm"])) or "none"),
            "", "SPA p-value per rebalance mode: " + (", ".join(
                f"{md(k)} {md(v, 'spa_pvalue')}" for k, v in conf["spa"].items())
                or "none"), ""]
    return out


def _summary_lines(run: dict) -> list[str]:
    results, cells, man = run["results"], run["cells"], run["manifest"]
    out = []
    race = race_view(man)
    if race is not None:
        out += [f"**{md(race['sentence'])}**", "",
                md_table(race["tiers"], list(race["tiers"].columns)), ""]
        out += [f"- {md(m)}" for m in race["messages"]] + [""]
    for k, v in summary_items(run):
        out.append(f"- **{md(k)}**: {md(v, k)}")
    r, c = status_counts(results), status_counts(cells)
    out.append("- **results**: " + ", ".join(f"{md(v)} {md(k)}" for k, v in r.items()))
    out.append("- **stage 1 cells**: " + ", ".join(f"{md(v)} {md(k)}" for k, v in c.items()))
    if man.get("cache"):
        out.append("- **cache**: " + "; ".join(f"{md(s)} {md(line)}"
                                               for s, line in cache_lines(man["cache"])))
    return out


def _failure_lines(results, cells) -> list[str]:
    cell_rows, result_rows = failures_frames(results, cells)
    out = []
    if cell_rows.empty and result_rows.empty:
        out.append("_none_")
    if not cell_rows.empty:
        out += ["Stage 1 cells:", "",
                md_table(cell_rows.head(MAX_ROWS), [*STRATEGY, "status", "reason", "windows"]), ""]
        if len(cell_rows) > MAX_ROWS:
            out.append(f"_... {len(cell_rows) - MAX_ROWS} more groups in report.html_")
    if not result_rows.empty:
        out += ["Stage 2 results:", "",
                md_table(result_rows.head(MAX_ROWS), [*STRATEGY, "status", "reason", "pairs"])]
        if len(result_rows) > MAX_ROWS:
            out.append(f"_... {len(result_rows) - MAX_ROWS} more groups in report.html_")
    return out


def markdown_summary(run_dir: str | Path, *, top: int = 10) -> str:
    """Summary, top strategies, failures and simulator agreement as Markdown."""
    run = load_run(run_dir)
    results, cells, man = run["results"], run["cells"], run["manifest"]
    out = [f"# Tournament run {md(man.get('run_id') or run['dir'].name)}", ""]
    out += _confidence_lines(run)
    out += _summary_lines(run)
    out += ["", f"## Top {top} strategies (Sharpe) and baselines", ""]
    board = leaderboard_frame(results, top=top)
    out.append(md_table(board, leaderboard_columns(results)) if not board.empty
               else "_no ok results_")
    if column_measures(results):
        out += ["", "Measure behind each column:", ""]
        out += [f"- **{md(c)}**: {md(m)}" for c, m in column_measures(results)]
    out += ["", "## Failed and unsupported", ""]
    out += _failure_lines(results, cells)
    fallbacks = fallback_frame(cells)
    out += ["", f"## Fallback windows ({len(fallbacks)})", ""]
    out.append(md_table(fallbacks, list(fallbacks.columns)) if not fallbacks.empty else "_none_")
    out += ["", "## Simulator agreement", ""]
    agree = agreement_frame(results)
    if agree.empty:
        sims = sorted(results["simulator"].dropna().unique()) if not results.empty else []
        out.append(f"_only one simulator ran ({md(', '.join(sims) or 'none')}): nothing to compare_")
    else:
        out.append(f"Worst 10 of {len(agree)} (relative difference vs {REFERENCE_SIMULATOR}):")
        out += ["", md_table(agree.head(10), list(agree.columns))]
    out += ["", f"Full report: `{md((run['dir'] / REPORT_HTML).resolve())}`", ""]
    return "\n".join(out)
