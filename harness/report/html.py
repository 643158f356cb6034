"""A self-contained ``index.html``: figures embedded as data URIs, CSS inline, no script,
no external resource, so it opens offline from any folder or as an e-mail attachment.

The page opens with a table of contents (plain anchor links): the figures are tall, and the
tables would otherwise start thousands of pixels down.
"""

from __future__ import annotations

import base64
from html import escape

from harness.report.figures import Figure
from harness.report.tables import Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: .9rem; }
ul.summary li { margin: .3rem 0; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: .9rem; max-width: 900px; }
.missing { color: #8a5a00; background: #fff6e0; padding: .5rem .8rem; border-radius: 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; } td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; white-space: normal; max-width: 40rem; } td.flag { min-width: 22rem; }
.note { color: #666; font-size: .85rem; }
.omitted { color: #8a5a00; font-size: .9rem; }
nav.toc { background: #f7f7f9; border: 1px solid #e4e4e8; border-radius: 4px; padding: .4rem 1rem; margin: 1rem 0; }
nav.toc ol { margin: .2rem 0; padding-left: 1.4rem; } nav.toc > ol > li { margin: .3rem 0; }
nav.toc ol ol { columns: 2; column-gap: 2rem; font-size: .9rem; }
a.top { font-size: .8rem; font-weight: normal; margin-left: .6rem; }
"""

WIDE_COLUMNS = ("reason", "command", "host", "hardware", "os", "flag")


def _table(table: Table, csv_name: str | None) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for index, cell in enumerate(row):
            wide = table.columns[index] in WIDE_COLUMNS
            css = "text flag" if table.columns[index] == "flag" else "text"
            cells.append(f'<td class="{css}">{escape(cell)}</td>' if wide else f"<td>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    link = f' <a href="{escape(csv_name)}">CSV</a>' if csv_name else ""
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (f'<h3 id="{table_id(table)}">{escape(table.title)}{link}</h3>{note}'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def table_id(table: Table) -> str:
    return f"table-{escape(table.name)}"


def figure_id(figure: Figure) -> str:
    return f"figure-{escape(figure.name)}"


def _figure(figure: Figure, png: bytes | None) -> str:
    if png is None:
        return (f'<figure id="{figure_id(figure)}"><h3>{escape(figure.title)}</h3>'
                f'<p class="missing">Not drawn: {escape(figure.note)}.</p></figure>')
    data = base64.b64encode(png).decode("ascii")
    omitted = f' <span class="omitted">{escape(figure.omitted)}</span>' if figure.omitted else ""
    return (f'<figure id="{figure_id(figure)}"><h3>{escape(figure.title)}</h3>'
            f'<img class="report-figure" alt="{escape(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(figure.caption)}{omitted}</figcaption></figure>")


def _contents(figures: list[Figure], tables: list[Table], provenance: list[Table]) -> str:
    def entries(items: list[tuple[str, str]]) -> str:
        return "<ol>" + "".join(f'<li><a href="#{anchor}">{escape(text)}</a></li>' for anchor, text in items) + "</ol>"

    sections = [
        ("summary", "Summary", ""),
        ("figures", "Figures", entries([(figure_id(f), f.title) for f in figures])),
        ("tables", "Tables", entries([(table_id(t), t.title) for t in tables])),
        ("provenance", "Provenance", entries([(table_id(t), t.title) for t in provenance])),
    ]
    return ('<nav class="toc" id="contents" aria-label="contents"><strong>Contents</strong><ol>'
            + "".join(f'<li><a href="#{anchor}">{title}</a>{inner}</li>' for anchor, title, inner in sections)
            + "</ol></nav>")


def _section(anchor: str, title: str) -> str:
    return f'<h2 id="{anchor}">{title}<a class="top" href="#contents">contents</a></h2>'


def render(title: str, generated: str, summary: list[str], provenance: list[Table], figures: list[Figure],
           pngs: dict[str, bytes], tables: list[Table], csv_names: dict[str, str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1><p class=\"meta\">{escape(generated)}</p>",
        _contents(figures, tables, provenance),
        _section("summary", "Summary"),
        '<ul class="summary">' + "".join(f"<li>{escape(line)}</li>" for line in summary) + "</ul>",
        _section("figures", "Figures"),
        *(_figure(f, pngs.get(f.name)) for f in figures),
        _section("tables", "Tables"),
        *(_table(t, csv_names.get(t.name)) for t in tables),
        _section("provenance", "Provenance"),
        *(_table(t, None) for t in provenance),
        "</body></html>",
    ]
    return "\n".join(parts)
