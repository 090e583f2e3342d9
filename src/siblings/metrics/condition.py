"""The condition language of targeted augmentation: morphology filters without ``eval``.

A condition is a conjunction of clauses ``COLUMN OP NUMBER`` on the twelve morphology
columns of SPEC §7 (:data:`siblings.anatomy.MORPHOLOGY_COLUMNS`: volumes in mL, axis
lengths in mm), such as ``"RV_volume_ml > 115 and LV_volume_ml <= 200"`` (the paper's rare
cohort of large right ventricles, §4.5). :func:`parse_condition` reads the text into a
:class:`Condition` of :class:`Clause`; a :class:`Condition` is called on one map's
features or masks the rows of a feature array. :class:`ConditionError` says what did not
parse and what is allowed. NaN never meets a clause.

The same language writes the targets of guided sampling (issue 17): an equality with a
tolerance, ``"RV_volume_ml = 130 ± 5"`` (``+-`` and ``+/-`` read as ``±``; ``± 5%`` is a
percentage of the target), holds when ``|x − 130| ≤ 5``; a number times ``twin``,
``"LV_volume_ml > 1.2*twin"``, is relative to the twin's own feature and must be
resolved against it (:meth:`Condition.resolve`) before it is applied.
:meth:`Condition.share` says which fraction of a cohort meets each clause and all of them.

Example
-------
>>> from siblings.metrics.condition import parse_condition
>>> cond = parse_condition("RV_volume_ml > 115 and 200 >= LV_volume_ml")
>>> str(cond), cond.columns
('RV_volume_ml > 115 and LV_volume_ml <= 200', ('RV_volume_ml', 'LV_volume_ml'))
>>> cond({"RV_volume_ml": 120.0, "LV_volume_ml": 150.0})
True
>>> target = parse_condition("RV_volume_ml = 130 +- 5 and LV_volume_ml > 1.2*twin")
>>> str(target), target.relative
('RV_volume_ml = 130 ± 5 and LV_volume_ml > 1.2*twin', True)
>>> str(target.resolve({"LV_volume_ml": 100.0, "RV_volume_ml": 90.0}))
'RV_volume_ml = 130 ± 5 and LV_volume_ml > 120'
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import anatomy
from ..errors import SiblingsError

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "="}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_OP = r"<=|>=|==|!=|=>|=<|<|>|="
# The right-hand side: a number, a number times the twin's own feature, or the twin's.
_RHS = rf"{_NUMBER}\s*\*\s*twin|twin\s*\*\s*{_NUMBER}|twin|{_NUMBER}"
_TOL = rf"(?:±|\+/-|\+-)\s*({_NUMBER})\s*(%?)"
_CLAUSE_COL_FIRST = re.compile(rf"^\s*({_NAME})\s*({_OP})\s*({_RHS})\s*(?:{_TOL})?\s*$")
_CLAUSE_NUM_FIRST = re.compile(rf"^\s*({_NUMBER})\s*({_OP})\s*({_NAME})\s*$")
_AND = re.compile(r"\band\b", re.IGNORECASE)


class ConditionError(SiblingsError, ValueError):
    """A condition that cannot be parsed; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class Clause:
    """``column op value``, e.g. ``RV_volume_ml > 115`` (mL or mm, as the column).

    ``op`` ``"="`` holds within ``tol`` of ``value`` (``RV_volume_ml = 130 ± 5``).
    ``relative``: ``value`` is a factor of the twin's own feature (``1.2*twin``), and
    ``tol_percent``: ``tol`` is a percentage of the target; both are settled by
    :meth:`resolve`.
    """

    column: str
    op: str
    value: float
    tol: float = 0.0
    relative: bool = False
    tol_percent: bool = False

    def holds(self, x: float) -> bool:
        return bool(self.mask(np.asarray([float(x)]))[0])

    def mask(self, x: np.ndarray) -> np.ndarray:
        """Where the clause holds over an array of this column's values."""
        if self.relative:
            raise ConditionError(
                f"{self} is relative to the twin: resolve it against the twin's features first"
            )
        x = np.asarray(x, dtype=np.float64)
        if self.op == "=":
            return np.abs(x - self.value) <= self.tol
        return _OPS[self.op](x, self.value)

    def resolve(self, twin: Mapping[str, float]) -> Clause:
        """The clause in absolute units: ``value`` times the twin's feature if relative,
        a percentage tolerance as mL or mm."""
        value = self.value * float(twin[self.column]) if self.relative else self.value
        tol = abs(value) * self.tol / 100 if self.tol_percent else self.tol
        return Clause(self.column, self.op, value, tol)

    def __str__(self) -> str:
        rhs = f"{self.value:g}*twin" if self.relative else f"{self.value:g}"
        tol = f" ± {self.tol:g}{'%' if self.tol_percent else ''}" if self.op == "=" else ""
        return f"{self.column} {self.op} {rhs}{tol}"


