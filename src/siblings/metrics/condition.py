"""The condition language of targeted augmentation: morphology filters without ``eval``.

A condition is a conjunction of clauses ``COLUMN OP NUMBER`` on the twelve morphology
columns of SPEC §7 (:data:`siblings.anatomy.MORPHOLOGY_COLUMNS`: volumes in mL, axis
lengths in mm), such as ``"RV_volume_ml > 115 and LV_volume_ml <= 200"`` (the paper's rare
cohort of large right ventricles, §4.5). :func:`parse_condition` reads the text into a
:class:`Condition` of :class:`Clause`; a :class:`Condition` is called on one map's
features or masks the rows of a feature array. :class:`ConditionError` says what did not
parse and what is allowed. NaN never meets a clause.

Example
-------
>>> from siblings.metrics.condition import parse_condition
>>> cond = parse_condition("RV_volume_ml > 115 and 200 >= LV_volume_ml")
>>> str(cond), cond.columns
('RV_volume_ml > 115 and LV_volume_ml <= 200', ('RV_volume_ml', 'LV_volume_ml'))
>>> cond({"RV_volume_ml": 120.0, "LV_volume_ml": 150.0})
True
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
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_OP = r"<=|>=|==|!=|=>|=<|<|>|="
_CLAUSE_COL_FIRST = re.compile(rf"^\s*({_NAME})\s*({_OP})\s*({_NUMBER})\s*$")
_CLAUSE_NUM_FIRST = re.compile(rf"^\s*({_NUMBER})\s*({_OP})\s*({_NAME})\s*$")
_AND = re.compile(r"\band\b", re.IGNORECASE)


class ConditionError(SiblingsError, ValueError):
    """A condition that cannot be parsed; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class Clause:
    """``column op value``, e.g. ``RV_volume_ml > 115`` (mL or mm, as the column)."""

    column: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        return bool(_OPS[self.op](float(x), self.value))

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


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
            keep &= _OPS[c.op](f[:, anatomy.MORPHOLOGY_COLUMNS.index(c.column)], c.value)
        return keep

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
    if op in _OPS:
        return op
    raise ConditionError(f"unsupported operator {op!r} in {clause.strip()!r}; use <, >, <= or >=")


def parse_condition(text: str | Condition) -> Condition:
    """Parse ``"COLUMN OP NUMBER [and COLUMN OP NUMBER …]"`` without ``eval``.

    ``COLUMN`` is one of :data:`siblings.anatomy.MORPHOLOGY_COLUMNS` (volumes in mL, axis
    lengths in mm), ``OP`` one of ``<``, ``>``, ``<=``, ``>=``; ``NUMBER OP COLUMN`` is
    read as its mirror (``100 < RV_volume_ml`` is ``RV_volume_ml > 100``). ``and`` is
    case-insensitive; there is no ``or`` and there are no parentheses.

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
            name, op, num = m.groups()
            clauses.append(Clause(_column(name, text), _operator(op, part), float(num)))
        elif m := _CLAUSE_NUM_FIRST.match(part):
            num, op, name = m.groups()
            op = _operator(op, part)
            clauses.append(Clause(_column(name, text), _FLIP[op], float(num)))
        else:
            raise ConditionError(
                f"cannot parse {part.strip()!r} in condition {text!r}; each clause is "
                "COLUMN OP NUMBER with OP one of <, >, <=, >=, clauses joined by 'and' "
                "(e.g. 'RV_volume_ml > 115 and LV_volume_ml < 200')"
            )
    return Condition(tuple(clauses))


__all__ = ["Clause", "Condition", "ConditionError", "parse_condition"]
