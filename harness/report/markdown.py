"""``report.md`` for a repository or wiki: the same content, PNG figures beside it.

It opens with a table of contents linking to the headings by the anchors GitHub and most
Markdown renderers derive from heading text (``heading_anchor``); headings therefore hold
plain text only (a table's CSV link sits on the line below its heading).
"""

from __future__ import annotations

import re

from harness.report.figures import Figure
from harness.report.tables import Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_NUMBER = re.compile(r"^[<>+\-\[]?\d")


def table_markdown(columns: list[str], rows: list[list[str]]) -> str:
    """A GitHub table; columns of numbers are right-aligned."""
    numeric = [all(_NUMBER.match(row[i]) for row in rows if row[i]) and any(row[i] for row in rows)
               for i in range(len(columns))]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "|".join("---:" if numeric[i] else "---" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def heading_anchor(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


class _Anchors:
    """Anchors in page order; a repeated heading gets -1, -2, ... as GitHub numbers them."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        base = heading_anchor(text)
        count = self.seen.get(base, 0)
        self.seen[base] = count + 1
        return base if count == 0 else f"{base}-{count}"


def _contents(title: str, figures: list[Figure], tables: list[Table], provenance: list[Table]) -> list[str]:
    anchor = _Anchors()
    anchor(title)  # the page's own heading comes first
    anchor("Contents")
    lines = ["## Contents", ""]
    for section, items in (("Summary", []), ("Figures", [f.title for f in figures]),
                           ("Tables", [t.title for t in tables]), ("Provenance", [t.title for t in provenance])):
        lines.append(f"- [{section}](#{anchor(section)})")
        lines += [f"  - [{_cell(item)}](#{anchor(item)})" for item in items]
    return [*lines, ""]


def render(title: str, generated: str, summary: list[str], provenance: list[Table], figures: list[Figure],
           png_names: dict[str, str], tables: list[Table], csv_names: dict[str, str]) -> str:
    out = [f"# {title}", "", f"_{generated}_", "", *_contents(title, figures, tables, provenance), "## Summary", ""]
    out += [f"- {line}" for line in summary] + ["", "## Figures", ""]
    for figure in figures:
        out.append(f"### {figure.title}")
        out.append("")
        if figure.name in png_names:
            caption = f"{figure.caption} {figure.omitted}" if figure.omitted else figure.caption
            out += [f"![{figure.title}]({png_names[figure.name]})", "", caption, ""]
        else:
            out += [f"Not drawn: {figure.note}.", ""]
    out += ["## Tables", ""]
    for table in tables:
        out += [f"### {table.title}", ""]
        if table.name in csv_names:
            out += [f"[CSV]({csv_names[table.name]})", ""]
        if table.note:
            out += [f"_{table.note}_", ""]
        out += [table_markdown(table.columns, table.rows) if table.rows else "(none)", ""]
    out += ["## Provenance", ""]
    for table in provenance:
        out += [f"### {table.title}", "", table_markdown(table.columns, table.rows), ""]
    return "\n".join(out)
