"""report.html, the Markdown summary and the leaderboard table, on a real (small) run directory.

The run directory comes from the core pipeline (no Prefect server, no Ray). The last test opens
the report in a real headless Chromium and drives it over the DevTools protocol: every image
decoded, no console errors or exceptions, no network request outside the file, a non-blank
screenshot. Chromium comes from Debian (`scripts/install_chromium.sh`); when it is missing the
browser test FAILS (set TOURNAMENT_SKIP_BROWSER=1 to skip it explicitly).
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.browser import Browser, chromium_path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("summary", "leaderboard", "equity", "heatmaps", "agreement", "failures", "fallbacks",
            "manifest")


# ----------------------------------------------------------------------------- fixtures
def _make_run(out: Path) -> Path:
    from tournament.config import load_config
    from tournament.data import load_dataset
    from tournament.outputs import finalize_run
    from tournament.pipeline import run_tournament

    config = load_config(engines=["custom"], selections=["all", "momentum"],
                         profiles=["equal_weight", "min_variance"], rebalances=["window"])
    dataset = load_dataset("sp500")
    res = run_tournament(dataset, config)
    manifest = {"run_id": "test-report", "mode": "two-stage", "config": config.to_dict(),
                "config_digest": config.digest(),
                "data": {"source": dataset.source, "fingerprint": dataset.fingerprint,
                         "days": dataset.n_days, "assets": dataset.n_assets,
                         "start": str(dataset.dates[0].date()),
                         "end": str(dataset.dates[-1].date())},
                "result_storage": "none", "timings": res.timings,
                "cache": {"stage1": {"tasks": 2, "tasks_cached": 1, "computed": 5, "cached": 6},
                          "stage2": {"tasks": 1, "tasks_cached": 0, "computed": 3, "cached": 0}}}
    # As a real run writes it: statistics columns (confidence set included), ledger, files.
    finalize_run(out, cube=res.cube, results=res.results, returns=res.returns, manifest=manifest)
    return out


def expected_sentence(run_dir: Path) -> str:
    """The confidence sentence from results.parquet's columns, counted here independently."""
    results = pd.read_parquet(run_dir / "results.parquet")
    per = results.dropna(subset=["mcs"]).drop_duplicates(
        ["selection", "engine", "profile", "rebalance"])
    n, m = int(per["mcs"].sum()), int(per["stepm"].fillna(False).sum())
    assert n >= 1 and len(per) >= 2      # a set always holds the best; two+ strategies ran
    return (f"{n} {'strategy is' if n == 1 else 'strategies are'} statistically "
            f"indistinguishable from the best; {m} {'beats' if m == 1 else 'beat'} equal "
            "weight after correcting for the search.")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("report-run") / "run")


@pytest.fixture(scope="module")
def report(run_dir) -> tuple[Path, str]:
    from tournament.report import write_report
    path = write_report(run_dir)
    return path, path.read_text(encoding="utf-8")


def _variant(run_dir: Path, dest: Path, edit) -> Path:
    """Copy of the run directory with results.parquet edited by `edit(results) -> results`."""
    shutil.copytree(run_dir, dest)
    results = pd.read_parquet(dest / "results.parquet")
    edit(results).to_parquet(dest / "results.parquet", index=False)
    (dest / "report.html").unlink(missing_ok=True)
    return dest


# ----------------------------------------------------------------------------- content
def test_report_sections_and_self_contained(run_dir, report):
    path, text = report
    assert path == run_dir / "report.html" and path.is_file()
    assert text.startswith("<!DOCTYPE html>")
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
    for heading in ("Leaderboard", "Equity curves", "Sharpe heatmaps", "Simulator agreement",
                    "Failed and unsupported", "Manifest", "Library versions",
                    "Time per stage", "Cache hits"):
        assert heading in text, heading
    # Images are embedded PNGs: equity (1 simulator) + heatmaps (2 selections x 1 simulator).
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing external: no http(s) URLs, no linked stylesheets/scripts/fonts.
    assert not re.search(r"https?://", text)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r'src="(?!data:)', text)


