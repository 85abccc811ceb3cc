"""`tournament compare RUN_A RUN_B`: what changed between two run directories, and why.

Reads from each run directory (tournament.schema): the cells and the cube's weights
(Stage 1), the results (Stage 2), the manifest, and, when present, the cache-key parts
({cache_key: key_parts}, tournament.keys). Reports

* cells: added / removed (by window_start, selection, engine, profile), status changes and
  the max absolute weight difference per common cell (assets missing on one side count as 0);
* results: added / removed rows, status changes, Sharpe and final-equity differences;
* reasons: manifest differences (data fingerprint, config fields as dotted paths, library
  versions) and, when both runs have cache_keys.json, the named key parts that differ between
  the unmatched keys of A and their counterparts in B (tournament.keys.explain_difference),
  summarised one level deep ("slice changed", "engine_params.max_sharpe changed",
  "code.custom changed", "returns changed").

Counterparts: a Stage 1 key (one cell) is paired with the B key of the same cell (window
date, selection, engine, profile), a Stage 2 key with a B key of the same (rebalance,
simulator) -- among several, the one with the fewest differing parts, then the most shared
schedule digests.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .keys import explain_difference
from .schema import (CACHE_KEYS, CELL_KEYS, CELLS, CUBE_WEIGHTS, MANIFEST, RESULT_KEYS,
                     RESULTS, RunDir)

# Manifest entries that differ on every run and explain nothing.
VOLATILE_MANIFEST = {"run_id", "timings", "cache", "result_storage", "ledger_head"}
ATOL = 1e-12

__all__ = ["compare_runs", "format_comparison"]


# ----------------------------------------------------------------------------- loading
def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _load(run: str | Path) -> dict[str, Any]:
    """Every file optional (None when missing: that part of the comparison is unavailable);
    an unreadable JSON file is an error naming it."""
    d = RunDir(run).require_dir()
    return {"dir": d.path,
            "cells": d.frame(CELLS) if d.has(CELLS) else None,
            "weights": d.frame(CUBE_WEIGHTS) if d.has(CUBE_WEIGHTS) else None,
            "results": d.frame(RESULTS) if d.has(RESULTS) else None,
            "manifest": d.json(MANIFEST) or {},
            "cache_keys": d.json(CACHE_KEYS)}


def _norm_cells(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["window_start"] = pd.to_datetime(frame["window_start"]).astype("datetime64[ns]")
    for c in CELL_KEYS[1:]:
        frame[c] = frame[c].astype(str)
    return frame


# ----------------------------------------------------------------------------- cells
def _compare_cells(a: dict, b: dict) -> dict[str, Any]:
    if a["cells"] is None or b["cells"] is None:
        return {"available": False}
    ca, cb = _norm_cells(a["cells"]), _norm_cells(b["cells"])
    m = ca[[*CELL_KEYS, "status"]].merge(cb[[*CELL_KEYS, "status"]], on=CELL_KEYS, how="outer",
                                         suffixes=("_a", "_b"), indicator=True)
    added = m[m["_merge"] == "right_only"][CELL_KEYS].reset_index(drop=True)
    removed = m[m["_merge"] == "left_only"][CELL_KEYS].reset_index(drop=True)
    common = m[m["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)
    common["max_abs_weight_diff"] = np.nan
    if a["weights"] is not None and b["weights"] is not None and not common.empty:
        wa, wb = _norm_cells(a["weights"]), _norm_cells(b["weights"])
        for w in (wa, wb):
            w["asset"] = w["asset"].astype(str)
        wm = wa[[*CELL_KEYS, "asset", "weight"]].merge(
            wb[[*CELL_KEYS, "asset", "weight"]], on=[*CELL_KEYS, "asset"], how="outer",
            suffixes=("_a", "_b"))
        wm["diff"] = (wm["weight_a"].fillna(0.0) - wm["weight_b"].fillna(0.0)).abs()
        per_cell = wm.groupby(CELL_KEYS, sort=False)["diff"].max().rename("_d")
        common = common.join(per_cell, on=CELL_KEYS)
        common["max_abs_weight_diff"] = common["_d"]
        common = common.drop(columns="_d")
    status_changed = common["status_a"] != common["status_b"]
    weights_changed = common["max_abs_weight_diff"] > ATOL
    common["changed"] = status_changed | weights_changed
    changed = common[common["changed"]].reset_index(drop=True)
    return {"available": True, "n_a": len(ca), "n_b": len(cb), "added": added,
            "removed": removed, "changed": changed, "n_changed": int(len(changed)),
            "n_status_changed": int(status_changed.sum()),
            "max_abs_weight_diff": float(common["max_abs_weight_diff"].max())
            if common["max_abs_weight_diff"].notna().any() else 0.0}


# ----------------------------------------------------------------------------- results
def _compare_results(a: dict, b: dict) -> dict[str, Any]:
    if a["results"] is None or b["results"] is None:
        return {"available": False}
    cols = [*RESULT_KEYS, "status", "sharpe", "final_equity"]
    ra = a["results"].reindex(columns=cols)
    rb = b["results"].reindex(columns=cols)
    m = ra.merge(rb, on=RESULT_KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    added = m[m["_merge"] == "right_only"][RESULT_KEYS].reset_index(drop=True)
    removed = m[m["_merge"] == "left_only"][RESULT_KEYS].reset_index(drop=True)
    common = m[m["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)
    for c in ("sharpe", "final_equity"):
        x = common[f"{c}_a"].astype(float)
        y = common[f"{c}_b"].astype(float)
        common[f"{c}_diff"] = y - x
        # Changed: differ beyond ATOL, or defined on one side only.
        common[f"{c}_changed"] = ((y - x).abs() > ATOL) | (x.isna() != y.isna())
    common["status_changed"] = common["status_a"] != common["status_b"]
    common["changed"] = (common["status_changed"] | common["sharpe_changed"]
                         | common["final_equity_changed"])
    changed = common[common["changed"]].drop(
        columns=["sharpe_changed", "final_equity_changed"]).reset_index(drop=True)
    return {"available": True, "n_a": len(ra), "n_b": len(rb), "added": added,
            "removed": removed, "changed": changed, "n_changed": int(len(changed)),
            "n_status_changed": int(common["status_changed"].sum()),
            "max_abs_sharpe_diff": float(common["sharpe_diff"].abs().max())
            if common["sharpe_diff"].notna().any() else 0.0}


# ----------------------------------------------------------------------------- reasons
def _compare_manifests(ma: dict, mb: dict) -> list[dict[str, Any]]:
    fa = {k: v for k, v in _flatten(ma).items() if k.split(".")[0] not in VOLATILE_MANIFEST}
    fb = {k: v for k, v in _flatten(mb).items() if k.split(".")[0] not in VOLATILE_MANIFEST}
    out = []
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k, "<missing>") != fb.get(k, "<missing>"):
            out.append({"field": k, "a": fa.get(k, "<missing>"), "b": fb.get(k, "<missing>")})
    return out


def _manifest_reasons(diffs: list[dict]) -> list[str]:
    reasons = []
    fields = {d["field"] for d in diffs}
    if "data.fingerprint" in fields:
        reasons.append("data changed (fingerprint)")
    config = [d for d in diffs if d["field"].startswith("config.")]
    for d in config:
        reasons.append(f"config: {d['field'][len('config.'):]} changed ({d['a']!r} -> {d['b']!r})")
    if any(f.startswith("versions.") for f in fields):
        libs = sorted(f[len("versions."):] for f in fields if f.startswith("versions."))
        reasons.append("library versions changed: " + ", ".join(libs))
    if "config_digest" in fields and not config:
        reasons.append("config changed (digest only)")
    other = sorted(f for f in fields if not f.startswith(("config.", "versions.", "data."))
                   and f != "config_digest")
    other += sorted(f for f in fields if f.startswith("data.") and f != "data.fingerprint")
    if other:
        reasons.append("manifest fields changed: " + ", ".join(other))
    return reasons


def _identity(parts: dict) -> tuple:
    """What a key computes, whatever it depends on: a Stage 1 cell (date, selection, engine,
    profile); a Stage 2 chunk's (rebalance, simulator). Runs before per-cell keys keyed
    Stage 1 by chunk (`cells`: a list of cells): those pair by (selections, engines)."""
    if parts.get("stage") == 1:
        if "cell" in parts:
            return (1, *parts["cell"])
        cells = parts.get("cells") or []
        return (1, tuple(sorted({c[1] for c in cells})), tuple(sorted({c[2] for c in cells})))
    return (parts.get("stage"), parts.get("rebalance"), parts.get("simulator"))


def _part_labels(name: str, a: Any, b: Any) -> list[str]:
    """One level deeper for mapping-valued parts: engine_params.max_sharpe, code.custom."""
    if isinstance(a, dict) and isinstance(b, dict):
        subs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if subs:
            return [f"{name}.{k} changed" for k in subs]
    return [f"{name} changed"]


def _compare_cache_keys(ka: dict | None, kb: dict | None) -> dict[str, Any]:
    if ka is None or kb is None:
        missing = [n for n, k in (("A", ka), ("B", kb)) if k is None]
        return {"available": False,
                "note": f"cache_keys.json missing in run {' and '.join(missing)}"}
    only_a = {k: v for k, v in ka.items() if k not in kb}
    only_b = {k: v for k, v in kb.items() if k not in ka}
    pool: dict[tuple, list[str]] = {}
    for k, v in only_b.items():
        pool.setdefault(_identity(v), []).append(k)
    summary: Counter = Counter()
    pairs, unmatched_a = [], []
    for key_a, pa in sorted(only_a.items()):
        cands = pool.get(_identity(pa), [])
        if not cands:
            unmatched_a.append(key_a)
            continue

        def score(kb_):
            pb = only_b[kb_]
            shared = len(set(pa.get("schedules") or []) & set(pb.get("schedules") or []))
            return (len(explain_difference(pa, pb)), -shared, kb_)

        key_b = min(cands, key=score)
        cands.remove(key_b)
        pb = only_b[key_b]
        parts = explain_difference(pa, pb)
        labels = [lab for p in parts for lab in _part_labels(p, pa.get(p), pb.get(p))]
        summary.update(labels)
        pairs.append({"key_a": key_a, "key_b": key_b, "parts": parts, "labels": labels})
    unmatched_b = sorted(k for ks in pool.values() for k in ks)
    return {"available": True, "n_a": len(ka), "n_b": len(kb),
            "n_shared": len(set(ka) & set(kb)), "pairs": pairs,
            "only_a": unmatched_a, "only_b": unmatched_b, "summary": dict(summary)}


# ----------------------------------------------------------------------------- API
def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Compare two run directories. Returns a dict:

    ``identical`` (bool: no cell, result or manifest/key difference), ``cells`` and
    ``results`` (dicts with ``added``/``removed``/``changed`` DataFrames and counts),
    ``manifest`` (list of {field, a, b}), ``cache_keys`` (pairs of differing keys with the
    named parts that differ and a ``summary`` {label: n_keys}), and ``reasons`` (list of
    human-readable causes, manifest first, then key parts with counts).
    """
    a, b = _load(run_a), _load(run_b)
    cells = _compare_cells(a, b)
    results = _compare_results(a, b)
    manifest = _compare_manifests(a["manifest"], b["manifest"])
    keys = _compare_cache_keys(a["cache_keys"], b["cache_keys"])
    reasons = _manifest_reasons(manifest)
    if keys["available"]:
        for label, n in sorted(keys["summary"].items(), key=lambda x: (-x[1], x[0])):
            reasons.append(f"{label} ({n} cache key{'s' if n != 1 else ''})")
        if keys["only_a"] or keys["only_b"]:
            reasons.append(f"work units without counterpart: {len(keys['only_a'])} only in A, "
                           f"{len(keys['only_b'])} only in B")

    def _changes(section: dict) -> int:
        if not section.get("available"):
            return 0
        return len(section["added"]) + len(section["removed"]) + section["n_changed"]

    identical = (_changes(cells) == 0 and _changes(results) == 0 and not manifest
                 and (not keys["available"] or (not keys["pairs"] and not keys["only_a"]
                                                 and not keys["only_b"])))
    return {"run_a": str(a["dir"]), "run_b": str(b["dir"]), "identical": identical,
            "cells": cells, "results": results, "manifest": manifest, "cache_keys": keys,
            "reasons": reasons}


