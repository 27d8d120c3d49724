"""Render a results folder into one self-contained HTML report.

Self-contained because MLflow shows HTML artifacts in an iframe from a blob URL: inline CSS,
figures as base64 PNG, no script, and no external URL except the links to MLflow/Prefect runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orpo.report.labels import format_number
from orpo.report.markup import (
    Safe,
    bullet_list,
    esc,
    is_http_url,
    join,
    note,
    run_link,
    section,
    tag,
)
from orpo.report.sections import SECTIONS
from orpo.report.sections.common import headline_judge
from orpo.report.tables import Results, load_results, table_file

log = logging.getLogger(__name__)

RENDER_FAILED_CLASS = "render-failed"

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 1.5rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #d0d7de; padding-bottom: .2rem;
     margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
section { margin-bottom: 1rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .86rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f3f5f7; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.reference { color: #57606a; }
figure { margin: .8rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
p.guide { font-size: .85rem; color: #57606a; margin: .2rem 0 .8rem; }
p.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: .4rem .7rem; }
.win { color: #1a7f37; font-weight: 600; }
.loss { color: #cf222e; font-weight: 600; }
.tie { color: #6e7781; font-weight: 600; }
.status-completed { color: #1a7f37; }
.status-cached { color: #0969da; }
.status-failed { color: #cf222e; font-weight: 600; }
.tag { font-size: .75rem; color: #0969da; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: .8rem;
      background: #f6f8fa; padding: .35rem .5rem; max-width: 70rem; }
table.samples td:last-child { min-width: 28rem; }
div.failure { border-left: 4px solid #cf222e; padding-left: .7rem; margin: .6rem 0; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem;
          font-size: .9rem; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
nav ul { columns: 2; font-size: .9rem; list-style: none; padding-left: 0; }
.render-failed { background: #ffebe9; border-left: 4px solid #cf222e; padding: .4rem .7rem; }
"""


def render_report(results_dir: Path, out_path: Path) -> Path:
    """Render `results_dir` (the results contract, see `tables.py`) to `out_path`; return it."""
    results = load_results(results_dir)
    page = render_html(results)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: MLflow or a browser never picks up half a report.
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return out_path


def render_html(results: Results) -> str:
    experiment = results.meta.experiment
    body = join(
        [
            tag("h1", join(["ORPO ablation report: ", experiment])),
            _meta_block(results),
            _contents(),
            *(_render_section(results, s) for s in SECTIONS),
        ]
    )
    head = join(
        [
            Safe('<meta charset="utf-8">'),
            Safe('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            tag("title", f"ORPO report: {experiment}"),
            Safe(f"<style>{CSS}</style>"),
        ]
    )
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>{body}</body>\n</html>\n'


def _render_section(results: Results, module) -> Safe:
    """A section that hits a bug shows the error in place: the rest of the report still renders."""
    try:
        body = module.render(results)
    except Exception as exc:  # noqa: BLE001 - one broken section must not cost the whole report
        log.exception("report section %s failed", module.SECTION_ID)
        body = tag(
            "p",
            f"This section could not be rendered: {type(exc).__name__}: {exc}",
            class_=RENDER_FAILED_CLASS,
        )
    return section(module.SECTION_ID, module.TITLE, body)


def _meta_block(results: Results) -> Safe:

    meta = results.meta
    items: list[tuple[str, object]] = [
        ("Data source", meta.data_source),
        ("Data rows", meta.data_rows or "—"),
        ("Experiment's judge", meta.judge),
        ("Headline judge", headline_judge(results)),
        ("Models (size order)", ", ".join(meta.models) or "—"),
        ("ORPO λ", ", ".join(format_number(x) for x in meta.orpo_lambdas) or "—"),
        ("Seeds", ", ".join(str(s) for s in meta.seeds) or "—"),
        ("Created", meta.created or "—"),
        ("Prefect flow run", _optional_link(meta.prefect_flow_run_url, "open in Prefect")),
        ("MLflow parent run", _optional_link(meta.mlflow_parent_run_url, "open in MLflow")),
    ]
    parts: list[object] = [
        tag("dl", join(join([tag("dt", k), tag("dd", v)]) for k, v in items), class_="meta")
    ]
    if meta.notes:
        parts += [tag("h3", "Notes"), bullet_list(meta.notes)]
    if results.missing:
        missing = ", ".join(table_file(name) for name in results.missing)
        parts.append(
            note(
                "Tables missing or empty in this run: ",
                missing,
                ". The sections that need them say so.",
            )
        )
    return join(parts)


def _optional_link(url: str | None, text: str) -> Safe:
    if not isinstance(url, str) or not url:
        return esc("—")
    # A non-http value (a local path, say) is shown as text, never made into a link.
    return run_link(url, text) if is_http_url(url) else esc(url)


def _contents() -> Safe:
    links = join(tag("li", tag("a", s.TITLE, href=f"#{s.SECTION_ID}")) for s in SECTIONS)
    return tag("nav", join([tag("h2", "Contents"), tag("ul", links)]))
