"""The one place a ShortAPI response becomes data, a :class:`~kling_prefect.client.results.Job` or a typed error.

Also the one check of a vendor-reported ``amount`` (:func:`parse_amount`), and :func:`redact`, which every
text that may echo a request back passes through before it is kept.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from pydantic import SecretStr

from kling_prefect.client.results import Job, JobState
from kling_prefect.exceptions import (
    AccountBusy,
    AuthenticationFailed,
    JobNotFound,
    RateLimited,
    RequestRejected,
    ShortAPIError,
    VendorUnavailable,
)

__all__ = [
    "ACCOUNT_BUSY_CODE",
    "MAX_PLAUSIBLE_AMOUNT",
    "RAW_LIMIT",
    "interpret_response",
    "job_from_data",
    "parse_amount",
    "parse_retry_after",
    "redact",
    "refused_create",
]

RAW_LIMIT = 4000  # characters of a non-JSON body kept on an error
MAX_PLAUSIBLE_AMOUNT = Decimal(100_000)  # USD for one job; anything above is a malformed answer, not a charge
_STATES: dict[int, JobState] = {0: "queued", 1: "processing", 2: "succeeded", 3: "failed"}
#: Kling's code for a create over the account's concurrency ("parallel task over resource pack limit", HTTP 429).
ACCOUNT_BUSY_CODE = 1303
#: Kling's code for requests over the account's request rate (HTTP 429): a rate limit, not the concurrency one.
REQUEST_RATE_CODE = 1302
_CONCURRENCY_WORDS = ("parallel", "concurren", "resource pack", "simultaneous")
_REQUEST_RATE_WORDS = ("too many requests", "rate limit", "request rate", "qps", "too fast", "too frequent")


def redact(text: str, secret: SecretStr | str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced, for anything that may echo a request back."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if value and value in text:
        return text.replace(value, "**********")
    return text


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _vendor_message(payload: Mapping[str, Any]) -> str:
    for key in ("message", "info", "msg", "error", "detail"):
        value = payload.get(key)
        if value:
            return str(value)
    return "no message"


def _classify_code(code: Any, http_status: int, message: str, *, create: bool = False) -> type[ShortAPIError]:
    """The error class for a non-zero envelope ``code`` (vendor codes are undocumented: use every hint).

    A create refused for the account's concurrency is :class:`AccountBusy`: code 1303, or a message about
    concurrency or parallel tasks, or (for a create, which is what holds an account slot) HTTP 429 or "too many"
    without a sign of a request-rate limit (code 1302, "too many requests", "rate limit"), which stays
    :class:`RateLimited`.
    """
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = 0
    hints = {http_status, number}
    lowered = message.lower()
    if hints & {401, 403}:
        return AuthenticationFailed
    if number == ACCOUNT_BUSY_CODE or any(w in lowered for w in _CONCURRENCY_WORDS):
        return AccountBusy
    if any(w in lowered for w in ("api key", "apikey", "unauthori", "token", "auth")):
        return AuthenticationFailed
    limited = 429 in hints or number == REQUEST_RATE_CODE or "too many" in lowered or "rate limit" in lowered
    if limited:
        rate = number == REQUEST_RATE_CODE or any(w in lowered for w in _REQUEST_RATE_WORDS)
        return AccountBusy if create and not rate else RateLimited
    if 404 in hints or "not found" in lowered:
        return JobNotFound
    if http_status >= 500 or 500 <= number <= 599:
        return VendorUnavailable
    return RequestRejected


def interpret_response(
    response: httpx.Response,
    *,
    operation: str,
    job_id: str | None = None,
    secret: SecretStr | None = None,
    create: bool = False,
) -> dict[str, Any]:
    """The one place a ShortAPI response becomes its ``data`` object or a typed error.

    A non-zero ``code`` is an error whatever the HTTP status; an HTML or malformed body is
    :class:`VendorUnavailable` (5xx/2xx) or :class:`RequestRejected` (4xx); 429 is :class:`RateLimited`
    with its ``Retry-After``; 401/403 is :class:`AuthenticationFailed`. An error envelope refusing a create
    (``create=True``) for the account's concurrency is :class:`AccountBusy` (see :func:`_classify_code`).
    """
    status = response.status_code
    text = redact(response.text, secret)
    try:
        payload: Any = json.loads(text) if text else None
    except ValueError:
        payload = None
    raw: Any = payload if isinstance(payload, dict) else text[:RAW_LIMIT]
    common: dict[str, Any] = {"job_id": job_id, "status_code": status, "raw": raw}
    retry_after = parse_retry_after(response.headers.get("retry-after"))

    if not isinstance(payload, dict):
        what = "an HTML page" if "<html" in text[:500].lower() else "a body that is not a JSON object"
        message = f"{operation}: HTTP {status} with {what}"
        if status == 429:
            raise RateLimited(message, retry_after=retry_after, **common)
        if status in (401, 403):
            raise AuthenticationFailed(message, **common)
        if 400 <= status < 500:
            raise RequestRejected(message, **common)
        raise VendorUnavailable(message, **common)

    code = payload.get("code", 0)
    if code not in (0, "0") or status >= 400:
        message = _vendor_message(payload)
        error_class = _classify_code(code if code not in (0, "0") else status, status, message, create=create)
        text_out = f"{operation} refused: {message} (HTTP {status}, code {code})"
        if issubclass(error_class, RateLimited):
            raise error_class(text_out, retry_after=retry_after, **common)
        raise error_class(text_out, **common)

    data = payload.get("data")
    if not isinstance(data, dict):
        raise VendorUnavailable(f"{operation}: response has no data object (HTTP {status})", **common)
    return data


def refused_create(error: BaseException) -> bool:
    """Whether a failed ``job/create`` is one the vendor refused for a limit, in an error envelope: it made no
    job, so it may be sent again after a pause (:class:`AccountBusy`, or :class:`RateLimited` whose raw answer
    is the vendor's JSON). A 429 page that is not the vendor's envelope, a timeout, a reset or a 5xx page is not:
    what such a create did is unknown, or it is not a limit."""
    return isinstance(error, RateLimited) and isinstance(error.raw, dict)


def job_from_data(job_id: str, data: Mapping[str, Any]) -> Job:
    """A :class:`Job` from a query's ``data``: states 0/1 pending, 2 succeeded, 3 failed, others unknown."""
    raw_status = data.get("status")
    number: int | None
    try:
        number = int(raw_status) if raw_status is not None else None  # some gateways send "2"
    except (TypeError, ValueError):
        number = None
    state: JobState = _STATES.get(number, "unknown") if number is not None else "unknown"
    urls: list[str] = []
    result = data.get("result")
    if isinstance(result, Mapping):
        # The vendor pages show result.videos[].url; the image-to-video page shows result.images[].url.
        for key in ("videos", "video", "images"):
            items = result.get(key)
            items = [items] if isinstance(items, Mapping) else items
            if isinstance(items, list):
                urls.extend(str(i["url"]) for i in items if isinstance(i, Mapping) and i.get("url"))
    error = data.get("error") or data.get("message") or data.get("fail_reason")
    return Job(
        job_id=job_id,
        status=raw_status,
        state=state,
        video_urls=tuple(urls),
        error=str(error) if error else None,
        raw=dict(data),
    )


def parse_amount(value: Any) -> Decimal | None:
    """A vendor-reported ``amount`` as money, or ``None`` when absent or not a finite, non-negative, plausible
    number. Responses are untrusted: ``"NaN"``, ``"-5"`` or ``"1e999999999"`` (which would take a gigabyte to
    print with two decimals) must not reach totals or artifacts."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount > MAX_PLAUSIBLE_AMOUNT:
        return None
    return amount
