"""Faults injected into the emulator at runtime: what each kind does, its parameters, and the fault book.

| kind | endpoints | params (default) | effect |
|---|---|---|---|
| ``rate_limit`` | any | ``retry_after`` (1) | HTTP 429 + ``Retry-After``, ``{"code": 429, "message": ...}`` |
| ``server_error`` | any | ``status`` (502) | that 5xx status with an nginx-style HTML page |
| ``reset`` | any | - | TCP RST before anything is done (no job created) |
| ``drop_after_create`` | create | - | the job is created (and billed), then TCP RST instead of the answer |
| ``slow`` | any | ``delay`` (30.0 s) | sleep, then answer normally |
| ``malformed_json`` | any | - | HTTP 200 ``application/json`` with a truncated document (no side effects) |
| ``error_code`` | any | ``code`` (500), ``message`` ("internal error") | HTTP 200 with that error envelope |
| ``unknown_status`` | query | ``status`` (7) | the job's status is reported as ``status`` |
| ``truncate`` | download | ``fraction`` (0.5) | full headers, that fraction of the body, then the connection closes |
| ``job_failure`` | create | ``message`` (see :data:`FAULT_KINDS`) | the next created jobs end with status 3 |
| ``lost_callback`` | callback | - | a job's callback POST is not sent (the vendor lost it) |

Request faults apply to the next ``times`` matching requests (``None``: no limit), each with
``probability`` when given. ``job_failure`` counts created jobs instead of requests, ``lost_callback``
callbacks due.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS: tuple[str, ...] = ("create", "query", "download")
_ALL = frozenset(ENDPOINTS)


@dataclass(frozen=True)
class FaultKind:
    """What a fault kind may target and the parameters it takes, with their defaults."""

    endpoints: frozenset[str]
    defaults: Mapping[str, Any]


FAULT_KINDS: dict[str, FaultKind] = {
    "rate_limit": FaultKind(_ALL, {"retry_after": 1}),
    "server_error": FaultKind(_ALL, {"status": 502}),
    "reset": FaultKind(_ALL, {}),
    "drop_after_create": FaultKind(frozenset({"create"}), {}),
    "slow": FaultKind(_ALL, {"delay": 30.0}),
    "malformed_json": FaultKind(_ALL, {}),
    "error_code": FaultKind(_ALL, {"code": 500, "message": "internal error"}),
    "unknown_status": FaultKind(frozenset({"query"}), {"status": 7}),
    "truncate": FaultKind(frozenset({"download"}), {"fraction": 0.5}),
    "job_failure": FaultKind(frozenset({"create"}), {"message": "video generation failed: content moderation"}),
    "lost_callback": FaultKind(frozenset({"callback"}), {}),
}


@dataclass
class Fault:
    """One injected fault and how many more times it fires (``None``: unlimited)."""

    kind: str
    endpoints: frozenset[str]
    remaining: int | None
    probability: float | None
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (for the stats endpoint)."""
        return {
            "fault": self.kind,
            "endpoints": sorted(self.endpoints),
            "remaining": self.remaining,
            "probability": self.probability,
            "params": dict(self.params),
        }


def make_fault(
    kind: str,
    *,
    endpoint: str = "any",
    times: int | None = 1,
    probability: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> Fault:
    """Validate an injection request and build the :class:`Fault` (``ValueError`` when invalid)."""
    spec = FAULT_KINDS.get(kind)
    if spec is None:
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    if endpoint == "any":
        endpoints = spec.endpoints
    elif endpoint in spec.endpoints:
        endpoints = frozenset({endpoint})
    else:
        allowed = ", ".join(sorted(spec.endpoints | {"any"}))
        raise ValueError(f"fault {kind!r} cannot target endpoint {endpoint!r}; use one of {allowed}")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise ValueError(f"times must be a positive integer or None, got {times!r}")
    if probability is not None and not (isinstance(probability, (int, float)) and 0 <= probability <= 1):
        raise ValueError(f"probability must be between 0 and 1, got {probability!r}")
    given = dict(params or {})
    unknown = set(given) - set(spec.defaults)
    if unknown:
        raise ValueError(f"fault {kind!r} takes no parameter(s) {', '.join(sorted(unknown))}")
    merged = {**spec.defaults, **given}
    _check_params(kind, merged)
    return Fault(kind, endpoints, times, None if probability is None else float(probability), merged)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_PARAM_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "rate_limit": lambda p: _is_number(p["retry_after"]) or isinstance(p["retry_after"], str),
    "server_error": lambda p: isinstance(p["status"], int) and 500 <= p["status"] <= 599,
    "slow": lambda p: _is_number(p["delay"]) and p["delay"] >= 0,
    "error_code": lambda p: isinstance(p["code"], int) and p["code"] != 0 and isinstance(p["message"], str),
    "unknown_status": lambda p: p["status"] is not None,
    "truncate": lambda p: _is_number(p["fraction"]) and 0 <= p["fraction"] < 1,
    "job_failure": lambda p: isinstance(p["message"], str) and bool(p["message"]),
}


def _check_params(kind: str, params: dict[str, Any]) -> None:
    check = _PARAM_CHECKS.get(kind)
    if check is not None and not check(params):
        raise ValueError(f"invalid parameters for fault {kind!r}: {params!r}")


class FaultBook:
    """The pending faults, in injection order; the first matching one fires."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a validated fault."""
        self._faults.append(fault)

    def clear(self) -> None:
        """Forget every pending fault."""
        self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        """Descriptions of the faults still pending."""
        return [fault.describe() for fault in self._faults]

    def take(self, endpoint: str) -> Fault | None:
        """The request fault that fires for a request to ``endpoint``, if any (consuming one use)."""
        return self._take(lambda fault: fault.kind != "job_failure" and endpoint in fault.endpoints)

    def take_job_failure(self) -> str | None:
        """The failure message for a job being created, if a ``job_failure`` fault fires."""
        fault = self._take(lambda fault: fault.kind == "job_failure")
        return None if fault is None else str(fault.params["message"])

    def _take(self, matches: Callable[[Fault], bool]) -> Fault | None:
        for fault in self._faults:
            if not matches(fault):
                continue
            if fault.probability is not None and self._rng.random() >= fault.probability:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            return fault
        return None
