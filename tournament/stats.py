"""Selection-bias and robustness statistics for the strategy tournament.

Pure numpy/scipy/pandas on purpose: these functions run inside workers and
notebooks alike, so they must not pull in the orchestration stack.

One module (~600 lines) on purpose: a collection of referenced formulas, each short and
independent, read against its paper; splitting it would only scatter the references.

Conventions
-----------
* Sharpe ratios are **per period** (not annualised) unless stated otherwise;
  the PSR/DSR formulas are derived for the per-observation estimator.
* ``kurtosis`` is the raw (non-excess) fourth standardised moment, i.e. 3 for
  a normal distribution.
* Nothing is clipped: a statistic that is undefined is returned as NaN.

References
----------
Bailey, D. H. & Lopez de Prado, M. (2012). The Sharpe Ratio Efficient Frontier.
Bailey, D. H. & Lopez de Prado, M. (2014). The Deflated Sharpe Ratio.
Bailey, D. H., Borwein, J., Lopez de Prado, M. & Zhu, Q. J. (2017).
    The Probability of Backtest Overfitting.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _sps
from scipy.cluster import hierarchy as _hier
from scipy.spatial.distance import squareform

__all__ = [
    "PBOResult",
    "cluster_strategies",
    "deflated_sharpe_ratio",
    "effective_number_of_trials",
    "expected_max_sharpe",
    "friction_decay",
    "kendall_tau",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_ratio_moments",
    "temporal_fragility",
]


def _as_float_or_array(x: np.ndarray) -> float | np.ndarray:
    # Scalar in -> plain float out, so callers can json-serialise results.
    return float(x) if np.ndim(x) == 0 else x


# ---------------------------------------------------------------------------
# PSR / DSR
# ---------------------------------------------------------------------------


def sharpe_ratio_moments(returns) -> tuple[float, int, float, float]:
    """Per-period Sharpe ratio and the moments the PSR/DSR need.

    Parameters
    ----------
    returns : array_like, 1-D
        Per-period returns; non-finite values are dropped.

    Returns
    -------
    sharpe, n_obs, skew, kurtosis : float, int, float, float
        ``sharpe`` uses the sample std (ddof=1); ``skew``/``kurtosis`` are the
        (biased) sample moments, ``kurtosis`` non-excess.  NaN where undefined.
    """
    r = np.asarray(returns, dtype=float).ravel()
    r = r[np.isfinite(r)]
    n = int(r.size)
    if n < 2:
        return float("nan"), n, float("nan"), float("nan")
    # Test constancy on the values: the float std of a constant series is
    # rounding dust, which would turn 0/0 into a huge bogus Sharpe.
    if np.all(r == r[0]):
        return float("nan"), n, float("nan"), float("nan")
    sd = r.std(ddof=1)
    sharpe = r.mean() / sd
    skew = float(_sps.skew(r))
    kurt = float(_sps.kurtosis(r, fisher=False))
    return float(sharpe), n, skew, kurt


def probabilistic_sharpe_ratio(*, sharpe, sr_benchmark, n_obs, skew, kurtosis):
    """Probabilistic Sharpe Ratio (Bailey & Lopez de Prado 2012).

    ``PSR = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1)/4 SR^2))``

    Parameters
    ----------
    sharpe : float or array_like
        Observed per-period (non-annualised) Sharpe ratio.
    sr_benchmark : float or array_like
        Benchmark Sharpe ratio SR*, same units as ``sharpe``.
    n_obs : int or array_like
        Number of return observations T (must be > 1).
    skew : float or array_like
        Skewness of the returns.
    kurtosis : float or array_like
        Non-excess kurtosis of the returns (3 for normal).

    Returns
    -------
    float or ndarray
        Probability that the true Sharpe exceeds ``sr_benchmark``.  NaN when
        the variance term is non-positive (moments inconsistent with ``sharpe``)
        or ``n_obs <= 1``.
    """
    sr = np.asarray(sharpe, dtype=float)
    sr_b = np.asarray(sr_benchmark, dtype=float)
    t = np.asarray(n_obs, dtype=float)
    g3 = np.asarray(skew, dtype=float)
    g4 = np.asarray(kurtosis, dtype=float)

    # Asymptotic variance (times T) of the Sharpe estimator under non-normal
    # returns (Mertens 2002).  It can go negative for incoherent inputs; the
    # statistic is then undefined rather than something to clip.
    var_term = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = (var_term > 0) & (t > 1)
        z = (sr - sr_b) * np.sqrt(np.where(valid, t - 1.0, np.nan)) / np.sqrt(
            np.where(valid, var_term, np.nan)
        )
    return _as_float_or_array(_sps.norm.cdf(z))


def expected_max_sharpe(*, n_trials, sharpe_variance):
    """Expected maximum Sharpe ratio of ``n_trials`` independent zero-skill trials.

    ``E[max SR] ~ sqrt(V) ((1 - gamma) Z^-1(1 - 1/N) + gamma Z^-1(1 - 1/(N e)))``
    with ``gamma`` the Euler-Mascheroni constant (Bailey & Lopez de Prado 2014).

    Parameters
    ----------
    n_trials : float or array_like
        Number of (effectively independent) trials N >= 1.
    sharpe_variance : float or array_like
        Cross-sectional variance V of the trials' Sharpe ratios, in the same
        units as the Sharpe ratios being deflated.

    Returns
    -------
    float or ndarray
        SR0, the Sharpe ratio expected from pure selection.  Exactly 0 for
        ``N == 1`` (no selection took place); the formula is an asymptotic
        (extreme-value) approximation and is crude for very small N.
    """
    n = np.asarray(n_trials, dtype=float)
    v = np.asarray(sharpe_variance, dtype=float)
    if np.any(n < 1) or np.any(v < 0):
        raise ValueError("n_trials must be >= 1 and sharpe_variance >= 0")
    gamma = np.euler_gamma
    with np.errstate(divide="ignore", invalid="ignore"):
        core = (1.0 - gamma) * _sps.norm.ppf(1.0 - 1.0 / n) + gamma * _sps.norm.ppf(
            1.0 - 1.0 / (n * np.e)
        )
    # Z^-1(0) = -inf at N = 1; with a single trial there is no max to inflate.
    core = np.where(n == 1, 0.0, core)
    return _as_float_or_array(np.sqrt(v) * core)


def deflated_sharpe_ratio(*, sharpe, n_obs, skew, kurtosis, n_trials, sharpe_variance):
    """Deflated Sharpe Ratio (Bailey & Lopez de Prado 2014).

    The PSR of the selected strategy against the benchmark
    ``SR0 = expected_max_sharpe(n_trials, sharpe_variance)``.

    Parameters
    ----------
    sharpe : float
        Per-period Sharpe ratio of the selected (best) strategy.
    n_obs : int
        Number of return observations of that strategy.
    skew, kurtosis : float
        Its skewness and non-excess kurtosis.
    n_trials : float
        Number of independent trials the selection was made from.
    sharpe_variance : float
        Variance of the per-period Sharpe ratios across the trials.

    Returns
    -------
    dsr, sr0 : float
        Deflated Sharpe ratio (a probability) and the deflation benchmark SR0
        (per-period units).
    """
    sr0 = expected_max_sharpe(n_trials=n_trials, sharpe_variance=sharpe_variance)
    dsr = probabilistic_sharpe_ratio(
        sharpe=sharpe, sr_benchmark=sr0, n_obs=n_obs, skew=skew, kurtosis=kurtosis
    )
    return dsr, sr0


# ---------------------------------------------------------------------------
# Effective number of trials
# ---------------------------------------------------------------------------


def cluster_strategies(returns, *, threshold: float = 0.5) -> np.ndarray:
    """Cluster strategies by correlation distance.

    Distance ``d = sqrt(0.5 (1 - rho))`` (0 for identical, ~0.707 for
    uncorrelated, 1 for opposite), average linkage, tree cut at ``threshold``.
    The default 0.5 corresponds to merging groups whose average pairwise
    correlation exceeds 0.5.

    Parameters
    ----------
    returns : array_like, shape (T, S)
        Per-period returns, one column per strategy.  NaNs are allowed
        (correlations are pairwise-complete).
    threshold : float, default 0.5
        Cophenetic distance at which the dendrogram is cut, in [0, 1].

    Returns
    -------
    ndarray of int, shape (S,)
        Cluster labels 1..k.  Zero-variance (or all-NaN) columns get a cluster
        of their own: their correlation is undefined, so they are not merged.
        Pairs with too little overlap to correlate are treated as rho = 0.
    """
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"returns must be 2-D (T x S), got shape {x.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must lie in [0, 1] (range of the distance)")
    n_strat = x.shape[1]
    if n_strat == 0:
        raise ValueError("returns has no strategy columns")

    # A column is degenerate if it has < 2 distinct finite values.  Compared
    # on the values (not a float std, which leaves rounding dust) and without
    # nan-reductions, which warn on all-NaN columns.
    finite = np.isfinite(x)
    if x.shape[0] == 0:
        degenerate = np.ones(n_strat, dtype=bool)
    else:
        lo = np.where(finite, x, np.inf).min(axis=0)
        hi = np.where(finite, x, -np.inf).max(axis=0)
        degenerate = (finite.sum(axis=0) < 2) | (lo == hi)
    live = np.flatnonzero(~degenerate)

    labels = np.zeros(n_strat, dtype=int)
    next_label = 1
    if live.size == 1:
        labels[live] = next_label
        next_label += 1
    elif live.size > 1:
        # pandas gives pairwise-complete correlations without RuntimeWarnings.
        rho = pd.DataFrame(x[:, live]).corr().to_numpy()
        rho = np.nan_to_num(rho, nan=0.0)
        np.fill_diagonal(rho, 1.0)
        # Clamp float noise (|rho| marginally > 1) before the sqrt.
        dist = np.sqrt(np.clip(0.5 * (1.0 - rho), 0.0, 1.0))
        dist = 0.5 * (dist + dist.T)
        np.fill_diagonal(dist, 0.0)
        link = _hier.linkage(squareform(dist, checks=False), method="average")
        live_labels = _hier.fcluster(link, t=threshold, criterion="distance")
        labels[live] = live_labels
        next_label = int(live_labels.max()) + 1
    for j in np.flatnonzero(degenerate):
        labels[j] = next_label
        next_label += 1
    return labels


def effective_number_of_trials(returns, *, threshold: float = 0.5, method: str = "threshold",
                               k_max: int = 30, seed: int = 0) -> int:
    """Number of correlation clusters among the strategies.

    A DSR input: near-duplicate strategies should not count as separate trials.

    method="threshold": :func:`cluster_strategies` (average linkage cut at `threshold`).
        Long-only equity strategies are all > 0.5 correlated, so this often gives 1.
    method="onc": the number of clusters chosen as in Lopez de Prado's ONC ("A Data
        Science Solution to the Multiple-Testing Crisis", 2019): k-means on the rows of the
        correlation-distance matrix for k = 2..k_max, keeping the k with the highest
        silhouette t-statistic mean(s)/std(s). It separates groups relative to each other
        rather than against a fixed correlation level.

    Returns
    -------
    int
        Number of clusters (1 <= k <= S).
    """
    if method == "threshold":
        labels = cluster_strategies(returns, threshold=threshold)
        return int(np.unique(labels).size)
    if method != "onc":
        raise ValueError(f"unknown method {method!r}; valid: onc, threshold")
    return int(np.unique(onc_clusters(returns, k_max=k_max, seed=seed)).size)


def onc_clusters(returns, *, k_max: int = 30, seed: int = 0,
                 duplicate_rho: float = 0.9999) -> np.ndarray:
    """Cluster labels by the ONC silhouette criterion (see effective_number_of_trials).

    Near-duplicates (pairwise rho >= `duplicate_rho`: the same weights through another
    simulator or a rebalance mode that never trades differently) are merged first, since
    they are one trial; ONC then runs on one representative per duplicate group.
    Degenerate (constant / all-NaN) columns each form their own cluster.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_samples
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"returns must be 2-D (T x S) with S >= 1, got shape {x.shape}")
    groups = cluster_strategies(x, threshold=float(np.sqrt(0.5 * (1.0 - duplicate_rho))))
    reps = np.array([np.flatnonzero(groups == g)[0] for g in np.unique(groups)])
    finite = np.isfinite(x[:, reps])
    live = reps[(finite.sum(axis=0) >= 2) & (np.nanstd(np.where(finite, x[:, reps], np.nan),
                                                        axis=0) > 0)] if x.shape[0] else reps[:0]
    rep_label = {g: i for i, g in enumerate(np.unique(groups))}   # default: group = cluster
    if live.size >= 3:
        rho = np.nan_to_num(pd.DataFrame(x[:, live]).corr().to_numpy(), nan=0.0)
        np.fill_diagonal(rho, 1.0)
        dist = np.sqrt(np.clip(0.5 * (1.0 - rho), 0.0, 1.0))
        best_q, best = -np.inf, np.arange(live.size)
        for k in range(2, min(k_max, live.size - 1) + 1):
            km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(dist)
            if np.unique(km.labels_).size < 2:
                continue
            sil = silhouette_samples(dist, km.labels_)
            q = sil.mean() / sil.std() if sil.std() > 0 else np.inf
            if q > best_q:
                best_q, best = q, km.labels_
        offset = len(rep_label)
        for rep, lab in zip(live, best):
            rep_label[groups[rep]] = offset + int(lab)
    return np.array([rep_label[g] for g in groups])


