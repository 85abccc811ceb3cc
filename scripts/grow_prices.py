"""Grow a prices file by whole trading days, as a nightly data feed would (issue 15).

    python scripts/grow_prices.py data/prices.parquet --init 400        # create: 400 days
    python scripts/grow_prices.py data/prices.parquet --append 1        # one more night
    python scripts/grow_prices.py data/prices.csv --source synthetic:50 --seed 3 --init 300

The file holds dates x assets close prices (a `date` column first), Parquet or CSV by its
suffix: what `tournament run --data PATH` and the nightly deployment's DataSourceBlock read.
The rows come from a fixed source series, so a file grown night by night holds exactly the
rows of a file created at its final length:

* `sp500` (default): the bundled 20 real S&P 500 stocks (skfolio, offline), from row
  `--offset` of the bundle (default: 1200 rows before its end, so there is room to grow);
* `synthetic:N`: seeded synthetic prices of N assets (tournament.data.make_synthetic over a
  fixed horizon of 5000 days, compounded from 100), so appended rows never depend on how
  many were asked for.

Appending writes through a temp file and a rename: a reader never sees half a file. The
tournament validates the file (duplicates, gaps, NaN) before it computes anything.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYNTHETIC_HORIZON = 5000
SP500_ROOM = 1200


def source_prices(source: str = "sp500", *, seed: int = 7, offset: int | None = None
                  ) -> pd.DataFrame:
    """The full source series (dates x assets prices) rows are taken from, in order."""
    if source == "sp500":
        from tournament.data import skfolio_bundled_csv
        prices = skfolio_bundled_csv("sp500_dataset.csv.gz")
        start = len(prices) - SP500_ROOM if offset is None else offset
        return prices.iloc[start:]
    if source.startswith("synthetic:"):
        from tournament.data import make_synthetic
        n_assets = int(source.split(":", 1)[1])
        ds = make_synthetic(SYNTHETIC_HORIZON, n_assets, seed=seed)
        values = 100.0 * np.cumprod(1.0 + ds.returns, axis=0)
        return pd.DataFrame(values, index=ds.dates, columns=list(ds.assets))
    raise SystemExit(f"grow_prices: unknown source {source!r}; valid: sp500, synthetic:N")


def read_prices(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    frame["date"] = pd.to_datetime(frame["date"])
    return frame.set_index("date")


def write_prices(path: Path, prices: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = prices.rename_axis("date").reset_index()
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False, date_format="%Y-%m-%d")
    os.replace(tmp, path)


def grow(path: str | Path, *, init: int = 400, append: int = 0, source: str = "sp500",
         seed: int = 7, offset: int | None = None) -> pd.DataFrame:
    """Create `path` with the source's first `init` rows, or append its next `append` rows
    after the file's last date. Returns the prices now in the file."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise SystemExit(f"grow_prices: {path}: use a .parquet or .csv file")
    series = source_prices(source, seed=seed, offset=offset)
    if not path.exists():
        if init > len(series):
            raise SystemExit(f"grow_prices: the source has {len(series)} rows, not {init}")
        prices = series.iloc[:init]
    else:
        prices = read_prices(path)
        last = series.index.get_indexer([prices.index[-1]])[0]
        if last < 0:
            raise SystemExit(f"grow_prices: {path}: its last date {prices.index[-1].date()} is "
                             f"not in source {source!r} (another source or seed?)")
        new = series.iloc[last + 1:last + 1 + append]
        if len(new) < append:
            raise SystemExit(f"grow_prices: source {source!r} has only {len(new)} more rows")
        prices = pd.concat([prices, new.reindex(columns=prices.columns)])
    write_prices(path, prices)
    return prices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--init", type=int, default=400, help="rows of a new file (default 400)")
    parser.add_argument("--append", type=int, default=1,
                        help="trading days to append to an existing file (default 1)")
    parser.add_argument("--source", default="sp500", help="sp500 | synthetic:N_ASSETS")
    parser.add_argument("--seed", type=int, default=7, help="synthetic source seed")
    parser.add_argument("--offset", type=int, help="sp500: first bundle row of the series")
    args = parser.parse_args(argv)
    existed = Path(args.path).exists()
    prices = grow(args.path, init=args.init, append=args.append, source=args.source,
                  seed=args.seed, offset=args.offset)
    verb = f"appended {args.append} day(s) to" if existed else "created"
    print(f"{verb} {args.path}: {len(prices)} days, {prices.index[0].date()} .. "
          f"{prices.index[-1].date()}, {prices.shape[1]} assets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