def _fmt_keys(frame: pd.DataFrame, limit: int) -> list[str]:
    rows = ["    " + "  ".join(map(str, frame.columns))]
    for rec in frame.head(limit).to_dict("records"):
        parts = []
        for k, v in rec.items():
            if isinstance(v, pd.Timestamp):
                v = v.date()
            parts.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        rows.append("    " + "  ".join(parts))
    if len(frame) > limit:
        rows.append(f"    ... {len(frame) - limit} more")
    return rows


def _fmt_section(name: str, section: dict, header, changed_rows, limit: int, *,
                 list_added: bool = True) -> list[str]:
    """One section of the text report: its header line, the most changed rows, and (cells)
    the added and removed keys."""
    if not section.get("available"):
        return [f"{name}: not available in one of the runs"]
    lines = [f"{name}: {header()}"]
    if section["n_changed"]:
        lines += _fmt_keys(changed_rows(section["changed"]), limit)
    for what in ("added", "removed") if list_added else ():
        if len(section[what]):
            lines.append(f"  {what} {name}:")
            lines += _fmt_keys(section[what], limit)
    return lines


def format_comparison(comparison: dict[str, Any], *, limit: int = 10) -> str:
    """Plain-text report of `compare_runs` output for the CLI."""
    c = comparison
    lines = [f"compare {c['run_a']} (A) -> {c['run_b']} (B)"]
    if c["identical"]:
        lines.append("no changes: cells, weights, results and manifests are identical")
        return "\n".join(lines)
    cells = c["cells"]
    lines += _fmt_section(
        "cells", cells, lambda: (
            f"{cells['n_a']} -> {cells['n_b']}; {len(cells['added'])} added, "
            f"{len(cells['removed'])} removed, {cells['n_changed']} changed "
            f"({cells['n_status_changed']} status), max |dw| {cells['max_abs_weight_diff']:.4g}"),
        lambda ch: ch.sort_values("max_abs_weight_diff", ascending=False)[
            [*CELL_KEYS, "status_a", "status_b", "max_abs_weight_diff"]], limit)
    res = c["results"]
    lines += _fmt_section(
        "results", res, lambda: (
            f"{res['n_a']} -> {res['n_b']} rows; {len(res['added'])} added, "
            f"{len(res['removed'])} removed, {res['n_changed']} changed "
            f"({res['n_status_changed']} status), max |dSharpe| "
            f"{res['max_abs_sharpe_diff']:.4g}"),
        lambda ch: ch.assign(_abs=ch["sharpe_diff"].abs()).sort_values("_abs", ascending=False)[
            [*RESULT_KEYS, "sharpe_a", "sharpe_b", "final_equity_diff"]], limit,
        list_added=False)
    lines.append("why:")
    if c["reasons"]:
        lines += [f"  - {r}" for r in c["reasons"]]
    else:
        lines.append("  - no manifest or cache-key difference found")
    if not c["cache_keys"].get("available"):
        lines.append(f"  ({c['cache_keys']['note']}: key-part explanation unavailable)")
    return "\n".join(lines)