@dataclass(frozen=True)
class Condition:
    """A conjunction of :class:`Clause` on the morphology columns of SPEC §7.

    Call it on a morphology dict (or a 12-vector in ``MORPHOLOGY_COLUMNS`` order) to get
    True when every clause holds. NaN never meets a clause.
    """

    clauses: tuple[Clause, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.column for c in self.clauses))

    @property
    def relative(self) -> bool:
        """True when a clause is relative to the twin (``…*twin``)."""
        return any(c.relative for c in self.clauses)

    def resolve(self, twin: Mapping[str, float]) -> Condition:
        """The condition in absolute units for one twin's morphology (:meth:`Clause.resolve`)."""
        return Condition(tuple(c.resolve(twin) for c in self.clauses))

    def __call__(self, features: Mapping[str, float] | Sequence[float] | np.ndarray) -> bool:
        if isinstance(features, Mapping):
            return all(c.holds(features[c.column]) for c in self.clauses)
        vec = np.asarray(features, dtype=np.float64).reshape(-1)
        if vec.size != len(anatomy.MORPHOLOGY_COLUMNS):
            raise ValueError(f"expected {len(anatomy.MORPHOLOGY_COLUMNS)} features, got {vec.size}")
        idx = anatomy.MORPHOLOGY_COLUMNS.index
        return all(c.holds(vec[idx(c.column)]) for c in self.clauses)

    def mask(self, features: np.ndarray) -> np.ndarray:
        """Boolean mask over the rows of an ``(n, 12)`` feature array."""
        f = np.asarray(features, dtype=np.float64).reshape(-1, len(anatomy.MORPHOLOGY_COLUMNS))
        keep = np.ones(len(f), dtype=bool)
        for c in self.clauses:
            keep &= c.mask(f[:, anatomy.MORPHOLOGY_COLUMNS.index(c.column)])
        return keep

    def share(self, features: np.ndarray) -> dict[str, float]:
        """Fraction of the rows of an ``(n, 12)`` feature array meeting each clause (by its
        text) and all of them (``"all"``): for a target, the share within tolerance."""
        f = np.asarray(features, dtype=np.float64).reshape(-1, len(anatomy.MORPHOLOGY_COLUMNS))
        out = {
            str(c): float(c.mask(f[:, anatomy.MORPHOLOGY_COLUMNS.index(c.column)]).mean())
            for c in self.clauses
        }
        out["all"] = float(self.mask(f).mean())
        return out

    def __str__(self) -> str:
        return " and ".join(str(c) for c in self.clauses)


def _column(name: str, text: str) -> str:
    if name in anatomy.MORPHOLOGY_COLUMNS:
        return name
    by_lower = {c.lower(): c for c in anatomy.MORPHOLOGY_COLUMNS}
    hint = by_lower.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, anatomy.MORPHOLOGY_COLUMNS, n=1)), None
    )
    did = f" (did you mean {hint}?)" if hint else ""
    raise ConditionError(
        f"unknown column {name!r} in condition {text!r}{did}; columns are "
        f"{', '.join(anatomy.MORPHOLOGY_COLUMNS)}"
    )


