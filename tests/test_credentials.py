"""The ShortAPICredentials block: saved to and loaded from a real Prefect server, and the env fallback."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from pydantic import SecretStr

from kling_prefect import KlingO1TextToVideo, ShortAPICredentials
from kling_prefect.client import DEFAULT_BASE_URL, redact


def test_registered_as_a_prefect_collection() -> None:
    names = {entry.name: entry.value for entry in entry_points(group="prefect.collections")}
    assert names.get("kling_prefect") == "kling_prefect"


async def test_block_round_trip_keeps_the_key_secret(prefect_server, emulator) -> None:
    canary = "sk-block-canary-42"
    await ShortAPICredentials(api_key=canary, base_url=emulator.base_url, read_timeout=12).asave(
        "test-shortapi", overwrite=True
    )
    loaded = await ShortAPICredentials.aload("test-shortapi")
    assert isinstance(loaded.api_key, SecretStr)
    assert loaded.api_key.get_secret_value() == canary
    assert loaded.read_timeout == 12
    for text in (repr(loaded), str(loaded), str(loaded.model_dump())):
        assert canary not in text
    async with loaded.get_client() as client:
        assert client.base_url == emulator.base_url and canary not in repr(client)
        created = await client.create_job(KlingO1TextToVideo(prompt="Block-configured job", mode="std"))
    assert emulator.stats().jobs[created.job_id].model == KlingO1TextToVideo.model_id


def test_from_env() -> None:
    credentials = ShortAPICredentials.from_env({"SHORTAPI_KEY": " sk-env "})
    assert credentials.api_key.get_secret_value() == "sk-env"
    assert credentials.base_url == DEFAULT_BASE_URL
    custom = ShortAPICredentials.from_env({"SHORTAPI_KEY": "k", "SHORTAPI_BASE_URL": "http://127.0.0.1:9"})
    assert custom.base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="SHORTAPI_KEY"):
        ShortAPICredentials.from_env({})


def test_redact() -> None:
    assert redact("Bearer sk-1 echoed sk-1", SecretStr("sk-1")) == "Bearer ********** echoed **********"
    assert redact("nothing here", "sk-1") == "nothing here"
