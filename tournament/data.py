"""Returns data: load (bundled S&P 500, synthetic, Parquet/CSV), validate, fingerprint.

Conventions
-----------
* A `Dataset` holds simple close-to-close returns: row t is the return from close t-1 to
  close t. Values are a C-contiguous float64 array (dates x assets).
* Missing values policy (point-in-time): NaN marks a day without a price (asset not trading
  / not listed). `Dataset.available` (= finite returns) is the availability mask: an asset
  with any unavailable day inside a training window is left out of that window only. A held
  asset is carried at its last price: it earns 0% on a day without a price, and the day the
  price returns it earns `p_after / p_last - 1`, so no move across a gap is lost (from
  prices 100, 100, NaN, 50 the returns are 0, NaN, -0.5). A returns file cannot say what
  happened during its own gaps: a NaN return earns 0% and the next given return is used as is.
  Infinite values are always an error.

Default length per source (`default_days`, the ONE table the CLI, the flow, the blocks and the
deployments use; `days` given explicitly trims from the end):

    sp500                  the last 500 trading days (DEFAULT_SP500_DAYS)
    synthetic:DAYSxASSETS  its DAYS (plain `synthetic`: SYNTHETIC_SHAPE)
    PATH (.csv/.parquet)   every row of the file
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .config_fields import DEFAULT_SP500_DAYS   # defined beside the config: the CLI reads it
from .errors import DataError

BUNDLED = "sp500"
SYNTHETIC = "synthetic"
SYNTHETIC_SHAPE = (1000, 100)     # plain `synthetic` = synthetic:1000x100


@dataclass(frozen=True, eq=False)
class Dataset:
    returns: np.ndarray               # T x N float64, NaN = gap
    dates: pd.DatetimeIndex           # T trading dates
    assets: tuple[str, ...]           # N asset names
    source: str                       # where it came from (file path, "sp500", ...)
    benchmark: np.ndarray | None = None   # T benchmark returns (buy-and-hold baseline)
    benchmark_name: str | None = None

    @property
    def available(self) -> np.ndarray:
        """T x N availability mask: True where the asset has a price that day."""
        return np.isfinite(self.returns)

    @property
    def n_days(self) -> int:
        return self.returns.shape[0]

    @property
    def n_assets(self) -> int:
        return self.returns.shape[1]

    def __post_init__(self):
        # Immutable: a dataset is shared (and fingerprinted); nobody may edit it in place.
        self.returns.setflags(write=False)

    def frame(self) -> pd.DataFrame:
        """A writable copy as a DataFrame (dates x assets)."""
        return pd.DataFrame(self.returns.copy(), index=self.dates, columns=list(self.assets))

    def describe(self) -> dict:
        """What a manifest records about the data."""
        return {"source": self.source, "fingerprint": self.fingerprint, "days": self.n_days,
                "assets": self.n_assets, "start": str(self.dates[0].date()),
                "end": str(self.dates[-1].date()), "benchmark": self.benchmark_name}

    @cached_property
    def fingerprint(self) -> str:
        """Digest of values, index, columns and dtypes (any change -> new fingerprint)."""
        h = hashlib.sha256()
        h.update(str(self.returns.dtype).encode() + str(self.returns.shape).encode())
        h.update(np.ascontiguousarray(self.returns).tobytes())
        h.update(self.dates.asi8.tobytes() + str(self.dates.dtype).encode())
        h.update("\x1f".join(self.assets).encode())
        if self.benchmark is not None:
            h.update(str(self.benchmark_name).encode() + self.benchmark.tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------- constructors
def from_returns_frame(frame: pd.DataFrame, *, source: str, benchmark: pd.Series | None = None,
                       ) -> Dataset:
    validate_frame(frame, source=source, kind="returns")
    values = np.ascontiguousarray(frame.to_numpy(dtype=np.float64))
    bench = None
    if benchmark is not None:
        bench = np.ascontiguousarray(benchmark.reindex(frame.index).to_numpy(dtype=np.float64))
    return Dataset(values, pd.DatetimeIndex(frame.index), tuple(map(str, frame.columns)), source,
                   bench, None if benchmark is None else str(benchmark.name))


def from_prices_frame(prices: pd.DataFrame, *, source: str, benchmark: pd.Series | None = None,
                      ) -> Dataset:
    validate_frame(prices, source=source, kind="prices")
    returns = returns_from_prices(prices)
    bench = None if benchmark is None else returns_from_prices(benchmark)
    return from_returns_frame(returns, source=source, benchmark=bench)


def skfolio_bundled_csv(name: str) -> pd.DataFrame:
    """One of skfolio's bundled CSV files, read as `skfolio.datasets` reads it, but without
    importing skfolio (which pulls in sklearn, scipy.stats and cvxpy: ~3-6 s per run)."""
    import gzip
    import importlib.util
    spec = importlib.util.find_spec("skfolio")     # a top-level find_spec imports nothing
    path = Path(spec.origin).parent / "datasets" / "data" / name
    with gzip.open(path, mode="rt", encoding="utf-8") as fh:
        frame = pd.read_csv(fh, sep=",", index_col=0)
    frame.index = pd.to_datetime(frame.index, format="%Y-%m-%d")
    return frame


def returns_from_prices(prices: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    """Row t = p_t / (last price known before t) - 1; NaN on a day without a price.

    The first row (no previous price) is dropped. Before an asset's first price there is
    no last price either, so those days stay NaN (not listed)."""
    last_known = prices.ffill().shift(1)
    return (prices / last_known - 1).iloc[1:]


def load_bundled_sp500(days: int | None = DEFAULT_SP500_DAYS) -> Dataset:
    """skfolio's bundled S&P 500 data (20 real stocks, daily, offline) + the index."""
    prices = skfolio_bundled_csv("sp500_dataset.csv.gz")
    index = skfolio_bundled_csv("sp500_index.csv.gz").iloc[:, 0].rename("SP500")
    if days is not None:
        prices, index = prices.iloc[-(days + 1):], index.iloc[-(days + 1):]
    return from_prices_frame(prices, source=BUNDLED, benchmark=index)


