"""Price estimates from the vendor's documented per-second rates, and the one way money is written.

The rates live with each model (``KlingO3TextToVideo.facts.rates``, from ``shared/seeds``). The vendor reports
what it actually charged as ``amount`` when a job is created; the estimate is what we can know *before*
spending, and is what budgets (``max_cost_usd``) are checked against.

Examples:
    ```python
    from kling_prefect import KlingO3TextToVideo, estimate_cost
    from kling_prefect.pricing import format_usd

    cost = estimate_cost(KlingO3TextToVideo(prompt="x", duration=10, sound="on"))  # Decimal('1.190')
    format_usd(cost)  # '$1.19'
    ```
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kling_prefect.models import KlingRequest

__all__ = ["estimate_cost", "estimate_total", "format_usd", "rate_per_second"]


def rate_per_second(request: KlingRequest) -> Decimal:
    """The documented USD rate per second of video for this request's model, mode and audio."""
    return request.facts.rate(request.mode_name, request.has_audio)


def estimate_cost(request: KlingRequest) -> Decimal:
    """Estimated USD cost of one request: rate(model, mode, audio) x seconds of video.

    Examples:
        ```python
        from kling_prefect import KlingO3TextToVideo, estimate_cost

        estimate_cost(KlingO3TextToVideo(prompt="x", duration=10, sound="on"))  # Decimal('1.190')
        ```
    """
    return rate_per_second(request) * request.video_seconds


def estimate_total(requests: Iterable[KlingRequest]) -> Decimal:
    """Sum of :func:`estimate_cost` over many requests (``Decimal('0')`` for none)."""
    return sum((estimate_cost(r) for r in requests), Decimal("0"))


def format_usd(value: Decimal | float | int | None, *, unknown: str = "n/a") -> str:
    """Money as every output of this package writes it: ``$`` and cents, a third decimal only when it is
    needed (rates are quoted to a tenth of a cent): ``$0.50``, ``$1.00``, ``$0.213``, ``$12.35``.

    ``None`` (an amount the vendor did not report) is written as ``unknown``.
    """
    if value is None:
        return unknown
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite():
        return unknown
    text = f"{amount:,.3f}"
    if text.endswith("0"):
        text = text[:-1]
    return ("-$" + text[1:]) if text.startswith("-") else "$" + text
