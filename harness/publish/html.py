"""Plain HTML for the published site: one page skeleton, tables, inline CSS, nothing external."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from harness.report.html import CSS as REPORT_CSS

CSS = REPORT_CSS + """
nav { font-size: .9rem; margin-bottom: 1rem; } nav a { margin-right: 1rem; }
.verdict-regressed { color: #b00020; font-weight: 600; } .verdict-improved { color: #0a7d28; font-weight: 600; }
.verdict-inconclusive { color: #8a5a00; }
ul.changes li { margin: .25rem 0; } .change { color: #b00020; font-weight: 600; }
td.change-point { color: #b00020; font-weight: 600; text-align: left; }
"""


@dataclass(frozen=True)
class Html:
    """Markup that is already safe (a link, a styled span): not escaped again."""

    text: str


Cell = str | Html


def cell(value: Cell, css_class: str = "") -> str:
    body = value.text if isinstance(value, Html) else escape(value)
    return f'<td class="{css_class}">{body}</td>' if css_class else f"<td>{body}</td>"


def table(columns: Sequence[str], rows: Sequence[Sequence[Cell]], classes: dict[str, str] | None = None,
          table_id: str = "") -> str:
    """A table; ``classes`` maps a column name to the CSS class of its cells."""
    classes = classes or {}
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(value, classes.get(column, ""))
                                     for column, value in zip(columns, row, strict=True)) + "</tr>"
                   for row in rows)
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def link(href: str, text: str) -> Html:
    return Html(f'<a href="{escape(href)}">{escape(text)}</a>')


def page(title: str, body: Sequence[str], home: str | None = None, generated: str = "") -> str:
    """A whole page; ``home`` is the relative link back to index.html (None on the index itself)."""
    nav = f'<nav>{link(home, "all runs and workloads").text}</nav>' if home else ""
    meta = f'<p class="meta">{escape(generated)}</p>' if generated else ""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        nav, f"<h1>{escape(title)}</h1>", meta, *body, "</body></html>",
    ])