def test_report_content_matches_run(run_dir, report):
    _, text = report
    results = pd.read_parquet(run_dir / "results.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["fingerprint"] in text
    assert manifest["config_digest"] in text
    assert manifest["versions"]["pandas"] in text
    # Baselines appear in the leaderboard: raw-pool equal weight and the S&P 500 index.
    assert 'class=baseline' in text
    assert "buy_and_hold" in text and "benchmark" in text
    # Best strategy's Sharpe is shown.
    ok = results[(results["status"] == "ok") & (results["engine"] != "baseline")]
    best = ok.sort_values("sharpe", ascending=False).iloc[0]
    assert f"{best['sharpe']:.4f}" in text
    # Failed / unsupported rows come with their reason (custom has no hrp here; if every
    # cell is ok the section says so).
    bad = results[results["status"] != "ok"]
    for reason in bad["reason"].dropna().unique():
        import html
        assert html.escape(reason) in text
    # One simulator only: the agreement section says so.
    assert "Only one simulator ran" in text
    # The summary opens with the confidence-set sentence, then the list and the measures.
    summary = text.split('<section id="summary"><h2>Summary</h2>', 1)[1]
    assert summary.startswith(f'<p class="headline" id="confidence-sentence">'
                              f'{expected_sentence(run_dir)}</p>')
    assert "about mean daily net return" in summary and "sorts by Sharpe" in summary
    in_set = results.dropna(subset=["mcs"]).drop_duplicates(
        ["selection", "engine", "profile", "rebalance"])
    in_set = in_set[in_set["mcs"].astype(bool)]
    assert f"In the 95% model confidence set ({len(in_set)} of" in summary
    returns = pd.read_parquet(run_dir / "returns.parquet")
    for row in in_set.itertuples():
        assert f"{row.mcs_pvalue:.4f}" in summary
        # The measure the set is about, shown next to Sharpe: annualised mean net return.
        path = returns[(returns["selection"] == row.selection) & (returns["engine"] == row.engine)
                       & (returns["profile"] == row.profile)
                       & (returns["rebalance"] == row.rebalance)
                       & (returns["simulator"] == row.simulator)]
        assert f"{path['net_return'].mean() * 252 * 100:.2f}%" in summary
    assert "The measure behind each column" in text and "<th>mcs</th>" in text
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["confidence"]["seed"] == 17 and manifest["confidence"]["block_size"] == 10
    assert f"seed {manifest['confidence']['seed']}" in summary


def test_leaderboard_table_and_markdown(run_dir):
    from tournament.report import leaderboard_table, markdown_summary
    rows = leaderboard_table(run_dir, top=3)
    strategies = [r for r in rows if r["kind"] == "strategy"]
    baselines = [r for r in rows if r["kind"] == "baseline"]
    assert [r["rank"] for r in strategies] == [1, 2, 3]
    sharpes = [r["sharpe"] for r in strategies]
    assert sharpes == sorted(sharpes, reverse=True)
    assert {(r["selection"], r["profile"]) for r in baselines} >= {
        ("all", "equal_weight"), ("benchmark", "buy_and_hold")}
    json.dumps(rows)   # JSON-safe for a Prefect table artifact (no NaN objects)
    for row in rows:
        assert all(not (isinstance(v, float) and np.isnan(v)) for v in row.values())
    md = markdown_summary(run_dir)
    for heading in ("# Tournament run", "## Top", "## Failed and unsupported",
                    "## Simulator agreement"):
        assert heading in md
    # The markdown artifact opens with the confidence sentence too.
    assert md.splitlines()[2] == f"**{expected_sentence(run_dir)}**"
    assert "Beat equal weight (StepM):" in md and "SPA p-value per rebalance mode: window" in md
    assert "- **mcs**: mean daily net return" in md
    assert "| rank | selection |" in md
    assert json.loads((run_dir / "manifest.json").read_text())["data"]["fingerprint"] in md


def test_published_markdown_artifact_opens_with_the_sentence(run_dir, tmp_path, monkeypatch):
    """publish_artifacts hands Prefect a markdown artifact (and description) that lead with
    the confidence sentence; Prefect's artifact calls are captured, no server needed."""
    import prefect.artifacts

    from tasks.artifacts import publish_artifacts
    calls = {}
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact",
                        lambda **kw: calls.setdefault("table", kw) and "table-id")
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact",
                        lambda **kw: calls.setdefault("markdown", kw) and "markdown-id")
    copy = shutil.copytree(run_dir, tmp_path / "published")
    out = publish_artifacts(str(copy))
    sentence = expected_sentence(run_dir)
    assert out["markdown"] == "markdown-id" and (copy / "report.html").is_file()
    assert calls["markdown"]["markdown"].splitlines()[2] == f"**{sentence}**"
    assert calls["markdown"]["description"].startswith(sentence)
    assert {"mcs", "stepm", "spa_pvalue"} <= set(calls["table"]["table"][0])


