"""A self-contained ``index.html``: figures embedded as data URIs, CSS inline, no script,
no external resource, so it opens offline from any folder or as an e-mail attachment."""

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
td.text { text-align: left; white-space: normal; max-width: 40rem; }
.note { color: #666; font-size: .85rem; }
"""


def _table(table: Table, csv_name: str | None) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for index, cell in enumerate(row):
            wide = table.columns[index] in ("reason", "command", "host", "hardware", "os")
            cells.append(f'<td class="text">{escape(cell)}</td>' if wide else f"<td>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    link = f' <a href="{escape(csv_name)}">CSV</a>' if csv_name else ""
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (f'<h3 id="table-{escape(table.name)}">{escape(table.title)}{link}</h3>{note}'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _figure(figure: Figure, png: bytes | None) -> str:
    if png is None:
        return (f'<figure id="figure-{escape(figure.name)}"><h3>{escape(figure.title)}</h3>'
                f'<p class="missing">Not drawn: {escape(figure.note)}.</p></figure>')
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="figure-{escape(figure.name)}"><h3>{escape(figure.title)}</h3>'
            f'<img class="report-figure" alt="{escape(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(figure.caption)}</figcaption></figure>")


def render(title: str, generated: str, summary: list[str], provenance: list[Table], figures: list[Figure],
           pngs: dict[str, bytes], tables: list[Table], csv_names: dict[str, str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1><p class=\"meta\">{escape(generated)}</p>",
        "<h2>Summary</h2>",
        '<ul class="summary">' + "".join(f"<li>{escape(line)}</li>" for line in summary) + "</ul>",
        "<h2>Figures</h2>",
        *(_figure(f, pngs.get(f.name)) for f in figures),
        "<h2>Tables</h2>",
        *(_table(t, csv_names.get(t.name)) for t in tables),
        "<h2>Provenance</h2>",
        *(_table(t, None) for t in provenance),
        "</body></html>",
    ]
    return "\n".join(parts)
