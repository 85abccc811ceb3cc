"""report.html: one self-contained page, one function per section.

No external references: the CSS (report.css, beside this module) is inlined and the charts
are base64 PNGs. All text that comes from data is HTML-escaped.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..leaderboard import leaderboard_columns
from ..schema import REPORT_HTML, atomic_write
from .charts import chart_images
from .format import esc, fmt, number
from .frames import (REFERENCE_SIMULATOR, agreement_frame, column_measures, confidence_view,
                     failures_frames, fallback_frame, race_view, selections, simulator_board,
                     simulators, status_counts, summary_items, cache_lines)
from .load import load_run

NAV = (("summary", "Summary"), ("leaderboard", "Leaderboard"), ("equity", "Equity"),
       ("heatmaps", "Heatmaps"), ("agreement", "Agreement"), ("failures", "Failures"),
       ("manifest", "Manifest"))
# Manifest fields the manifest section shows on their own; the rest go under "Other".
MANIFEST_SHOWN = {"run_id", "mode", "data", "config", "config_digest", "result_storage",
                  "timings", "cache", "versions"}


def css() -> str:
    return resources.files(__package__).joinpath("report.css").read_text(encoding="utf-8")


# ============================================================================ elements
def html_table(frame: pd.DataFrame, *, columns: Iterable[str] | None = None,
               row_class: Any = None, empty: str = "none") -> str:
    if frame is None or frame.empty:
        return f'<p class="muted">{esc(empty)}</p>'
    cols = [c for c in (columns or frame.columns) if c in frame.columns]
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for _, row in frame.iterrows():
        cls = row_class(row) if row_class else ""
        cells = []
        for c in cols:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f'<td{" class=num" if num else ""}>{esc(fmt(v, c))}</td>')
        body.append(f'<tr{f" class={cls!s}" if cls else ""}>{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v, k))}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _cards(title: str, counts: dict[str, int]) -> str:
    items = "".join(f'<div class="card {esc(k)}"><b>{esc(v)}</b>{esc(k)}</div>'
                    for k, v in counts.items())
    return f"<h3>{esc(title)}</h3><div class=cards>{items}</div>"


def _muted(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def _pre_json(value: Any) -> str:
    return "<pre>" + esc(json.dumps(value, indent=2, sort_keys=True, default=str)) + "</pre>"


# ============================================================================ sections
def confidence_html(run: dict) -> str:
    """The summary's opening: the confidence-set sentence, then the list behind it."""
    conf = confidence_view(run)
    if conf is None:
        return ('<p class="muted">No confidence set: results.parquet has no mcs / stepm '
                "columns.</p>")
    return (f'<p class="headline" id="confidence-sentence">{esc(conf["sentence"])}</p>'
            f'<p class="muted">{esc(conf["measure"])}</p>'
            f"<h3>In the 95% model confidence set ({len(conf['in_set'])} of "
            f"{conf['n_strategies']}, best first)</h3>"
            + html_table(conf["in_set"], empty="none")
            + f"<h3>Beat equal weight after the Romano-Wolf step-down "
              f"({len(conf['stepm'])})</h3>"
            + (f"<p>{esc(', '.join(conf['stepm']))}</p>" if conf["stepm"]
               else '<p class="muted">none</p>')
            + "<h3>SPA p-value per rebalance mode (H0: no strategy beats "
              "all/baseline/equal_weight)</h3>" + kv_table(conf["spa"].items())
            + "".join(_muted(n) for n in conf["notes"]))


def summary_section(run: dict) -> str:
    results, cells, man = run["results"], run["cells"], run["manifest"]
    body = confidence_html(run)
    race = race_view(man)
    if race is not None:
        body += (f'<h3>Multi-fidelity race</h3><p id="race-sentence">{esc(race["sentence"])}'
                 "</p>" + html_table(race["tiers"], empty="no tiers")
                 + "".join(_muted(m) for m in race["messages"]))
    body += kv_table(summary_items(run))
    body += _cards("Stage 2 results (strategy x rebalance x simulator)", status_counts(results))
    body += _cards("Stage 1 cells (window x selection x engine x profile)", status_counts(cells))
    if man.get("cache"):
        body += "<h3>Cache</h3>" + kv_table(cache_lines(man["cache"]))
    return _section("summary", "Summary", body)


def leaderboard_section(results: pd.DataFrame, *, top: int) -> str:
    body = (f'<p class="muted">Top {top} ok strategies by Sharpe for each simulator; baselines '
            "(raw-pool equal weight, S&amp;P 500 buy-and-hold) highlighted below them.</p>")
    cols = leaderboard_columns(results)
    if column_measures(results):
        body += "<h3>The measure behind each column</h3>" + kv_table(column_measures(results))
    for sim in simulators(results):
        body += f"<h3>Simulator: {esc(sim)}</h3>" + html_table(
            simulator_board(results, sim, top=top), columns=cols, empty="no ok results",
            row_class=lambda r: "baseline" if r.get("kind") == "baseline" else "")
    if not simulators(results):
        body += '<p class="muted">no results</p>'
    return _section("leaderboard", "Leaderboard", body)