# ---------------------------------------------------------------------------
# Probability of backtest overfitting (CSCV)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PBOResult:
    """Outcome of :func:`probability_of_backtest_overfitting`.

    Attributes
    ----------
    pbo : float
        Share of combinations whose logit is <= 0.
    logits : ndarray, shape (C,)
        ``ln(w / (1 - w))`` per combination, ``w = oos_rank / (N + 1)``.
    best_in_sample : ndarray of int, shape (C,)
        Column index of the in-sample winner per combination.
    is_metric, oos_metric : ndarray, shape (C,)
        The winner's in-sample and out-of-sample metric (for degradation plots).
    n_combinations : int
        Number of CSCV combinations evaluated.
    """

    pbo: float
    logits: np.ndarray
    best_in_sample: np.ndarray
    is_metric: np.ndarray
    oos_metric: np.ndarray
    n_combinations: int


def _cscv_combinations(n_splits: int, max_combinations: int, rng) -> np.ndarray:
    """Boolean (C, n_splits) matrix; True marks an in-sample block."""
    half = n_splits // 2
    total = math.comb(n_splits, half)
    if total <= max_combinations:
        idx = np.array(list(itertools.combinations(range(n_splits), half)), dtype=int)
        mask = np.zeros((total, n_splits), dtype=bool)
        mask[np.arange(total)[:, None], idx] = True
        return mask
    # Too many to enumerate: sample distinct combinations uniformly.
    rng = np.random.default_rng(rng)
    seen = np.zeros((0, n_splits), dtype=bool)
    while seen.shape[0] < max_combinations:
        draw = np.argsort(rng.random((max_combinations, n_splits)), axis=1)[:, :half]
        m = np.zeros((max_combinations, n_splits), dtype=bool)
        m[np.arange(max_combinations)[:, None], draw] = True
        seen = np.unique(np.vstack([seen, m]), axis=0)
    # np.unique sorts, so shuffle before truncating to stay uniform.
    return seen[rng.permutation(seen.shape[0])[:max_combinations]]


