"""Price estimates from the vendor's documented per-second rates (``shared/seeds``).

The vendor reports what it actually charged as ``amount`` when a job is created; the estimate is what we
can know *before* spending, and is what budgets (``max_cost_usd``) are checked against.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kling_prefect.models import KlingRequest

D = Decimal

# USD per second of video, by model id, then (mode, audio).
# kling-o1/image-to-video: the page prices pro at "$0.1 per request", std at $0.075 per *second*. We read
# "per request" as a slip for "per second" (the sibling text-to-video page says $0.1 per second for pro):
# that reading is also the higher estimate (0.50 vs 0.10 for 5 s), so a budget errs on the safe side.
RATES_PER_SECOND: dict[str, dict[tuple[str, bool], Decimal]] = {
    "kwaivgi/kling-o1/text-to-video": {("std", False): D("0.075"), ("pro", False): D("0.1")},
    "kwaivgi/kling-o1/image-to-video": {("std", False): D("0.075"), ("pro", False): D("0.1")},
    "kwaivgi/kling-o3/text-to-video": {
        ("std", False): D("0.071"),
        ("std", True): D("0.095"),
        ("pro", False): D("0.095"),
        ("pro", True): D("0.119"),
    },
    "kwaivgi/kling-3.0/text-to-video": {
        ("std", False): D("0.143"),
        ("std", True): D("0.214"),
        ("pro", False): D("0.190"),
        ("pro", True): D("0.286"),
    },
    "kwaivgi/kling-2.6/text-to-video": {("pro", False): D("0.06"), ("pro", True): D("0.12")},
}


def rate_per_second(request: KlingRequest) -> Decimal:
    """The documented USD rate per second of video for this request's model, mode and audio."""
    mode = str(getattr(request, "mode", "pro"))
    return RATES_PER_SECOND[request.model_id][(mode, request.has_audio)]


def estimate_cost(request: KlingRequest) -> Decimal:
    """Estimated USD cost of one request: rate(model, mode, audio) x seconds of video.

    Examples:
        ```python
        from kling_prefect import KlingO3TextToVideo, estimate_cost

        estimate_cost(KlingO3TextToVideo(prompt="x", duration=10, sound="on"))  # Decimal('1.190')
        ```
    """
    return rate_per_second(request) * request.video_seconds


def estimate_total(requests: list[KlingRequest]) -> Decimal:
    """Sum of :func:`estimate_cost` over many requests (``Decimal('0')`` for none)."""
    return sum((estimate_cost(r) for r in requests), Decimal("0"))
