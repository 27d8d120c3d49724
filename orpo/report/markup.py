"""Tiny HTML builders that escape by default.

Everything that reaches the page goes through `cell`/`esc` unless it is a `Safe` string built by
these helpers. Model text, prompts, error messages, cell ids and the experiment name are
untrusted, so the safe path is the default one and markup has to be asked for explicitly.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit


class Safe(str):
    """HTML already built from escaped parts; `esc` passes it through unchanged."""


def esc(value: object) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object]) -> Safe:
    return Safe("".join(esc(p) for p in parts))


def tag(name: str, body: object = "", **attributes: object) -> Safe:
    """`<name attr="...">body</name>`; attribute names may end in "_" (class_ -> class)."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for key, value in attributes.items()
        if value is not None
    )
    return Safe(f"<{name}{attrs}>{esc(body)}</{name}>")


def paragraph(*parts: object, class_: str | None = None) -> Safe:
    return tag("p", join(parts), class_=class_)


def guide(text: object) -> Safe:
    """The one-line reading guide every figure and table carries."""
    return tag("p", join([tag("strong", "How to read: "), text]), class_="guide")


def note(*parts: object) -> Safe:
    """A plain statement that something is missing or not comparable."""
    return tag("p", join(parts), class_="note")


def bullet_list(items: Iterable[object]) -> Safe:
    return tag("ul", join(tag("li", item) for item in items))


def table(
    headers: Sequence[object], rows: Iterable[Sequence[object]], class_: str | None = None
) -> Safe:
    head = tag("thead", tag("tr", join(tag("th", h) for h in headers)))
    body = tag("tbody", join(tag("tr", join(tag("td", c) for c in row)) for row in rows))
    return tag("table", join([head, body]), class_=class_)


def figure(data_uri: str, alt: str, reading_guide: object) -> Safe:
    if not data_uri.startswith("data:image/png;base64,"):
        raise ValueError("figures must be embedded PNG data URIs (the report is self-contained)")
    return tag(
        "figure",
        join(
            [
                Safe(f'<img src="{esc(data_uri)}" alt="{esc(alt)}">'),
                tag("figcaption", guide(reading_guide)),
            ]
        ),
    )


def run_link(url: object, text: object) -> Safe:
    """A link to an MLflow/Prefect run: only http(s) URLs become links, anything else is text.

    A `javascript:` or `data:` URL written into a results table must never become clickable.
    """
    if isinstance(url, str) and is_http_url(url):
        return tag("a", text, href=url, rel="noopener noreferrer", target="_blank")
    if isinstance(url, str) and url.strip():
        # Show what was recorded, as inert text, so a bad URL is visible rather than hidden.
        return tag("code", url, title="not an http(s) link")
    return esc(text)


def is_http_url(url: str) -> bool:
    parts = urlsplit(url.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def section(section_id: str, title: str, body: object) -> Safe:
    return tag("section", join([tag("h2", title), body]), id=section_id)


def preformatted(text: object) -> Safe:
    return tag("pre", text)


def pct(fraction: object, digits: int = 1) -> str:
    """0.623 -> "62.3"; missing -> "—"."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "—"
    return f"{100 * float(fraction):.{digits}f}"


def num(value: object, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, fmt)
