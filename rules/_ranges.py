"""The valid ranges of the built-in rules' numeric params, declared beside their
:class:`~pipemake.rule.Param` declarations and checked in the rules' ``check`` before
anything runs (``validate``, ``build``), and again when a value comes from an upstream
stage, once it is known.

A problem names the value, the range, what the value means and what to write instead,
so every out-of-range param reads the same whichever rule it belongs to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipemake.rule import Param

__all__ = ["Range", "in_order", "is_number", "range_problems"]


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a finite float (a bool is neither here; YAML's
    ``.nan`` and ``.inf`` are floats that no range holds)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Range:
    """The values a numeric param may take: ``low`` and ``high`` bounds (None: unbounded;
    inclusive unless ``low_open``/``high_open``), optionally only multiples of ``step``;
    ``means`` says what the value is, for the message."""

    low: float | None = None
    high: float | None = None
    means: str = ""
    low_open: bool = False
    high_open: bool = False
    step: int | None = None

    def allows(self, value: float) -> bool:
        """Whether ``value`` lies in the range (never a NaN or an infinity)."""
        if not is_number(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return self.step is None or value % self.step == 0

    def text(self) -> str:
        """The range in symbols: ``>= 2``, ``> 0``, ``>= 0 and < 1``, ``from 0 to 256``."""
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {_num(self.low)}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {_num(self.high)}"
        if low and high and not (self.low_open or self.high_open):
            said = f"from {_num(self.low)} to {_num(self.high)}"  # type: ignore[arg-type]
        else:
            said = " and ".join(part for part in (low, high) if part)
        if self.step is not None:
            return f"a multiple of {self.step} {said}".rstrip()
        return said

    def fix(self, value: float) -> str:
        """What to write instead of ``value``, in words."""
        low = None if self.low is None else _num(self.low)
        high = None if self.high is None else _num(self.high)
        if self.step is not None:
            near = round(value / self.step) * self.step if is_number(value) else 0
            if self.low is not None:
                near = max(near, math.ceil(self.low / self.step) * self.step)
            if self.high is not None:
                near = min(near, math.floor(self.high / self.step) * self.step)
            return f"set it to e.g. {near}"
        if low is not None and high is not None:
            upto = f"up to (not including) {high}" if self.high_open else f"to {high}"
            return f"set it {'above' if self.low_open else 'from'} {low} {upto}"
        if low is not None:
            return f"set it above {low}" if self.low_open else f"set it to {low} or more"
        return f"set it below {high}" if self.high_open else f"set it to {high} or less"

    def problem(self, key: str, value: Any, default: Any) -> str:
        """The message for ``value`` of param ``key`` outside the range."""
        means = f" ({self.means})" if self.means else ""
        return (
            f"param {key!r} is {value!r} but must be {self.text()}{means}: {self.fix(value)}, "
            f"or leave it out for the default {default!r}"
        )


def range_problems(
    params: Mapping[str, Any], declared: Mapping[str, Param], ranges: Mapping[str, Range]
) -> list[tuple[str, str]]:
    """``(key, problem)`` for every param of ``ranges`` whose value in ``params`` lies
    outside its range. A value that is not a number is left alone: a wrong type is the
    loader's to report, and a value an upstream stage computes is checked once known."""
    problems = []
    for key, valid in ranges.items():
        value = params.get(key)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and not valid.allows(value)
        ):
            problems.append((key, valid.problem(key, value, declared[key].default)))
    return problems


def in_order(problems: list[tuple[str, str]], declared: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``problems`` in the order their keys are declared (as a reader meets the params),
    problems of one key in the order found."""
    rank = {key: n for n, key in enumerate(declared)}
    return sorted(problems, key=lambda problem: rank.get(problem[0], len(rank)))
