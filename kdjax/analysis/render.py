"""A small document model rendered both as Markdown and as a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; }
"""


@dataclass
class Doc:
    """Blocks: ("h", level, text), ("p", text), ("note", text), ("list", items),
    ("table", header, rows), ("img", path, caption)."""

    title: str
    blocks: list[tuple[Any, ...]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def items(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("list", items))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        if rows:
            self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))

    def img(self, path: Path | None, caption: str) -> None:
        if path is not None:
            self.blocks.append(("img", Path(path), caption))

    def markdown(self, root: Path | None = None) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out += [f"{'#' * (b[1] + 1)} {b[2]}", ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "note":
                out += [f"> **Note.** {b[1]}", ""]
            elif kind == "list":
                out += [f"- {i}" for i in b[1]] + [""]
            elif kind == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b[2]]
                out.append("")
            elif kind == "img":
                rel = b[1].relative_to(root) if root else b[1]
                out += [f"![{b[2]}]({rel.as_posix()})", "", f"*{b[2]}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                body.append(f"<h{b[1] + 1}>{_inline(b[2])}</h{b[1] + 1}>")
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "note":
                body.append(f'<p class="note"><b>Note.</b> {_inline(b[1])}</p>')
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in b[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(b[1].read_bytes()).decode("ascii")
                alt = html.escape(b[2], quote=True)
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                    f"<figcaption>{_inline(b[2])}</figcaption></figure>"
                )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _inline(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: **bold** and `code`."""
    s = html.escape(text, quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)