def equity_section(results: pd.DataFrame, charts: dict[str, str]) -> str:
    body = "".join(_img(charts[f"equity/{sim}"], f"equity curves {sim}")
                   for sim in simulators(results) if charts.get(f"equity/{sim}"))
    return _section("equity", "Equity curves", body or '<p class="muted">no returns</p>')


def heatmaps_section(results: pd.DataFrame, charts: dict[str, str]) -> str:
    body = ""
    for sel in selections(results):
        for sim in simulators(results):
            png = charts.get(f"heatmap/{sel}/{sim}")
            if png:
                body += f"<h3>{esc(sel)} / {esc(sim)}</h3>" + _img(png, f"sharpe heatmap {sel} {sim}")
    return _section("heatmaps", "Sharpe heatmaps", body or '<p class="muted">no strategies</p>')


def agreement_section(results: pd.DataFrame) -> str:
    agree = agreement_frame(results)
    if agree.empty:
        body = ('<p class="muted">Only one simulator ran ('
                + esc(", ".join(simulators(results)) or "none")
                + "): nothing to compare. Run with fidelity medium or high to cross-check.</p>")
    else:
        worst = agree["max rel diff final_equity"].max() if "max rel diff final_equity" in agree else np.nan
        body = (f"<p>Sharpe and final equity per simulator for each strategy and rebalance mode; "
                f"the max relative difference is against <b>{REFERENCE_SIMULATOR}</b>. Worst final-"
                f"equity difference: <b>{esc(fmt(worst, 'max rel diff'))}</b>.</p>"
                + html_table(agree))
    return _section("agreement", "Simulator agreement", body)


def failures_section(results: pd.DataFrame, cells: pd.DataFrame) -> str:
    cell_rows, result_rows = failures_frames(results, cells)
    body = ("<h3>Stage 1 cells not ok (cells.parquet)</h3>"
            + html_table(cell_rows, empty="every cell solved")
            + "<h3>Stage 2 results not ok (results.parquet)</h3>"
            + html_table(result_rows, empty="every simulation ok"))
    return _section("failures", "Failed and unsupported", body)


def fallbacks_section(cells: pd.DataFrame) -> str:
    fallbacks = fallback_frame(cells)
    body = ("<p>Windows that could not be solved and were resolved by the declared "
            "<code>on_infeasible</code> policy (not failures; results rows count them in "
            "<code>fallback_windows</code>).</p>"
            + html_table(fallbacks, empty="no fallback windows"))
    return _section("fallbacks", f"Fallback windows ({len(fallbacks)})", body)


def manifest_section(man: dict) -> str:
    if not man:
        return _section("manifest", "Manifest", '<p class="muted">manifest.json missing</p>')
    body = kv_table([("run id", man.get("run_id")), ("mode", man.get("mode")),
                     ("data fingerprint", (man.get("data") or {}).get("fingerprint")),
                     ("config digest", man.get("config_digest")),
                     ("result storage", man.get("result_storage"))])
    if man.get("timings"):
        body += "<h3>Time per stage (s)</h3>" + kv_table(
            (k, number(v)) for k, v in man["timings"].items())
    if man.get("cache"):
        body += "<h3>Cache hits</h3><pre>" + esc(json.dumps(man["cache"], indent=2, sort_keys=True)) + "</pre>"
    if man.get("versions"):
        body += "<h3>Library versions</h3>" + kv_table(sorted(man["versions"].items()))
    if man.get("data"):
        body += "<h3>Data</h3>" + _pre_json(man["data"])
    if man.get("config"):
        body += "<h3>Config</h3>" + _pre_json(man["config"])
    rest = {k: v for k, v in man.items() if k not in MANIFEST_SHOWN}
    if rest:
        body += "<h3>Other manifest fields</h3>" + _pre_json(rest)
    return _section("manifest", "Manifest", body)


# ============================================================================ the page
def render_html(run_dir: str | Path, *, top: int = 10,
                charts: dict[str, str] | None = None) -> str:
    """The report page; `charts` (from chart_images) skips drawing when already known."""
    run = load_run(run_dir)
    results, returns, cells = run["results"], run["returns"], run["cells"]
    charts = chart_images(results, returns) if charts is None else charts
    sections = [summary_section(run), leaderboard_section(results, top=top),
                equity_section(results, charts), heatmaps_section(results, charts),
                agreement_section(results), failures_section(results, cells),
                fallbacks_section(cells), manifest_section(run["manifest"])]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in NAV)
    title = f"Portfolio tournament report: {run['dir'].name}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>\n{css()}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"muted\">generated {esc(generated)} from "
            f"{esc(run['dir'].resolve())}</p><nav>{nav}</nav>{''.join(sections)}"
            "</main></body></html>\n")


def write_report(run_dir: str | Path, *, top: int = 10,
                 charts: dict[str, str] | None = None) -> Path:
    """Write `report.html` (self-contained) into the run directory; returns its path."""
    run = Path(run_dir)
    text = render_html(run, top=top, charts=charts)
    path = run / REPORT_HTML
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