def test_extra_columns_escaping_and_agreement(run_dir, tmp_path):
    """Later statistics columns are shown; data text is escaped; a second simulator fills the
    agreement table with per-simulator Sharpe / final equity and the max rel. diff vs custom."""
    from tournament.report import agreement_frame, leaderboard_table, markdown_summary, write_report

    evil = "<script>alert('x')</script> & <b>|pipe|</b>"

    def edit(results: pd.DataFrame) -> pd.DataFrame:
        results = results.copy()
        results["dsr"] = np.linspace(0.1, 0.9, len(results))
        results["pbo"] = 0.25
        other = results[results["engine"] != "baseline"].copy()
        other["simulator"] = "vectorbt"
        other["final_equity"] = other["final_equity"] * 1.01
        other["sharpe"] = other["sharpe"] + 0.001
        failed = other.iloc[[0]].copy()
        failed[["status", "reason"]] = ["failed", evil]
        other = pd.concat([other.iloc[1:], failed], ignore_index=True)
        return pd.concat([results, other], ignore_index=True)

    variant = _variant(run_dir, tmp_path / "variant", edit)
    text = write_report(variant).read_text()
    assert "<th>dsr</th>" in text and "<th>pbo</th>" in text
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in text
    assert "Only one simulator ran" not in text
    assert "sharpe vectorbt" in text and "final_equity custom" in text
    agree = agreement_frame(pd.read_parquet(variant / "results.parquet"))
    assert {"sharpe custom", "sharpe vectorbt", "final_equity custom", "final_equity vectorbt",
            "max rel diff final_equity", "max rel diff sharpe"} <= set(agree.columns)
    both = agree.dropna(subset=["final_equity vectorbt", "final_equity custom"])
    assert not both.empty
    assert np.allclose(both["max rel diff final_equity"], 0.01, rtol=1e-6)
    rows = leaderboard_table(variant)
    assert "dsr" in rows[0] and "pbo" in rows[0]
    md = markdown_summary(variant)
    assert "<script>" not in md and "\\|pipe\\|" in md
    assert "max rel diff final_equity" in md


def test_report_tolerates_missing_files(tmp_path):
    from tournament.report import leaderboard_table, markdown_summary, write_report
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty).read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text
    assert leaderboard_table(empty) == []
    assert "# Tournament run" in markdown_summary(empty)


# ----------------------------------------------------------------------------- real browser
@pytest.fixture(scope="session")
def chromium() -> str:
    return chromium_path()


def test_report_in_real_browser(run_dir, report, chromium, tmp_path):
    from PIL import Image

    path, _ = report
    browser = Browser(chromium, tmp_path)
    try:
        cdp = browser.open(path.resolve().as_uri())

        n_images = cdp.evaluate("document.images.length")
        assert n_images >= 3
        assert cdp.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"), \
            cdp.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        assert cdp.evaluate("document.querySelectorAll('section').length") == len(SECTIONS)
        # The summary's first paragraph, as rendered, is the confidence-set sentence.
        first = cdp.evaluate("(() => { const p = document.querySelector('#summary p');"
                             " return [p.innerText, p.offsetHeight]; })()")
        assert first[0] == expected_sentence(run_dir) and first[1] > 0
        assert cdp.evaluate("document.querySelectorAll('#leaderboard table tbody tr').length") > 0
        assert cdp.evaluate("document.body.scrollHeight") > 2000

        shot = cdp.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                        timeout=60)
        png = base64.b64decode(shot["data"])
        (tmp_path / "report.png").write_bytes(png)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
        assert pixels.shape[0] > 1000 and pixels.var() > 0, "screenshot is blank"
        # Charts add many distinct grey levels; a page of bare text would not.
        assert len(np.unique(pixels)) > 50

        time.sleep(0.3)   # let late console/log events arrive
        cdp.evaluate("1")
        errors = [ev for ev in cdp.events if (
            ev["method"] == "Runtime.exceptionThrown"
            or (ev["method"] == "Runtime.consoleAPICalled" and ev["params"]["type"] in ("error", "assert"))
            or (ev["method"] == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error")
            or ev["method"] == "Network.loadingFailed")]
        assert not errors, json.dumps(errors, indent=1)[:3000]
        requests = [ev["params"]["request"]["url"] for ev in cdp.events
                    if ev["method"] == "Network.requestWillBeSent"]
        external = [u for u in requests if not u.startswith(("file://", "data:", "about:"))]
        assert not external, external
    finally:
        browser.close()