def make_synthetic(n_days: int = 2500, n_assets: int = 500, *, n_factors: int = 5,
                   seed: int = 7, start: str = "2010-01-04") -> Dataset:
    """Seeded factor-model returns: r = B f + e, with fat-ish tails and a market factor.

    Deterministic for a given (n_days, n_assets, n_factors, seed).
    """
    rng = np.random.default_rng(seed)
    factor_vol = np.r_[0.010, np.full(n_factors - 1, 0.004)]
    factors = rng.standard_t(df=5, size=(n_days, n_factors)) * factor_vol * np.sqrt(3 / 5)
    loadings = rng.normal(0.0, 1.0, size=(n_assets, n_factors))
    loadings[:, 0] = rng.uniform(0.5, 1.5, size=n_assets)         # market beta
    idio_vol = rng.uniform(0.008, 0.025, size=n_assets)
    drift = rng.normal(0.0003, 0.0004, size=n_assets)
    noise = rng.standard_normal((n_days, n_assets)) * idio_vol
    returns = drift + factors @ loadings.T + noise
    dates = pd.bdate_range(start, periods=n_days, name="date")
    assets = [f"S{i:04d}" for i in range(n_assets)]
    market = pd.Series(factors[:, 0] + 0.0003, index=dates, name="MARKET")
    frame = pd.DataFrame(returns, index=dates, columns=assets)
    return from_returns_frame(frame, source=f"{SYNTHETIC}:{n_days}x{n_assets}:seed{seed}",
                              benchmark=market)


def is_url(path: str | Path) -> bool:
    """An fsspec URL (s3://, gs://, memory://, file://...) rather than a local path."""
    return "://" in str(path)