def _operator(op: str, clause: str) -> str:
    if op in _OPS or op == "=":
        return op
    raise ConditionError(
        f"unsupported operator {op!r} in {clause.strip()!r}; use <, >, <= or >=, "
        "or = with a tolerance (e.g. 'RV_volume_ml = 130 ± 5')"
    )


def _right_side(rhs: str) -> tuple[float, bool]:
    """``(value, relative)`` of ``130``, ``1.2*twin``, ``twin*1.2`` or ``twin``."""
    parts = [p.strip() for p in rhs.split("*")]
    if "twin" in parts:
        numbers = [p for p in parts if p != "twin"]
        return (float(numbers[0]) if numbers else 1.0), True
    return float(rhs), False


def _clause(
    name: str, op: str, rhs: str, tol: str | None, pct: str, part: str, text: str
) -> Clause:
    op = _operator(op, part)
    value, relative = _right_side(rhs)
    if op == "=" and tol is None:
        raise ConditionError(
            f"{part.strip()!r}: an equality needs a tolerance, e.g. "
            f"'{name} = {rhs.strip()} ± 5' (or ± 5%)"
        )
    if op != "=" and tol is not None:
        raise ConditionError(
            f"{part.strip()!r}: a tolerance (±) goes with '=' only; "
            f"write '{name} = {rhs.strip()} ± {tol}{pct}' or drop it"
        )
    tolerance = float(tol) if tol is not None else 0.0
    if op == "=" and tolerance <= 0:
        raise ConditionError(f"{part.strip()!r}: the tolerance must be above 0")
    clause = Clause(_column(name, text), op, value, tolerance, relative, bool(pct))
    return clause if relative else clause.resolve({})


def parse_condition(text: str | Condition) -> Condition:
    """Parse ``"COLUMN OP NUMBER [and COLUMN OP NUMBER …]"`` without ``eval``.

    ``COLUMN`` is one of :data:`siblings.anatomy.MORPHOLOGY_COLUMNS` (volumes in mL, axis
    lengths in mm), ``OP`` one of ``<``, ``>``, ``<=``, ``>=``; ``NUMBER OP COLUMN`` is
    read as its mirror (``100 < RV_volume_ml`` is ``RV_volume_ml > 100``). ``and`` is
    case-insensitive; there is no ``or`` and there are no parentheses. Targets add
    ``COLUMN = NUMBER ± TOL`` (``+-``, ``+/-``; ``TOL%`` a percentage of the target) and
    a right-hand side ``FACTOR*twin`` relative to the twin's own feature
    (:attr:`Condition.relative`; :meth:`Condition.resolve`).

    Raises
    ------
    ConditionError (a ValueError)
        naming the unknown column (with the valid ones) or the clause that does not parse.
    """
    if isinstance(text, Condition):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ConditionError(
            "empty condition; write e.g. 'RV_volume_ml > 115' or "
            "'RV_volume_ml > 115 and LV_volume_ml < 200'"
        )
    clauses = []
    for part in _AND.split(text):
        if not part.strip():
            raise ConditionError(
                f"condition {text!r}: 'and' needs a clause on each side "
                "(e.g. 'RV_volume_ml > 115 and LV_volume_ml < 200')"
            )
        if m := _CLAUSE_COL_FIRST.match(part):
            name, op, rhs, tol, pct = m.groups()
            clauses.append(_clause(name, op, rhs, tol, pct or "", part, text))
        elif m := _CLAUSE_NUM_FIRST.match(part):
            num, op, name = m.groups()
            op = _operator(op, part)
            clauses.append(_clause(name, _FLIP[op], num, None, "", part, text))
        else:
            raise ConditionError(
                f"cannot parse {part.strip()!r} in condition {text!r}; each clause is "
                "COLUMN OP NUMBER with OP one of <, >, <=, >=, clauses joined by 'and' "
                "(e.g. 'RV_volume_ml > 115 and LV_volume_ml < 200'); a target may also "
                "be COLUMN = NUMBER ± TOL, or relative to the twin: COLUMN > 1.2*twin"
            )
    return Condition(tuple(clauses))


__all__ = ["Clause", "Condition", "ConditionError", "parse_condition"]
