"""Fault catalogue #5: bad data and bad config through the CLI. Each is refused before any
server starts: exit code 2, ONE stderr line `error: ...` naming the file/field and the
problem, and an earlier run's outputs in the same --out directory are untouched."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(240)


def _prices(n=300, assets=("A", "B", "C")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-01", periods=n, name="date")
    values = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n, len(assets))), axis=0))
    return pd.DataFrame(values, index=dates, columns=list(assets))


def _cases(d: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (extra CLI args, substrings the single error line must contain)."""
    good = d / "good.csv"
    _prices().to_csv(good)
    (d / "prices.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    (d / "empty.csv").write_text("")
    _prices(assets=("ONLY",)).to_csv(d / "one_asset.csv")
    txt = _prices().to_csv().splitlines()
    txt[3] = "yesterday" + txt[3][txt[3].index(","):]
    (d / "string_dates.csv").write_text("\n".join(txt) + "\n")
    dup = _prices()
    dup.index = dup.index[:5].append(dup.index[4:-1])
    dup.to_csv(d / "dup_dates.csv")
    nan_col = _prices()
    nan_col["B"] = np.nan
    nan_col.to_csv(d / "nan_column.csv")
    nonpos = _prices()
    nonpos.iloc[10, 0] = 0.0
    nonpos.to_csv(d / "nonpositive.csv")
    (d / "misspelt.toml").write_text("[windows]\ntrian = 100\n")
    (d / "empty_list.toml").write_text("[grid]\nengines = []\n")
    (d / "section.toml").write_text("[grd]\nengines = ['custom']\n")
    date0 = str(dup.index[4].date())
    nonpos_date = str(nonpos.index[10].date())
    return {
        "wrong file type": (["--data", str(d / "prices.xlsx")],
                            ["prices.xlsx", "unsupported file type '.xlsx'", ".parquet or .csv"]),
        "empty file": (["--data", str(d / "empty.csv")], ["empty.csv", "file is empty"]),
        "one asset": (["--data", str(d / "one_asset.csv"), "--selections", "all"],
                      ["one_asset.csv", "1 asset(s)", "at least 2"]),
        "dates as strings": (["--data", str(d / "string_dates.csv")],
                             ["string_dates.csv", "column 'date' row 3", "'yesterday' is not a date"]),
        "duplicate dates": (["--data", str(d / "dup_dates.csv")],
                            ["dup_dates.csv", f"duplicate date {date0}"]),
        "NaN-only column": (["--data", str(d / "nan_column.csv")],
                            ["nan_column.csv", "column 'B' has no values"]),
        "non-positive price": (["--data", str(d / "nonpositive.csv")],
                               ["nonpositive.csv", f"column 'A' date {nonpos_date}",
                                "non-positive price"]),
        "misspelt config key": (["--config", str(d / "misspelt.toml")],
                                ["misspelt.toml", "unknown key in [windows] 'trian'", "train"]),
        "unknown engine": (["--engines", "custom,cvxpy"],
                           ["engines", "unknown name 'cvxpy'", "skfolio"]),
        "empty list": (["--config", str(d / "empty_list.toml")],
                       ["empty_list.toml", "[grid] engines", "must not be empty"]),
        "unknown section": (["--config", str(d / "section.toml")],
                            ["section.toml", "unknown section '[grd]'", "[grid]"]),
        "days too few": (["--data", str(good), "--days", "100"],
                         ["good.csv", "100 return rows", "train 180 + test 40 = 220"]),
    }


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_input_catalogue_exit_2_one_clear_line_and_earlier_outputs_untouched(tmp_path):
    cases = _cases(tmp_path)
    # An earlier run's outputs in the --out directory every bad run points at.
    out = tmp_path / "earlier-run"
    out.mkdir()
    for name in ("results.parquet", "cells.parquet", "manifest.json", "tournament_state.json",
                 "weights_cube.pkl", "report.html"):
        (out / name).write_bytes(f"earlier {name}".encode())
        os.utime(out / name, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = _snapshot(out)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = str(REPO)
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *args, "--out", str(out),
         "--result-storage", str(tmp_path / "cache")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (args, _) in cases.items()}
    problems = []
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        lines = [line for line in stderr.splitlines() if line.strip()]
        expected = cases[name][1]
        if proc.returncode != 2:
            problems.append(f"{name}: exit {proc.returncode}, expected 2; stderr:\n{stderr[-1500:]}")
        elif len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{name}: stderr is not ONE 'error: ...' line:\n{stderr[-1500:]}")
        elif missing := [e for e in expected if e not in lines[0]]:
            problems.append(f"{name}: {lines[0]!r} lacks {missing}")
        if stdout.strip():
            problems.append(f"{name}: unexpected stdout {stdout[:300]!r}")
    assert problems == [], "\n".join(problems)
    assert _snapshot(out) == before, "a refused run touched the earlier run's outputs"
    assert not (tmp_path / "cache").exists(), "a refused run created result storage"


@pytest.mark.parametrize("kind,value,text", [("prices", 0.0, "non-positive price 0.0"),
                                             ("returns", -1.5, "return -1.5 <= -100%")])
def test_bad_values_are_printed_as_plain_numbers(kind, value, text):
    from tournament.data import validate_frame
    from tournament.errors import DataError
    frame = _prices()
    frame.iloc[10, 0] = value
    with pytest.raises(DataError) as err:
        validate_frame(frame, source="x.csv", kind=kind)
    assert text in str(err.value) and "np.float64" not in str(err.value)