def _open_file(src: str):
    """(opener, size) of a local path or an fsspec URL; DataError if it is not a file."""
    if is_url(src):
        import fsspec
        try:
            fs, fpath = fsspec.core.url_to_fs(src)
            found = fs.isfile(fpath)
        except Exception as exc:  # noqa: BLE001 - unknown protocol, missing driver, auth
            raise DataError(f"data error in {src}: cannot open ({type(exc).__name__}: "
                            f"{exc})") from None
        if not found:
            raise DataError(f"data error in {src}: file not found")
        return (lambda: fs.open(fpath, "rb")), fs.size(fpath)
    p = Path(src)
    if not p.is_file():
        raise DataError(f"data error in {src}: file not found")
    return (lambda: open(p, "rb")), p.stat().st_size


def load_file(path: str | Path, *, kind: str = "prices") -> Dataset:
    """Load a dates x assets matrix from Parquet or CSV (first column or index = dates),
    from a local path or an fsspec URL (s3://bucket/prices.parquet)."""
    src = str(path)
    if kind not in ("prices", "returns"):
        raise DataError(f"data error in {src}: kind must be 'prices' or 'returns', got {kind!r}")
    opener, size = _open_file(src)
    if size == 0:
        raise DataError(f"data error in {src}: file is empty")
    suffix = Path(src.split("?", 1)[0]).suffix.lower()
    try:
        if suffix == ".parquet":
            with opener() as fh:
                frame = pd.read_parquet(fh)
        elif suffix == ".csv":
            with opener() as fh:
                frame = pd.read_csv(fh)
        else:
            raise DataError(f"data error in {src}: unsupported file type {suffix!r}; "
                            "use .parquet or .csv")
    except DataError:
        raise
    except Exception as exc:  # pyarrow/pandas parse errors: report, don't traceback
        raise DataError(f"data error in {src}: cannot read as {suffix[1:]} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    frame = _with_date_index(frame, src)
    if kind == "prices":
        return from_prices_frame(frame, source=src)
    return from_returns_frame(frame, source=src)


def synthetic_shape(data: str) -> tuple[int, int]:
    """(DAYS, ASSETS) of `synthetic[:DAYSxASSETS]`."""
    if ":" not in data:
        return SYNTHETIC_SHAPE
    try:
        t, n = data.split(":", 1)[1].lower().split("x")
        return int(t), int(n)
    except ValueError:
        raise DataError(f"data error in {data}: expected synthetic:DAYSxASSETS, "
                        "e.g. synthetic:2500x500") from None


def default_days(data: str) -> int | None:
    """The default length of a source (module docstring table); None = every row."""
    if data == BUNDLED:
        return DEFAULT_SP500_DAYS
    if data == SYNTHETIC or data.startswith(SYNTHETIC + ":"):
        return synthetic_shape(data)[0]
    return None


def resolve_days(data: str, days: int | None) -> int | None:
    """`days` as given by a caller: None = the source's default; 0 = the whole history."""
    if days is None:
        return default_days(data)
    return days or None


def load_dataset(data: str = BUNDLED, *, days: int | None = None, kind: str = "prices",
                 seed: int = 7) -> Dataset:
    """Resolve the CLI's `--data sp500|synthetic[:DAYSxASSETS]|PATH` (+ `--days`).

    `days=None` gives the source's default length (`default_days`), `days=0` the whole
    history, a number the last `days` rows. A synthetic series is generated at its declared
    DAYS and trimmed from the end, so `--days` never changes the values of the days it keeps."""
    days = resolve_days(data, days)
    if data == BUNDLED:
        return load_bundled_sp500(days)
    if data == SYNTHETIC or data.startswith(SYNTHETIC + ":"):
        n_days, n_assets = synthetic_shape(data)
        ds = make_synthetic(n_days, n_assets, seed=seed)
    else:
        ds = load_file(data, kind=kind)
    if days is not None and ds.n_days > days:
        ds = _tail(ds, days)
    return ds


def _tail(ds: Dataset, days: int) -> Dataset:
    bench = None if ds.benchmark is None else ds.benchmark[-days:].copy()
    return Dataset(np.ascontiguousarray(ds.returns[-days:]), ds.dates[-days:], ds.assets,
                   ds.source, bench, ds.benchmark_name)


# ---------------------------------------------------------------- validation
def _with_date_index(frame: pd.DataFrame, src: str) -> pd.DataFrame:
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(f"data error in {src}: no rows or no columns")
    if not isinstance(frame.index, pd.DatetimeIndex):
        date_col = next((c for c in frame.columns if str(c).lower() in ("date", "dates", "datetime")),
                        frame.columns[0])
        raw = frame[date_col]
        parsed = pd.to_datetime(raw, errors="coerce", format="mixed") if raw.dtype == object \
            else pd.to_datetime(raw, errors="coerce")
        bad = parsed.isna() & raw.notna() | raw.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"data error in {src}: column {date_col!r} row {i + 1}: "
                            f"{raw.iloc[i]!r} is not a date")
        frame = frame.drop(columns=[date_col])
        frame.index = pd.DatetimeIndex(parsed, name="date")
    return frame


