"""The ``ShortAPICredentials`` block: API key (a ``SecretStr``), base URL, timeouts and retry settings.

Examples:
    Save once, load in any flow:
    ```python
    from kling_prefect import ShortAPICredentials

    ShortAPICredentials(api_key="sk-...").save("shortapi", overwrite=True)

    credentials = ShortAPICredentials.load("shortapi")
    async with credentials.get_client() as client:
        job = await client.create_job(request)
    ```

    Without a saved block, ``ShortAPICredentials.from_env()`` reads ``SHORTAPI_KEY`` and ``SHORTAPI_BASE_URL``,
    and optionally the tuning variables below (each one a field of the block):

    | variable | field | default |
    |---|---|---|
    | ``SHORTAPI_CONNECT_TIMEOUT`` | ``connect_timeout`` | 10 s |
    | ``SHORTAPI_READ_TIMEOUT`` | ``read_timeout`` | 30 s |
    | ``SHORTAPI_RETRY_ATTEMPTS`` | ``retry_attempts`` | 6 |
    | ``SHORTAPI_RETRY_BASE_DELAY`` | ``retry_base_delay`` | 0.5 s |
    | ``SHORTAPI_RETRY_MAX_DELAY`` | ``retry_max_delay`` | 30 s |
    | ``SHORTAPI_MAX_RETRY_AFTER`` | ``max_retry_after`` | 300 s |
    | ``SHORTAPI_CALLBACK_URL`` | ``callback_url`` | none (poll only) |
    | ``SHORTAPI_CALLBACK_LISTEN`` | ``callback_listen`` | ``127.0.0.1:0`` |
    | ``SHORTAPI_CALLBACK_MODE`` | ``callback_mode`` | ``listen`` (or ``relay``, ``webhook``) |
    | ``SHORTAPI_MAX_QUERIES_PER_SECOND`` | ``max_queries_per_second`` | 10 (0: no cap) |
    | ``SHORTAPI_LEASE_URL`` | ``lease_url`` | none (file leases on this machine) |
    | ``SHORTAPI_LEASE_SECONDS`` | ``lease_seconds`` | 10 s |

    Retries apply to queries and downloads only: a ``job/create`` is never retried by the client (see
    :class:`~kling_prefect.exceptions.JobMayHaveBeenCreated`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from kling_prefect.callbacks import CallbackReceiver, callback_receiver, check_mode, check_public_url, parse_listen
from kling_prefect.client import (
    DEFAULT_BASE_URL,
    ENV_BASE_URL,
    ENV_KEY,
    RetryPolicy,
    ShortAPIClient,
    SyncShortAPIClient,
)
from kling_prefect.waiting import DEFAULT_QUERIES_PER_SECOND

__all__ = ["ENV_SETTINGS", "ShortAPICredentials", "check_base_url", "check_lease_url"]

ENV_CALLBACK_URL = "SHORTAPI_CALLBACK_URL"
ENV_CALLBACK_LISTEN = "SHORTAPI_CALLBACK_LISTEN"
ENV_CALLBACK_MODE = "SHORTAPI_CALLBACK_MODE"
ENV_LEASE_URL = "SHORTAPI_LEASE_URL"

# Optional tuning variables read by ``from_env``: variable -> (field, type).
ENV_SETTINGS: dict[str, tuple[str, type]] = {
    "SHORTAPI_CONNECT_TIMEOUT": ("connect_timeout", float),
    "SHORTAPI_READ_TIMEOUT": ("read_timeout", float),
    "SHORTAPI_RETRY_ATTEMPTS": ("retry_attempts", int),
    "SHORTAPI_RETRY_BASE_DELAY": ("retry_base_delay", float),
    "SHORTAPI_RETRY_MAX_DELAY": ("retry_max_delay", float),
    "SHORTAPI_MAX_RETRY_AFTER": ("max_retry_after", float),
    "SHORTAPI_MAX_QUERIES_PER_SECOND": ("max_queries_per_second", float),
    "SHORTAPI_LEASE_SECONDS": ("lease_seconds", float),
}


def check_base_url(value: str) -> str:
    """``value`` stripped, when it is an absolute http(s) URL with a host; ``ValueError`` otherwise."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value itself is not echoed: a URL can carry credentials (``https://user:password@host``).
        if parts.scheme in ("http", "https"):
            got = "a URL without a host"
        else:
            got = f"a {parts.scheme}: URL" if parts.scheme else "text without a scheme"
        raise ValueError(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {got}")
    return text


def check_lease_url(value: str) -> str:
    """``value`` stripped, when it is a ``redis://``/``rediss://``/``unix://`` URL; ``ValueError`` otherwise."""
    text = value.strip()
    scheme = urlsplit(text).scheme
    if scheme not in ("redis", "rediss", "unix"):
        got = f"a {scheme}: URL" if scheme else "text without a scheme"
        raise ValueError(f"lease_url must be a Redis URL such as redis://127.0.0.1:6379/0, got {got}")
    return text


class ShortAPICredentials(CredentialsBlock):
    """Credentials and connection settings for ShortAPI's job API (Kling video generation).

    Attributes:
        api_key: the ShortAPI key, sent as ``Authorization: Bearer``; stored encrypted, shown as ``**********``.
        base_url: the API root; change it for a proxy or the bundled emulator.
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds to wait for a response (or the next chunk of a download) once a request is sent.
        retry_attempts: attempts of a query or download on 429, 5xx, malformed bodies, resets and timeouts.
        retry_base_delay / retry_max_delay: capped exponential backoff with full jitter between attempts.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.
        callback_url: where the vendor calls back: this process's callback listener (``{port}``: the port
            bound), a relay or a Prefect Cloud webhook (``callback_mode``); unset, waits only poll. See
            :mod:`kling_prefect.callbacks`.
        callback_listen: ``host:port`` the listener binds (``127.0.0.1:0``: loopback, any free port).
        callback_mode: ``listen`` (this process listens for the callbacks itself), ``relay`` (``callback_url``
            is a relay's, ``kling-prefect callbacks serve``: this process hears the callbacks on Prefect's event
            stream and listens on no port; see :mod:`kling_prefect.callback_stream`) or ``webhook``
            (``callback_url`` is a Prefect Cloud webhook's; see :mod:`kling_prefect.callback_webhook`).
        max_queries_per_second: the cap on job queries per second shared by every wait in a process (0: none).
        lease_url: a Redis URL (``redis://:password@host:6379/0``) holding the step leases, for workers on several
            machines sharing one result storage; unset, leases are files on this machine. A ``SecretStr`` like the
            key (it may carry a password): stored encrypted, shown as ``**********``, read with
            :meth:`lease_url_value`. See :mod:`kling_prefect.leases`.
        lease_seconds: how long a Redis lease outlives a holder that died (renewed every third of it while held).

    Examples:
        Load a saved block and make a client:
        ```python
        from kling_prefect import ShortAPICredentials

        credentials = ShortAPICredentials.load("BLOCK_NAME")
        client = credentials.get_client()
        ```
    """

    _block_type_name = "ShortAPI Credentials"
    _block_type_slug = "shortapi-credentials"
    # Where the key and the API root come from: the vendor's API documentation.
    _documentation_url = "https://shortapi.ai/"  # type: ignore[assignment]

    api_key: SecretStr = Field(description="ShortAPI API key.")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root URL (http or https).")
    connect_timeout: float = Field(default=10.0, gt=0, allow_inf_nan=False, description="Connect timeout (s).")
    read_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False, description="Read timeout (s).")
    retry_attempts: int = Field(
        default=6, ge=1, le=50, description="Attempts of a query or download (creates are never retried)."
    )
    retry_base_delay: float = Field(
        default=0.5, ge=0, allow_inf_nan=False, description="First backoff cap between attempts (s)."
    )
    retry_max_delay: float = Field(default=30.0, ge=0, allow_inf_nan=False, description="Largest backoff (s).")
    max_retry_after: float = Field(
        default=300.0, ge=0, allow_inf_nan=False, description="Longest server Retry-After honoured (s)."
    )
    callback_url: str | None = Field(
        default=None,
        description="Public URL the vendor calls back: this process's listener ({port}: the bound port), a relay's "
        "or a Prefect Cloud webhook's (see callback_mode); unset: poll only.",
    )
    callback_listen: str = Field(default="127.0.0.1:0", description="host:port the callback listener binds.")
    callback_mode: str = Field(
        default="listen",
        description="listen: this process listens for callbacks; relay: a relay serves callback_url and this "
        "process hears the callbacks on Prefect's event stream; webhook: callback_url is a Prefect Cloud "
        "webhook's, heard on the event stream too.",
    )
    max_queries_per_second: float = Field(
        default=DEFAULT_QUERIES_PER_SECOND,
        ge=0,
        allow_inf_nan=False,
        description="Cap on job queries per second shared by every wait in a process (0: no cap).",
    )
    lease_url: SecretStr | None = Field(
        default=None,
        description="Redis URL of the step leases for workers on several machines (unset: file leases); secret: "
        "it may carry a password.",
    )
    lease_seconds: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a Redis step lease outlives a holder that died.",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("callback_url")
    @classmethod
    def _check_callback_url(cls, value: str | None) -> str | None:
        return check_public_url(value) if value and value.strip() else None

    @field_validator("lease_url")
    @classmethod
    def _check_lease_url(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        return SecretStr(check_lease_url(text)) if text.strip() else None  # the error never echoes the URL

    @field_validator("callback_listen")
    @classmethod
    def _check_callback_listen(cls, value: str) -> str:
        parse_listen(value)
        return value.strip()

    @field_validator("callback_mode")
    @classmethod
    def _check_callback_mode(cls, value: str) -> str:
        return check_mode(value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ShortAPICredentials:
        """Credentials from ``SHORTAPI_KEY``, ``SHORTAPI_BASE_URL`` (default ``https://api.shortapi.ai``) and the
        optional tuning variables (see the module documentation).

        Raises ``ValueError`` naming the variable (never echoing the key) when ``SHORTAPI_KEY`` is unset or
        empty, or a variable is not a valid value.
        """
        env = os.environ if environ is None else environ
        key = env.get(ENV_KEY, "").strip()
        if not key:
            raise ValueError(f"no ShortAPI key: set {ENV_KEY} or save a ShortAPICredentials block")
        settings: dict[str, Any] = {}
        base_url = env.get(ENV_BASE_URL, "").strip()
        if base_url:
            try:
                settings["base_url"] = check_base_url(base_url)
            except ValueError as exc:
                raise ValueError(f"{ENV_BASE_URL}: {exc}") from None
        for variable, name, check in (
            (ENV_CALLBACK_URL, "callback_url", check_public_url),
            (ENV_CALLBACK_LISTEN, "callback_listen", parse_listen),
            (ENV_CALLBACK_MODE, "callback_mode", check_mode),
            (ENV_LEASE_URL, "lease_url", check_lease_url),
        ):
            text = env.get(variable, "").strip()
            if text:
                try:
                    check(text)
                except ValueError as exc:  # "callback_url: why" -> "SHORTAPI_CALLBACK_URL: why"
                    raise ValueError(f"{variable}: {str(exc).split(': ', 1)[-1]}") from None
                settings[name] = text  # the field's validator normalizes it (callback_mode: lower case)
        for variable, (name, kind) in ENV_SETTINGS.items():
            text = env.get(variable, "").strip()
            if not text:
                continue
            settings[name] = _env_number(variable, text, kind)
            problem = _field_problem(name, settings[name])
            if problem:
                raise ValueError(f"{variable}: {problem}, got {text[:40]!r}")
        return cls(api_key=SecretStr(key), **settings)

    def lease_url_value(self) -> str | None:
        """The lease URL itself, for the lease store only (never log it: it may carry a password)."""
        return self.lease_url.get_secret_value() if self.lease_url is not None else None

    def retry_policy(self) -> RetryPolicy:
        """The :class:`~kling_prefect.client.RetryPolicy` these settings describe."""
        return RetryPolicy(
            max_attempts=self.retry_attempts,
            base_delay=self.retry_base_delay,
            max_delay=self.retry_max_delay,
            max_retry_after=self.max_retry_after,
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~kling_prefect.client.ShortAPIClient` (the key stays a ``SecretStr``)."""
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retry": self.retry_policy(),
            "max_queries_per_second": self.max_queries_per_second,
        }

    def callback_receiver(self) -> CallbackReceiver | None:
        """The process's started receiver for ``callback_url`` (``None``: unset, or it cannot work here).

        Binding and a self-test happen on the first call in a process (blocking, a few milliseconds).
        """
        if not self.callback_url:
            return None
        return callback_receiver(self.callback_url, self.callback_listen, self.callback_mode)

    def get_client(self) -> ShortAPIClient:
        """An async :class:`~kling_prefect.client.ShortAPIClient` configured from this block."""
        return ShortAPIClient(**self.client_options(), callbacks=self.callback_receiver())

    def get_sync_client(self) -> SyncShortAPIClient:
        """The blocking twin, :class:`~kling_prefect.client.SyncShortAPIClient`."""
        return SyncShortAPIClient(**self.client_options(), callbacks=self.callback_receiver())


def _env_number(variable: str, text: str, kind: type[int] | type[float]) -> float | int:
    try:
        value: float | int = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number of seconds"
        raise ValueError(f"{variable}: must be {what}, got {text[:40]!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{variable}: must be a finite number of seconds, got {text[:40]!r}")
    return value


def _field_problem(name: str, value: float | int) -> str | None:
    """Why ``value`` breaks the bounds of field ``name`` (``None`` when it fits)."""
    for rule in ShortAPICredentials.model_fields[name].metadata:
        for attr, words in (("gt", "greater than"), ("ge", "at least"), ("le", "at most")):
            bound = getattr(rule, attr, None)
            if bound is None:
                continue
            fits = value > bound if attr == "gt" else value >= bound if attr == "ge" else value <= bound
            if not fits:
                return f"must be {words} {bound}"
    return None
