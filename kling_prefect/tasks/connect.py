"""How a task gets its credentials and a client: by block *name* (or the environment), never by key."""

from __future__ import annotations

import anyio.to_thread
from prefect import get_run_logger

from kling_prefect.callbacks import CallbackReceiver
from kling_prefect.client import PollPolicy, ShortAPIClient, shared_http_client
from kling_prefect.credentials import ShortAPICredentials

__all__ = ["load_credentials", "open_client"]


async def load_credentials(credentials_block: str | None) -> ShortAPICredentials:
    """A saved :class:`ShortAPICredentials` block by name, else ``SHORTAPI_KEY``/``SHORTAPI_BASE_URL``."""
    if credentials_block:
        block = await ShortAPICredentials.aload(credentials_block)
        assert isinstance(block, ShortAPICredentials)  # aload returns the class it is called on
        return block
    return ShortAPICredentials.from_env()


async def open_client(
    credentials_block: str | None,
    poll: PollPolicy | None = None,
    *,
    credentials: ShortAPICredentials | None = None,
) -> ShortAPIClient:
    """A client for a task, on the process's shared connection pools for this event loop (one for API calls,
    one for downloads). Closing it (``async with``) leaves the pools open for the other tasks: see
    :func:`~kling_prefect.client.shared_http_client`. ``credentials``: already loaded (``credentials_block``
    is then not read again).
    """
    if credentials is None:
        credentials = await load_credentials(credentials_block)
    return ShortAPIClient(
        **credentials.client_options(),
        poll=poll,
        http_client=shared_http_client("api"),
        download_client=shared_http_client("download"),
        callbacks=await _callback_receiver(credentials),
    )


#: The receivers tasks in this process got, by (callback_url, callback_listen, callback_mode): each one looked up (and
#: said in the run's log) once, not with a thread hop per task run.
_task_receivers: dict[tuple[str, str, str], CallbackReceiver | None] = {}


async def _callback_receiver(credentials: ShortAPICredentials) -> CallbackReceiver | None:
    """The process's receiver for the credentials' ``callback_url``, said once per process in the run's log."""
    if not credentials.callback_url:
        return None
    key = (credentials.callback_url, credentials.callback_listen, credentials.callback_mode)
    if key in _task_receivers:
        return _task_receivers[key]
    # Started once per process (binding and a self-test): off the event loop.
    receiver = await anyio.to_thread.run_sync(credentials.callback_receiver)
    if key not in _task_receivers:  # another task may have got here first: log once
        _task_receivers[key] = receiver
        logger = get_run_logger()
        if receiver is None:
            logger.warning("callbacks are off in this process (the listener or relay did not answer); polling only")
        elif credentials.callback_mode == "listen":
            logger.info("listening for the vendor's callbacks at %s", receiver.shown_url)
        else:  # a relay or a webhook: heard on the event stream (a webhook's URL shown only by its start)
            logger.info("hearing the vendor's callbacks to %s on Prefect's event stream", receiver.shown_url)
    return receiver
