"""The ``ShortAPICredentials`` block: API key (a ``SecretStr``), base URL and timeouts.

Examples:
    Save once, load in any flow:
    ```python
    from kling_prefect import ShortAPICredentials

    ShortAPICredentials(api_key="sk-...").save("shortapi", overwrite=True)

    credentials = ShortAPICredentials.load("shortapi")
    async with credentials.get_client() as client:
        job = await client.create_job(request)
    ```

    Without a saved block, ``ShortAPICredentials.from_env()`` reads ``SHORTAPI_KEY`` and
    ``SHORTAPI_BASE_URL``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr

if TYPE_CHECKING:
    from kling_prefect.client import ShortAPIClient, SyncShortAPIClient

DEFAULT_BASE_URL = "https://api.shortapi.ai"
ENV_KEY = "SHORTAPI_KEY"
ENV_BASE_URL = "SHORTAPI_BASE_URL"


class ShortAPICredentials(CredentialsBlock):
    """Credentials and connection settings for ShortAPI's job API.

    Attributes:
        api_key: the ShortAPI key, sent as ``Authorization: Bearer``; stored encrypted, shown as ``**********``.
        base_url: the API root; change it for a proxy or the bundled emulator.
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds to wait for a response once the request is sent.
    """

    _block_type_name = "ShortAPI Credentials"
    _block_type_slug = "shortapi-credentials"

    api_key: SecretStr = Field(description="ShortAPI API key.")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root URL.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Connect timeout in seconds.")
    read_timeout: float = Field(default=30.0, gt=0, description="Read timeout in seconds.")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ShortAPICredentials:
        """Credentials from ``SHORTAPI_KEY`` and ``SHORTAPI_BASE_URL`` (default ``https://api.shortapi.ai``).

        Raises ``ValueError`` (without echoing anything secret) when ``SHORTAPI_KEY`` is unset or empty.
        """
        env = os.environ if environ is None else environ
        key = env.get(ENV_KEY, "").strip()
        if not key:
            raise ValueError(f"no ShortAPI key: set {ENV_KEY} or save a ShortAPICredentials block")
        return cls(api_key=SecretStr(key), base_url=env.get(ENV_BASE_URL, "").strip() or DEFAULT_BASE_URL)

    def client_options(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
        }

    def get_client(self) -> ShortAPIClient:
        """An async :class:`~kling_prefect.client.ShortAPIClient` configured from this block."""
        from kling_prefect.client import ShortAPIClient

        return ShortAPIClient(**self.client_options())

    def get_sync_client(self) -> SyncShortAPIClient:
        """The blocking twin, :class:`~kling_prefect.client.SyncShortAPIClient`."""
        from kling_prefect.client import SyncShortAPIClient

        return SyncShortAPIClient(**self.client_options())


def redact(text: str, secret: SecretStr | str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced, for anything that may echo a request back."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if value and value in text:
        return text.replace(value, "**********")
    return text