def _block_metric(s1c, s2c, n, col_mean, metric):
    """Vectorised metric from sums of column-centred returns over ``n`` rows.

    Centring keeps the sum-of-squares variance free of cancellation; only the
    first moment needs the column mean added back.  The std is the population
    one: ranking within a combination is invariant to ddof (all share ``n``).
    """
    mean_c = s1c / n
    mean = mean_c + col_mean
    if metric == "mean":
        return mean
    sd = np.sqrt(np.maximum(s2c / n - mean_c**2, 0.0))
    # A constant column leaves float dust in its centred values; treat a std
    # that is negligible relative to the mean as exactly zero.
    flat = sd <= 1e-14 * np.abs(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        sr = mean / sd
    # Zero variance: a sure gain ranks above everything, a sure loss below,
    # a flat zero line sits at 0 -- the limit ordering of the Sharpe ratio.
    limit = np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0))
    return np.where(flat | (sd == 0), limit, sr)


def probability_of_backtest_overfitting(
    returns,
    *,
    n_splits: int = 16,
    metric: str = "sharpe",
    max_combinations: int = 12870,
    rng=0,
    chunk_size: int = 2048,
) -> PBOResult:
    """Probability of Backtest Overfitting via CSCV (Bailey et al. 2017).

    Rows are cut into ``n_splits`` contiguous equal blocks; every choice of
    half the blocks is in-sample (IS), the rest out-of-sample (OOS).  The IS
    winner's OOS relative rank ``w = rank / (N + 1)`` gives the logit
    ``ln(w / (1 - w))``; PBO is the share of logits <= 0.

    Parameters
    ----------
    returns : array_like, shape (T, N)
        Per-period returns, one column per strategy; must be finite.
    n_splits : int, default 16
        Even number of blocks S.  ``T mod S`` leading rows are dropped so all
        blocks have equal length (the most recent data is kept).
    metric : {"sharpe", "mean"}, default "sharpe"
        Performance statistic used for IS selection and OOS ranking.
    max_combinations : int, default 12870
        Enumerate all C(S, S/2) combinations when at most this many
        (12870 = C(16, 8)); otherwise sample this many distinct ones.
    rng : int or Generator, default 0
        Seed for the sampling branch only.
    chunk_size : int, default 2048
        Combinations processed per vectorised batch (bounds memory).

    Returns
    -------
    PBOResult
    """
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"returns must be 2-D (T x N), got shape {x.shape}")
    n_obs, n_strat = x.shape
    if n_strat < 2:
        raise ValueError(f"PBO needs at least 2 strategies, got {n_strat}")
    if n_splits < 2 or n_splits % 2:
        raise ValueError(f"n_splits must be an even integer >= 2, got {n_splits}")
    if n_obs < n_splits:
        raise ValueError(
            f"PBO needs at least n_splits={n_splits} observations, got T={n_obs}"
        )
    if metric not in ("sharpe", "mean"):
        raise ValueError(f"metric must be 'sharpe' or 'mean', got {metric!r}")
    if not np.all(np.isfinite(x)):
        raise ValueError("returns must be finite (drop or fill NaNs first)")
    if max_combinations < 1:
        raise ValueError("max_combinations must be >= 1")

    block = n_obs // n_splits
    x = x[n_obs - block * n_splits :]
    # Centring per column keeps sum-of-squares variance free of cancellation;
    # the mean is added back so the Sharpe numerator is unchanged.
    col_mean = x.mean(axis=0)
    xc = (x - col_mean).reshape(n_splits, block, n_strat)
    b1 = xc.sum(axis=1)  # (S, N)
    b2 = (xc**2).sum(axis=1)  # (S, N)
    tot1, tot2 = b1.sum(axis=0), b2.sum(axis=0)
    n_half = block * (n_splits // 2)

    combos = _cscv_combinations(n_splits, max_combinations, rng).astype(float)
    n_comb = combos.shape[0]
    logits = np.empty(n_comb)
    best = np.empty(n_comb, dtype=int)
    is_best_metric = np.empty(n_comb)
    oos_best_metric = np.empty(n_comb)

    for start in range(0, n_comb, chunk_size):
        c = combos[start : start + chunk_size]
        is1, is2 = c @ b1, c @ b2
        oos1, oos2 = tot1 - is1, tot2 - is2
        is_m = _block_metric(is1, is2, n_half, col_mean, metric)
        oos_m = _block_metric(oos1, oos2, n_half, col_mean, metric)

        rows = np.arange(c.shape[0])
        # argmax takes the first column on IS ties: deterministic selection.
        j = np.argmax(is_m, axis=1)
        sel_oos = oos_m[rows, j]
        # Average rank (1 = worst, N = best) so OOS ties do not bias w.
        below = (oos_m < sel_oos[:, None]).sum(axis=1)
        equal = (oos_m == sel_oos[:, None]).sum(axis=1)
        rank = below + 0.5 * (equal + 1)
        w = rank / (n_strat + 1.0)
        sl = slice(start, start + c.shape[0])
        logits[sl] = np.log(w / (1.0 - w))
        best[sl] = j
        is_best_metric[sl] = is_m[rows, j]
        oos_best_metric[sl] = sel_oos

    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        best_in_sample=best,
        is_metric=is_best_metric,
        oos_metric=oos_best_metric,
        n_combinations=int(n_comb),
    )


