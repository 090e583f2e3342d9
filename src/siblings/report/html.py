"""Self-contained HTML reports: inline CSS, PNG figures embedded as base64 data URIs.

A report opens offline and can be mailed as one file. The pieces (:func:`table`,
:func:`figure`, :func:`page`) are plain functions of strings so experiments can build
their own pages.

Example
-------
>>> from siblings.report.html import page, table
>>> html = page("Demo", [("Numbers", table(["a", "b"], [[1, 2]]))])
>>> html.startswith("<!DOCTYPE html>")
True
"""

from __future__ import annotations

import base64
import html as _html
import math
import re
from collections.abc import Sequence

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; }
th { background: #f4f4f4; } td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
tr.bad td { background: #fff3f0; }
p.warning { background: #fff3f0; border-left: 4px solid #c0392b; padding: 0.4em 0.8em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.88em; margin-top: 0.3em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def esc(text: object) -> str:
    """HTML-escape any value's ``str``."""
    return _html.escape(str(text), quote=True)


def number(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "–" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def interval(ci: Sequence[float] | None, digits: int = 3, scale: float = 1.0) -> str:
    """``[lo, hi]`` with ``digits`` decimals after multiplying by ``scale``; "–" if absent."""
    if not ci:
        return "–"
    return f"[{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]"


def violation_rows(metrics: dict) -> list[list[str]]:
    """The TV% and "maps violating" rows of a summary table (metric, value, 95% interval,
    reference), shared by the ``evaluate`` and ``edit`` reports.

    ``metrics`` holds ``tv_percent``, ``tv_percent_ci`` and ``maps_violating_percent``,
    and ``metrics["reference"]`` the same for the reference (a cohort, or the twin).
    """
    ref = metrics["reference"]
    return [
        [
            "TV% (mean % of the 12 checks violated)",
            number(metrics["tv_percent"], 2),
            interval(metrics.get("tv_percent_ci"), 2),
            number(ref["tv_percent"], 2),
        ],
        [
            "maps violating at least one check (%)",
            number(metrics["maps_violating_percent"], 1),
            "",
            number(ref["maps_violating_percent"], 1),
        ],
    ]


# A number or an interval (optionally a number followed by its interval, or with a
# unit: %, mL, mm, s), or "–" for a missing value. A cell that starts with a number but
# goes on in words ("23.9% of samples …") is text.
_NUM = r"[-−+]?\d[\d,]*(?:\.\d*)?(?:e[-+]?\d+)?(?:\s*(?:%|mL|mm|s))?"
_NUMERIC = re.compile(
    rf"^\s*(?:–|\(?{_NUM}\)?|\[\s*{_NUM}\s*,\s*{_NUM}\s*\]|{_NUM}\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*\])\s*$"
)


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    row_classes: Sequence[str] | None = None,
    raw: bool = False,
) -> str:
    """An HTML table; cells are escaped unless ``raw``.

    Numeric cells (numbers, intervals, "–") are right-aligned, text left-aligned; a
    header is aligned like the first row's cell below it.
    """
    cell = (lambda v: str(v)) if raw else esc

    def td(v: object, tag: str = "td") -> str:
        text = cell(v)
        return (
            f'<{tag} class="num">{text}</{tag}>'
            if _NUMERIC.match(str(v))
            else f"<{tag}>{text}</{tag}>"
        )

    first = list(rows[0]) if rows else []
    heads = []
    for j, h in enumerate(header):
        num = j < len(first) and bool(_NUMERIC.match(str(first[j])))
        heads.append(f'<th class="num">{esc(h)}</th>' if num else f"<th>{esc(h)}</th>")
    out = ["<table>", "<tr>" + "".join(heads) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(td(v) for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def figure(png: bytes, caption: str = "", alt: str = "") -> str:
    """A ``<figure>`` with the PNG embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt or caption)}" src="data:image/png;base64,{data}">{cap}</figure>'


def page(title: str, sections: Sequence[tuple[str, str]], subtitle: str = "") -> str:
    """A complete HTML document: ``sections`` are (heading, inner HTML) pairs."""
    body = [f"<h1>{esc(title)}</h1>"]
    if subtitle:
        body.append(f'<p class="meta">{subtitle}</p>')
    for heading, inner in sections:
        body.append(f"<h2>{esc(heading)}</h2>\n{inner}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
