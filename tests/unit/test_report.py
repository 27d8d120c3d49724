"""The HTML report: rendered from the fixture results folder, checked as a parser and a browser see it.

Unit tests carry `@unit` one by one (not a module-level pytestmark) because the Chromium
screenshot test at the end is an integration test and must not also be selected by `-m unit`.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from orpo.report import SECTION_IDS, ResultsContractError, load_results, render_report
from orpo.report.markup import run_link
from orpo.report.paper import correspondence, paper_model_size
from orpo.report.render import RENDER_FAILED_CLASS
from orpo.report.sections.common import headline_rows
from orpo.report.tables import TABLE_COLUMNS, table_file
from tests.fixtures.report_fixture import (
    HOSTILE_ERROR,
    HOSTILE_EXPERIMENT,
    HOSTILE_GENERATION,
    run_urls,
    write_fixture_results,
)
from tests.requirements import require

unit = pytest.mark.unit

CHROMIUM = Path("/usr/bin/chromium")
RENDER_SECONDS_BUDGET = 30  # the fixture renders in ~3 s; this only catches a pathological slowdown


class TagCollector(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> TagCollector:
    collector = TagCollector()
    collector.feed(page)
    collector.close()
    return collector


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str, float]:
    """Render the fixture once for the module: (results dir, html, seconds it took)."""
    root = tmp_path_factory.mktemp("report")
    results_dir = write_fixture_results(root / "results")
    started = time.perf_counter()
    out = render_report(results_dir, root / "out" / "index.html")
    seconds = time.perf_counter() - started
    return results_dir, out.read_text(encoding="utf-8"), seconds


def render_from(results_dir: Path) -> str:
    out = render_report(results_dir, results_dir.parent / "index.html")
    return out.read_text(encoding="utf-8")


@unit
def test_every_section_is_present_and_rendered(rendered):
    _, page, seconds = rendered
    ids = [attrs.get("id") for tag, attrs in parse(page).tags if tag == "section"]
    assert ids == list(SECTION_IDS)
    assert len(SECTION_IDS) == 10
    assert f'class="{RENDER_FAILED_CLASS}"' not in page
    assert seconds < RENDER_SECONDS_BUDGET


@unit
def test_untrusted_text_is_escaped_never_markup(rendered):
    _, page, _ = rendered
    tags = parse(page).tags
    assert not [t for t, _ in tags if t == "script"]
    assert not [a for _, a in tags if any(k.startswith("on") for k in a)]  # no event handlers
    for tag, attrs in tags:
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # The parser, decoding entities, gets the generation back verbatim as text.
    assert HOSTILE_GENERATION in "".join(parse(page).text)
    assert "fixture &amp; &lt;grid&gt;" in page
    assert HOSTILE_EXPERIMENT in "".join(parse(page).text)
    assert "&lt;b&gt;odds&lt;/b&gt;" in page  # a prompt with markup in it


@unit
def test_failed_cell_error_is_shown_escaped(rendered):
    _, page, _ = rendered
    assert "&lt;script&gt;alert(&quot;err&quot;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert HOSTILE_ERROR in "".join(parse(page).text)
    assert "orpo-tiny-opt-4l-l1-s1" in page
    assert 'class="status-failed"' in page


@unit
def test_only_run_links_point_outside_the_file(rendered):
    results_dir, page, _ = rendered
    allowed = run_urls(results_dir)
    links = []
    for tag, attrs in parse(page).tags:
        for name in ("href", "src", "action", "formaction", "poster", "srcset", "data"):
            value = attrs.get(name)
            if value is None:
                continue
            if name == "href" and value.startswith("#"):
                continue  # the table of contents
            if name == "src" and value.startswith("data:image/png;base64,"):
                continue
            assert name == "href" and tag == "a", f"unexpected {name}={value[:80]!r} on <{tag}>"
            assert value in allowed, f"link to {value!r} is not a run link"
            links.append(value)
    assert set(links) == allowed  # every cell run, the Prefect flow run, the MLflow parent
    assert "javascript:" not in "".join(a.get("href") or "" for _, a in parse(page).tags)
    for external in ("<link", "<iframe", "@import", "url("):
        assert external not in page


@unit
def test_figures_are_embedded_pngs(rendered):
    _, page, _ = rendered
    images = [a["src"] for t, a in parse(page).tags if t == "img"]
    assert len(images) == 5  # win rates by size, lambda x2, dynamics, log ratios
    assert all(src.startswith("data:image/png;base64,iVBOR") for src in images)
    # Every figure has its reading guide.
    assert page.count("<figure>") == page.count('<figcaption><p class="guide">') == 5


@unit
def test_headline_calls_winners_losers_and_ties(rendered):
    _, page, _ = rendered
    text = " ".join(parse(page).text)
    assert "ORPO (λ=0.1) won against SFT" in text
    assert "ORPO (λ=1) lost to SFT+DPO" in text
    assert "no clear winner" in text
    assert "reward-model:rm-opt-medium-s0" in text
    # Synthetic data: the paper's numbers are reference only, and the report says so.
    assert "shown for reference only" in text
    assert "84.0" in text


@unit
def test_other_judges_get_their_own_table(rendered):
    _, page, _ = rendered
    headline = page.split('<section id="headline">')[1].split("</section>")[0]
    # on synthetic data the oracle heads (it is the ground truth); the reward model is beside it
    assert "<strong>oracle</strong>" in headline
    assert "The same comparisons judged by <code>reward-model:rm-opt-medium-s0</code>" in headline
    assert headline.count('class="other-judge"') == 1


@unit
def test_single_seed_rows_are_labelled_by_seed(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    win_rates = pd.read_parquet(results_dir / "win_rates.parquet")
    win_rates[win_rates["seed"] == 0].to_parquet(results_dir / "win_rates.parquet")
    page = render_from(results_dir)
    headline = page.split('<section id="headline">')[1].split("</section>")[0]
    assert "<td>seed 0</td>" in headline and "<td>pooled" not in headline


@unit
def test_unpooled_seeds_show_the_lowest_seed_and_say_so(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    win_rates = pd.read_parquet(results_dir / "win_rates.parquet")
    win_rates[win_rates["seed"] != -1].to_parquet(results_dir / "win_rates.parquet")
    headline = headline_rows(load_results(results_dir))
    assert set(headline.rows["seed"]) == {0}
    assert headline.rows.duplicated(["model", "method_a", "orpo_lambda_a", "method_b"]).sum() == 0
    assert headline.caveats == (
        "No win rates pooled over seeds for tiny-opt-2l, tiny-opt-4l: showing the lowest seed's.",
    )


@unit
def test_hostile_ids_and_names_are_escaped(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    cells = pd.read_parquet(results_dir / "cells.parquet")
    cells.loc[0, "cell_id"] = "<svg onload=alert(3)>"
    cells.to_parquet(results_dir / "cells.parquet")
    samples = pd.read_parquet(results_dir / "samples.parquet")
    samples["prompt_id"] = samples["prompt_id"].replace("p0", '"><svg onload=alert(4)>')
    samples.to_parquet(results_dir / "samples.parquet")
    meta = json.loads((results_dir / "meta.json").read_text())
    meta["notes"].append("<script>alert(5)</script>")
    meta["judge"] = "reward-model:<i>rm</i>"
    (results_dir / "meta.json").write_text(json.dumps(meta))
    page = render_from(results_dir)
    tags = [t for t, _ in parse(page).tags]
    assert "svg" not in tags and "script" not in tags and "i" not in tags
    assert "&lt;svg onload=alert(3)&gt;" in page
    assert "&quot;&gt;&lt;svg onload=alert(4)&gt;" in page
    assert "&lt;script&gt;alert(5)&lt;/script&gt;" in page


@unit
def test_paper_numbers_sit_beside_ours_when_the_set_up_corresponds(tmp_path):
    results_dir = write_fixture_results(
        tmp_path / "results", data_source="hh-rlhf", models=("facebook/opt-125m", "opt-350m")
    )
    page = render_from(results_dir)
    assert "Paper %" in page
    assert "Table 2 (HH-RLHF)" in page
    assert "shown for reference only" not in page
    headline = page.split('<section id="headline">')[1].split("</section>")[0]
    row = next(
        r
        for r in headline.split("<tr>")
        if "facebook/opt-125m" in r and "<td>SFT</td>" in r and "λ=0.1" in r
    )
    assert "<td>84.0</td>" in row
    dpo_row = next(
        r
        for r in headline.split("<tr>")
        if "opt-350m" in r and "<td>SFT+DPO</td>" in r and "λ=0.5" in r
    )
    assert "<td>49.4</td>" in dpo_row


@unit
def test_missing_tables_do_not_crash_and_are_named(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    for name in TABLE_COLUMNS:
        if name != "cells":
            (results_dir / table_file(name)).unlink()
    page = render_from(results_dir)
    assert [a.get("id") for t, a in parse(page).tags if t == "section"] == list(SECTION_IDS)
    assert f'class="{RENDER_FAILED_CLASS}"' not in page
    for name in ("win_rates", "curves", "logratios", "diversity", "judges", "samples"):
        assert f"{table_file(name)} not found" in page
    assert "<img" not in page


@unit
def test_empty_tables_and_no_cells_at_all(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    for name, columns in TABLE_COLUMNS.items():
        pd.DataFrame({c: [] for c in columns}).to_parquet(results_dir / table_file(name))
    page = render_from(results_dir)
    assert f'class="{RENDER_FAILED_CLASS}"' not in page
    assert "cells.parquet has no rows" in page
    assert "win_rates.parquet has no rows" in page


@unit
def test_every_orpo_cell_failed(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    cells = pd.read_parquet(results_dir / "cells.parquet")
    orpo = cells["method"] == "orpo"
    cells.loc[orpo, "status"] = "failed"
    cells.loc[orpo, "error"] = "CUDA? no: <b>out of memory</b>"
    cells.to_parquet(results_dir / "cells.parquet")
    for name, column in [
        ("win_rates", "method_a"),
        ("curves", "method"),
        ("logratios", "method"),
        ("diversity", "method"),
        ("samples", "method"),
    ]:
        frame = pd.read_parquet(results_dir / table_file(name))
        frame[frame[column] != "orpo"].to_parquet(results_dir / table_file(name))
    page = render_from(results_dir)
    assert f'class="{RENDER_FAILED_CLASS}"' not in page
    text = " ".join(parse(page).text)
    assert "No ORPO win rates in this run." in text
    assert "12 of 12 ORPO cells failed" in text
    assert "No ORPO win rates, so no λ ablation." in text
    assert "&lt;b&gt;out of memory&lt;/b&gt;" in page
    assert "SFT+DPO won against SFT" in text


@unit
def test_contract_violations_raise_clear_errors(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    win_rates = pd.read_parquet(results_dir / "win_rates.parquet")
    win_rates.drop(columns=["ci_low", "ci_high"]).to_parquet(results_dir / "win_rates.parquet")
    with pytest.raises(ResultsContractError, match=r"win_rates.parquet.*\['ci_low', 'ci_high'\]"):
        load_results(results_dir)

    win_rates.assign(method_b="ppo").to_parquet(results_dir / "win_rates.parquet")
    with pytest.raises(ResultsContractError, match=r"method_b.*\['ppo'\]"):
        load_results(results_dir)

    win_rates.assign(win_rate="high").to_parquet(results_dir / "win_rates.parquet")
    with pytest.raises(ResultsContractError, match="win_rate.*numeric"):
        load_results(results_dir)
    win_rates.to_parquet(results_dir / "win_rates.parquet")

    meta = json.loads((results_dir / "meta.json").read_text())
    (results_dir / "meta.json").write_text(json.dumps({**meta, "data_source": "reddit"}))
    with pytest.raises(ResultsContractError, match="data_source 'reddit'"):
        load_results(results_dir)
    (results_dir / "meta.json").unlink()
    with pytest.raises(ResultsContractError, match="meta.json not found"):
        load_results(results_dir)


@unit
def test_load_results_normalises_missing_numbers(tmp_path):
    results_dir = write_fixture_results(tmp_path / "results")
    cells = pd.read_parquet(results_dir / "cells.parquet")
    # A writer that stores "no lambda" as None in an object column instead of NaN.
    cells["orpo_lambda"] = [None if math.isnan(x) else x for x in cells["orpo_lambda"]]
    cells.astype({"orpo_lambda": object}).to_parquet(results_dir / "cells.parquet")
    results = load_results(results_dir)
    assert results.cells["orpo_lambda"].dtype == "float64"
    assert results.cells.loc[results.cells["method"] == "sft", "orpo_lambda"].isna().all()
    assert results.missing == {}
    assert results.meta.models == ["tiny-opt-2l", "tiny-opt-4l"]


@unit
def test_paper_correspondence():
    assert paper_model_size("facebook/opt-1.3b") == "1.3B"
    assert paper_model_size("OPT-125M") == "125M"
    # a name that goes on is another model of that size: a random one built from the config,
    # or a user's fine-tune, not the paper's pretrained OPT
    assert paper_model_size("opt-125m-shape") is None
    assert paper_model_size("OPT-125M-sft") is None
    assert paper_model_size("opt-13b") is None
    assert paper_model_size("opt-1250m") is None
    assert paper_model_size("tiny-opt-2l") is None

    same = correspondence("ultrafeedback", "facebook/opt-350m", "reward-model:rm-opt-1.3b-s0")
    assert same.corresponds and same.table == "Table 3 (UltraFeedback)"
    assert same.paper_win_rate("sft") == 80.5 and same.paper_win_rate("dpo") == 50.5

    differs = correspondence("synthetic", "tiny-opt-2l", "oracle")
    assert not differs.corresponds
    assert differs.paper_win_rate("sft") is None
    assert len(differs.differences) == 3  # data, model and judge all differ, each said
    assert not correspondence("hh-rlhf", "opt-125m", "oracle").corresponds


@unit
def test_run_links_only_for_http_urls():
    assert run_link("https://mlflow.example/runs/1", "run").startswith('<a href="https://')
    for bad in ("javascript:alert(1)", "data:text/html,<script>x</script>", "/local/path"):
        html_out = run_link(bad, "run")
        assert "<a" not in html_out and "<script>" not in html_out
    assert run_link(None, "run") == "run"


@pytest.mark.integration
def test_chromium_screenshot_is_not_blank(tmp_path):
    missing = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)"
    require("CHROMIUM", missing)
    results_dir = write_fixture_results(tmp_path / "results")
    report = render_report(results_dir, tmp_path / "index.html")
    screenshot = tmp_path / "screenshot.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        report.resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), f"no screenshot; chromium said:\n{completed.stderr[-2000:]}"

    from matplotlib.image import imread

    pixels = imread(screenshot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05, "screenshot is blank"
    # Text, tables and the headline's coloured verdicts: a real page, not a single colour.
    non_white = (pixels < 0.9).any(axis=-1).mean()
    assert non_white > 0.02


@unit
def test_the_data_rows_cleaning_kept_and_dropped_are_shown(tmp_path):
    from orpo.data.clean import CleaningReport
    from orpo.data.counts import manifest_line

    report = CleaningReport(kept=3, dropped={"empty_rejected": 1, "identical": 1})
    manifest = {"counts": {"train": 2, "eval": 1, "test": 2}, "cleaning": {"train": vars(report)}}
    line = manifest_line(manifest)
    assert line.startswith("pairs: train 2, eval 1, test 2; train rows cleaned: kept 3 of 5")
    assert "identical=1" in line
    assert "not cleaned" in manifest_line({"counts": {"train": 4}, "cleaning": {}})

    results_dir = write_fixture_results(tmp_path / "results")
    meta = json.loads((results_dir / "meta.json").read_text())
    (results_dir / "meta.json").write_text(json.dumps({**meta, "data_rows": line}))
    page = render_from(results_dir)
    assert "Data rows" in page and "kept 3 of 5 pairs" in page


@unit
def test_the_compute_section_says_where_the_time_goes(tmp_path):
    folder = write_fixture_results(tmp_path / "results")
    n = load_results(folder).timings["cell_id"].nunique()
    html = render_report(folder, tmp_path / "index.html").read_text()
    compute = html[html.index('id="compute"') :]
    assert "Where the time goes" in compute
    # 5 phases of fixed seconds per cell: start-up 4 of 15 s is 26.7% of the summed time
    assert f"<td>cell start-up (launcher, interpreter, imports)</td><td>{n}</td>" in compute
    assert f"<td>{4.0 * n:,.1f}</td><td>26.7%</td>" in compute
    assert "reference log-probs" not in compute  # a phase no cell went through has no row