# ---------------------------------------------------------------------------
# Rank agreement and robustness diagnostics
# ---------------------------------------------------------------------------


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two score vectors (e.g. two simulators' rankings).

    Parameters
    ----------
    a, b : array_like, 1-D, same length
        Paired scores; a pair is dropped if either value is NaN.

    Returns
    -------
    float
        tau in [-1, 1]; NaN with fewer than 2 complete pairs or when either
        side is constant (no ordering to agree on).
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same length, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 2:
        return float("nan")
    # A constant input is a defined "no information" case here; scipy would
    # return NaN as well but with a warning callers cannot act on.
    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sps.kendalltau(x, y)
    return float(res.statistic)


def temporal_fragility(window_sharpes) -> float:
    """Coefficient of variation ``std / |mean|`` of per-window Sharpe ratios.

    High values mean the strategy's edge is concentrated in a few periods.

    Parameters
    ----------
    window_sharpes : array_like, 1-D
        Sharpe ratio of each (e.g. yearly) window.

    Returns
    -------
    float
        Sample CV (std with ddof=1).  NaN with fewer than 2 windows or a zero
        mean; a NaN window propagates (an undefined window is not evidence of
        stability, so it is not silently dropped).
    """
    s = np.asarray(window_sharpes, dtype=float).ravel()
    if s.size < 2:
        return float("nan")
    mean = s.mean()
    if mean == 0.0 or not np.isfinite(mean):
        return float("nan")
    return float(s.std(ddof=1) / abs(mean))


def friction_decay(sharpe_high, sharpe_custom) -> float:
    """Relative Sharpe lost moving to the high-friction cost model.

    ``1 - sharpe_high / sharpe_custom``: 0 means no decay, 1 means the edge is
    gone, > 1 means it turned negative.  Not clipped.

    Parameters
    ----------
    sharpe_high : float
        Sharpe ratio under the high-friction cost assumption.
    sharpe_custom : float
        Sharpe ratio under the baseline (custom) cost assumption.

    Returns
    -------
    float
        NaN when ``sharpe_custom`` is 0 or either input is non-finite.  With a
        negative baseline the sign reading flips; callers should filter on
        ``sharpe_custom > 0`` if they want the "share of edge lost" reading.
    """
    high = float(sharpe_high)
    custom = float(sharpe_custom)
    if custom == 0.0 or not (math.isfinite(custom) and math.isfinite(high)):
        return float("nan")
    return 1.0 - high / custom
