"""One self-contained HTML page: inline CSS, figures as base64 data URIs, no external file or server."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from .plots import Plot
from .report_tables import Table

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f8; }
tr:nth-child(even) td { background: #fafbfc; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
.notice { background: #fff6e0; border: 1px solid #f0c36d; padding: 0.5em 1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.scroll { overflow-x: auto; }
"""


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (
        f"<h3>{escape(table.title)}</h3>{note}"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>"
    )


def render_page(
    title: str, paragraphs: Sequence[str], tables: Sequence[Table], plots: Sequence[Plot], notices: Sequence[str]
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    parts += [f'<p class="notice">{escape(n)}</p>' for n in notices]
    parts.append("<h2>Summary</h2>")
    parts += [f"<p>{escape(p)}</p>" for p in paragraphs]
    parts.append("<h2>Tables</h2>")
    parts += [table_html(t) for t in tables]
    if plots:
        parts.append("<h2>Figures</h2>")
        parts += [figure_html(p) for p in plots]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
