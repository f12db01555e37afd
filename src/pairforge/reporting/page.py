"""The report page: the sections found under the given folders, written as one self-contained HTML page
(plots embedded) and a Markdown twin with PNG files beside it."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pairforge.errors import InputError
from pairforge.files import check_output, write_atomically
from pairforge.reporting.sections import PageSection, report_sections


def build_report(paths: list[Path], out: Path, leave_out: frozenset[Path] = frozenset()) -> list[PageSection]:
    """Find the artifacts under `paths`, not `leave_out`, write `out` (HTML) and its Markdown twin: the sections."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(str(missing[0]), "no such file or folder")
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError("--out", f"{out}: expected a name ending in .html (the Markdown twin is written beside it)")
    for page in (out, out.with_suffix(".md")):
        check_output(page, "file", "--out", paths)
    found = {f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()}
    files = sorted(f for f in found if not leave_out.intersection(f.parents))
    sections = report_sections(paths, files)
    _write_html(sections, out)
    _write_markdown(sections, out.with_suffix(".md"))
    return sections


def _write_html(sections: list[PageSection], out: Path) -> None:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pairforge report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}",
             "</style></head><body><h1>pairforge report</h1><nav>",
             " · ".join(f"<a href='#{s.id}'>{s.title}</a>" for s in sections), "</nav>"]
    for s in sections:
        parts.append(f"<section id='{s.id}'><h2>{s.title}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs] + ([f"<pre>{html.escape(s.code)}</pre>"]
                                                                        if s.code is not None else [])
        for grid in s.tables:
            parts.append(f"<table><caption>{html.escape(grid.title)}</caption><tr>" +
                         "".join(f"<th>{html.escape(h)}</th>" for h in grid.columns) + "</tr>" + "".join(
                             "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in grid.rows)
                         + "</table>")
        parts += [f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                  for name, png in s.figures]
        parts.append("</section>")
    parts.append("</body></html>")
    write_atomically(out, lambda tmp: tmp.write_text("".join(parts), encoding="utf-8"))


def _write_markdown(sections: list[PageSection], out: Path) -> None:
    images = out.with_name(f"{out.stem}_files")
    images.mkdir(parents=True, exist_ok=True)
    lines = ["# pairforge report", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [line for p in s.paragraphs for line in (p, "")]
        if s.code is not None:  # a fence longer than any run of backticks in the text (a template may hold ```)
            fence = "`" * max(3, 1 + max(map(len, re.findall("`+", s.code)), default=0))
            lines += [f"{fence}json", s.code, fence, ""]
        for grid in s.tables:
            lines += [f"**{grid.title}**", "", "| " + " | ".join(grid.columns) + " |", "|" + "---|" * len(grid.columns),
                      *("| " + " | ".join(row) + " |" for row in grid.rows), ""]
        for name, png in s.figures:
            (images / f"{name}.png").write_bytes(png)
            lines += [f"![{name}]({images.name}/{name}.png)", ""]
    write_atomically(out, lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8"))
