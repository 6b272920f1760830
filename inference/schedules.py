"""Step schedules for annealed hyper-parameters (beta_g, rho, beta_b, z_pres temperature, ...).

A schedule is a callable ``step -> float``. All schedules here are piecewise linear, which is
what both papers use (GNM supplement section 3; ECON appendix C.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

Schedule = Callable[[int], float]
ScheduleLike = Union[float, int, Schedule]


@dataclass(frozen=True)
class Constant:
    """``value`` at every step."""

    value: float

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Linear:
    """``start`` until ``begin``, linear to ``end`` at step ``finish``, then ``end``.

    >>> Linear(0.0, 1.0, 0, 100)(50)
    0.5
    """

    start: float
    end: float
    begin: int
    finish: int

    def __post_init__(self):
        if self.finish < self.begin:
            raise ValueError(f"Linear schedule ends (step {self.finish}) before it begins (step {self.begin})")

    def __call__(self, step: int) -> float:
        if step <= self.begin:
            return float(self.start)
        if step >= self.finish:
            return float(self.end)
        frac = (step - self.begin) / (self.finish - self.begin)
        return float(self.start + frac * (self.end - self.start))


@dataclass(frozen=True)
class Geometric:
    """``start`` until ``begin``, geometric (linear in log) to ``end`` at step ``finish``, then ``end``.

    For positive scales spanning orders of magnitude, e.g. ECON's competition temperature.

    >>> round(Geometric(100.0, 1.0, 0, 100)(50), 6)
    10.0
    """

    start: float
    end: float
    begin: int
    finish: int

    def __post_init__(self):
        if not (self.start > 0 and self.end > 0):
            raise ValueError(f"Geometric schedule needs positive values, got {self.start} and {self.end}")
        Linear(0.0, 0.0, self.begin, self.finish)  # checks the steps

    def __call__(self, step: int) -> float:
        return float(math.exp(Linear(math.log(self.start), math.log(self.end), self.begin, self.finish)(step)))


def as_schedule(value: ScheduleLike) -> Schedule:
    """A number becomes a :class:`Constant`; a callable is returned unchanged."""
    if callable(value):
        return value
    if isinstance(value, (int, float)):
        return Constant(float(value))
    raise TypeError(f"expected a number or a callable step -> float, got {type(value).__name__}")
