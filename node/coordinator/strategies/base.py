"""What a strategy is: a plain async function ``(pool, query, params) -> Answer`` plus its parameters.

The trace is kept by the pool (every call it makes is a step); the strategy
returns the final text, how it was decided, and which steps produced it.
Parameters are declared with bounds, so a bad one is a clear ``bad_request``
naming it before any expert is asked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import QueryRequest

from ..calls import QueryFailed
from ..pool import Pool

ParamValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its type, default and bounds (numbers) or choices (strings)."""

    kind: type
    default: ParamValue
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def check(self, name: str, value: ParamValue) -> ParamValue:
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            value = value.lower() in ("true", "1")
        if isinstance(value, str) and self.kind in (int, float):
            try:
                value = self.kind(value)
            except ValueError:
                raise QueryFailed("bad_request", f"param {name!r} must be a {self.kind.__name__}") from None
        if type(value) is not self.kind:
            raise QueryFailed("bad_request", f"param {name!r} must be a {self.kind.__name__}, got {value!r}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:  # type: ignore[operator]
            raise QueryFailed("bad_request", f"param {name!r} must be within [{self.low:g}, {self.high:g}]")
        if self.choices and value not in self.choices:
            raise QueryFailed("bad_request", f"param {name!r} must be one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True, slots=True)
class Answer:
    """A strategy's result: the text, how it was decided (a line for the trace), the steps that wrote it."""

    text: str
    decision: str
    final: tuple[int, ...] = ()
    finish_reason: str = "stop"


Run = Callable[[Pool, QueryRequest, dict[str, Any]], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    run: Run
    summary: str
    cost: str  # expert calls, in terms of the params (docs/collaboration.md)
    params: Mapping[str, Param] = field(default_factory=dict)

    def check(self, given: Mapping[str, ParamValue]) -> dict[str, Any]:
        """The full parameter set: defaults overridden by ``given``; unknown keys are errors."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise QueryFailed("bad_request", f"strategy {self.name!r} has no param {unknown[0]!r} (known: {known})")
        return {name: spec.check(name, given[name]) if name in given else spec.default
                for name, spec in self.params.items()}


# Parameters every fan-out strategy shares.
def fan_out_params(k: int = 3, k_max: int = 16) -> dict[str, Param]:
    return {
        "k": Param(int, k, 1, k_max, help="experts asked in parallel (distinct peers first)"),
        "k_min": Param(int, 0, 0, k_max, help="answers that end the wait (then grace_s); 0: k-1 when k >= 3, else k"),
        "grace_s": Param(float, 1.0, 0.0, 60.0, help="seconds to wait for the rest once k_min answered"),
    }


def k_min_of(params: Mapping[str, Any], k: int) -> int:
    if params.get("k_min"):
        return min(int(params["k_min"]), k)
    return k - 1 if k >= 3 else k