def validate_frame(frame: pd.DataFrame, *, source: str, kind: str) -> None:
    """One clear error per problem, naming file, column and date. Runs before compute."""
    src = f"data error in {source}"
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(f"{src}: no rows or no columns")
    idx = frame.index
    if not isinstance(idx, pd.DatetimeIndex):
        raise DataError(f"{src}: index is not dates ({idx.dtype})")
    dup = idx[idx.duplicated()]
    if len(dup):
        raise DataError(f"{src}: duplicate date {dup[0].date()}")
    if not idx.is_monotonic_increasing:
        pos = int(np.flatnonzero(np.diff(idx.asi8) < 0)[0]) + 1
        raise DataError(f"{src}: dates not sorted: {idx[pos].date()} comes after {idx[pos - 1].date()}")
    cols = [str(c) for c in frame.columns]
    if len(set(cols)) != len(cols):
        raise DataError(f"{src}: duplicate column names")
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col]):
            raise DataError(f"{src}: column {col!r} is not numeric ({frame[col].dtype})")
    values = frame.to_numpy(dtype=np.float64)
    inf = np.isinf(values)
    if inf.any():
        r, c = map(int, np.argwhere(inf)[0])
        raise DataError(f"{src}: column {cols[c]!r} date {idx[r].date()}: infinite value")
    empty = np.isnan(values).all(axis=0)
    if empty.any():
        raise DataError(f"{src}: column {cols[int(np.flatnonzero(empty)[0])]!r} has no values")
    if kind == "prices":
        bad = ~np.isnan(values) & (values <= 0)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise DataError(f"{src}: column {cols[c]!r} date {idx[r].date()}: "
                            f"non-positive price {float(values[r, c])!r}")
    else:
        bad = ~np.isnan(values) & (values <= -1)
        if bad.any():
            r, c = map(int, np.argwhere(bad)[0])
            raise DataError(f"{src}: column {cols[c]!r} date {idx[r].date()}: "
                            f"return {float(values[r, c])!r} <= -100%")


def validate_for_config(ds: Dataset, config) -> None:
    """Checks that need both data and config (enough rows for a window, enough assets)."""
    from .windows import first_row
    src = f"data error in {ds.source}"
    need = config.windows.train + config.windows.test
    rows = ds.n_days - first_row(ds.dates, config.windows.start)
    since = f" from [windows] start {config.windows.start}" if config.windows.start else ""
    if rows < need:
        raise DataError(f"{src}: {rows} return rows{since}, fewer than one window needs "
                        f"(train {config.windows.train} + test {config.windows.test} = {need})")
    if ds.n_assets < 2:
        raise DataError(f"{src}: {ds.n_assets} asset(s); a tournament needs at least 2")
    for mode in config.selections:
        if mode != "all" and ds.n_assets < config.top_k:
            raise DataError(f"{src}: {ds.n_assets} assets, fewer than selection {mode!r} needs "
                            f"(top_k = {config.top_k})")
