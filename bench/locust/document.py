"""A report as a list of blocks, rendered to Markdown (report.md) and HTML (report.html)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Cell = Any


@dataclass(slots=True)
class Document:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
        self.blocks.append(("table", (list(headers), [list(r) for r in rows])))

    def image(self, file_name: str, caption: str) -> None:
        self.blocks.append(("image", (file_name, caption)))

    def code(self, lines: Sequence[str]) -> None:
        self.blocks.append(("code", list(lines)))

    def markdown(self) -> str:
        out: list[str] = []
        for kind, value in self.blocks:
            out += _markdown_block(kind, value)
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        body = "\n".join(_html_block(kind, value) for kind, value in self.blocks)
        return _PAGE.format(title=html.escape(title), body=body)

    def write(self, folder: Path, title: str) -> None:
        (folder / "report.md").write_text(self.markdown())
        (folder / "report.html").write_text(self.html(title))


def cell(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _markdown_block(kind: str, value: Any) -> list[str]:
    if kind == "heading":
        level, text = value
        return ["#" * level + " " + text]
    if kind == "paragraph":
        return [value]
    if kind == "bullets":
        return [f"- {item}" for item in value]
    if kind == "table":
        headers, rows = value
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in rows:
            lines.append("| " + " | ".join(cell(c).replace("|", "\\|") for c in row) + " |")
        return lines
    if kind == "image":
        file_name, caption = value
        return [f"![{caption}]({file_name})"]
    if kind == "code":
        return ["```", *value, "```"]
    raise ValueError(kind)


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_ITALIC = re.compile(r"\*([^*]+)\*")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    escaped = _BOLD.sub(r"<b>\1</b>", escaped)
    return _ITALIC.sub(r"<i>\1</i>", escaped)


def _html_block(kind: str, value: Any) -> str:
    if kind == "heading":
        level, text = value
        return f"<h{level}>{_inline(text)}</h{level}>"
    if kind == "paragraph":
        return f"<p>{_inline(value)}</p>"
    if kind == "bullets":
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in value) + "</ul>"
    if kind == "table":
        headers, rows = value
        head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if kind == "image":
        file_name, caption = value
        source, text = html.escape(file_name), html.escape(caption)
        return f'<figure><img src="{source}" alt="{text}"><figcaption>{text}</figcaption></figure>'
    if kind == "code":
        return "<pre>" + html.escape("\n".join(value)) + "</pre>"
    raise ValueError(kind)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
figcaption {{ font-size: 0.85em; color: #555; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; }}
code {{ background: #f3f3f3; padding: 0 3px; }}
</style></head><body>
{body}
</body></html>
"""
