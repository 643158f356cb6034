"""``report.md`` for a repository or wiki: the same content, PNG figures beside it."""

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


def render(title: str, generated: str, summary: list[str], provenance: list[Table], figures: list[Figure],
           png_names: dict[str, str], tables: list[Table], csv_names: dict[str, str]) -> str:
    out = [f"# {title}", "", f"_{generated}_", "", "## Summary", ""]
    out += [f"- {line}" for line in summary] + ["", "## Figures", ""]
    for figure in figures:
        out.append(f"### {figure.title}")
        out.append("")
        if figure.name in png_names:
            out += [f"![{figure.title}]({png_names[figure.name]})", "", figure.caption, ""]
        else:
            out += [f"Not drawn: {figure.note}.", ""]
    out += ["## Tables", ""]
    for table in tables:
        link = f" ([CSV]({csv_names[table.name]}))" if table.name in csv_names else ""
        out += [f"### {table.title}{link}", ""]
        if table.note:
            out += [f"_{table.note}_", ""]
        out += [table_markdown(table.columns, table.rows) if table.rows else "(none)", ""]
    out += ["## Provenance", ""]
    for table in provenance:
        out += [f"### {table.title}", "", table_markdown(table.columns, table.rows), ""]
    return "\n".join(out)
