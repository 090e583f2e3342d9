"""Result tables of the experiments, written as CSV, Markdown and HTML from one object.

A cell is a plain value (text or number) or an :class:`Estimate` (a value with its 95%
bootstrap interval). CSV keeps full precision and spreads an estimate over three columns
(``col``, ``col_lo``, ``col_hi``); Markdown and HTML print ``value [lo, hi]``.

Example
-------
>>> t = Table("demo", "Demo", ["cohort", "TV (%)"], [["real", Estimate(21.0, (18.5, 23.4), 2)]])
>>> print(t.markdown().splitlines()[2])
| real | 21.00 [18.50, 23.40] |
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Estimate:
    """A metric value with its interval (``None`` when not computed) and print digits."""

    value: float
    ci: tuple[float, float] | None = None
    digits: int = 3

    @classmethod
    def of(cls, metrics: dict, key: str, digits: int = 3) -> Estimate:
        """``metrics[key]`` with ``metrics[key + "_ci"]`` (as :func:`siblings.metrics.compare` gives)."""
        ci = metrics.get(f"{key}_ci")
        return cls(
            float(metrics[key]), None if ci is None else (float(ci[0]), float(ci[1])), digits
        )

    def text(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "–"
        v = f"{self.value:.{self.digits}f}"
        if self.ci is None:
            return v
        return f"{v} [{self.ci[0]:.{self.digits}f}, {self.ci[1]:.{self.digits}f}]"


def _plain(v: object) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return str(v)


@dataclass
class Table:
    """One result table: ``name`` (file stem), ``title``, header, rows, caption."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[object]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header: list[str] = []
        for j, col in enumerate(self.columns):
            header.append(col)
            if any(isinstance(r[j], Estimate) for r in self.rows):
                header += [f"{col} ci_lo", f"{col} ci_hi"]
        w.writerow(header)
        for r in self.rows:
            out: list[object] = []
            for j, v in enumerate(r):
                has_ci = any(isinstance(x[j], Estimate) for x in self.rows)
                if isinstance(v, Estimate):
                    out.append(repr(float(v.value)))
                    out += ["", ""] if v.ci is None else [repr(v.ci[0]), repr(v.ci[1])]
                else:
                    out.append(repr(v) if isinstance(v, float) else v)
                    if has_ci:
                        out += ["", ""]
            w.writerow(out)
        return buf.getvalue()

    def _cells(self) -> list[list[str]]:
        return [[v.text() if isinstance(v, Estimate) else _plain(v) for v in r] for r in self.rows]

    def markdown(self) -> str:
        esc = [c.replace("|", "\\|") for c in self.columns]
        lines = ["| " + " | ".join(esc) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self._cells()]
        text = "\n".join(lines) + "\n"
        if self.caption:
            text = f"**{self.title}.** {self.caption}\n\n" + text
        for note in self.notes:
            text += f"\n{note}\n"
        return text

    def html(self) -> str:
        from ..report import html as H

        parts = [H.table(self.columns, self._cells())]
        if self.caption:
            parts.insert(0, f"<p>{H.esc(self.caption)}</p>")
        parts += [f'<p class="meta">{H.esc(n)}</p>' for n in self.notes]
        return "\n".join(parts)


def estimates(metrics: dict, keys: Sequence[tuple[str, int]]) -> list[Estimate]:
    """``Estimate.of(metrics, key, digits)`` for each ``(key, digits)``."""
    return [Estimate.of(metrics, k, d) for k, d in keys]


METRIC_KEYS: tuple[tuple[str, int], ...] = (
    ("fd", 3),
    ("precision", 3),
    ("recall", 3),
    ("tv_percent", 2),
)
METRIC_HEADERS: tuple[str, ...] = ("FD", "precision", "recall", "TV (%)")
