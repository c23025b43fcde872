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
        """The page, from the jinja2 template next to this module (figures embedded)."""
        blocks = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                blocks.append({"kind": kind, "level": b[1], "text": b[2]})
            elif kind in ("p", "note"):
                blocks.append({"kind": kind, "text": b[1]})
            elif kind == "list":
                blocks.append({"kind": kind, "items": b[1]})
            elif kind == "table":
                blocks.append({"kind": kind, "header": b[1], "rows": b[2]})
            elif kind == "img":
                data = base64.b64encode(b[1].read_bytes()).decode("ascii")
                blocks.append({"kind": kind, "data": data, "caption": b[2]})
        return _template().render(title=self.title, css=CSS, blocks=blocks)


def _template() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kdjax.analysis", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        keep_trailing_newline=True,
    )
    env.filters["inline"] = _inline
    return env.get_template("report.html.j2")


def _inline(text: str) -> Any:
    """Escape, then the two Markdown marks the report uses: **bold** and `code`."""
    from markupsafe import Markup

    s = html.escape(str(text), quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", s))
