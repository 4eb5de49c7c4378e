"""Callbacks through a Prefect Cloud webhook: no receiver to run, every worker hears them on the event stream.

A Prefect Cloud webhook is a public URL (``https://api.prefect.cloud/hooks/<slug>``) whose Jinja template turns
each request into an event. The vendor POSTs every job's callback to that one URL, :data:`WEBHOOK_TEMPLATE`
turns the body into ``kling.callback.received`` with the job as the resource (``kling.job.<job id>``), and
each worker with ``callback_mode=webhook`` (:class:`WebhookCallbacks`) hears it on Prefect's event stream and
wakes that job's wait, which queries the job once, as any callback does.

How it differs from the relay (:mod:`kling_prefect.callback_relay`):

- The URL is fixed and a webhook's template sees only the request's method, headers and body (not its path
  or query), so no per-job token can ride on it: the job is known by the id the body names. The vendor does
  not document its callback's body; the template looks for ``job_id``, ``task_id`` or ``id`` at the top level
  or under ``data``. A body that names none makes an event that wakes nothing, and the waits' polls find the
  job (after three such misses the workers stop relying on callbacks, as for any lost callback).
- Whoever knows the webhook's URL can make a worker query a job it waits for early (never believe a result:
  the body is not one). Treat the URL as a secret (logs show only its first characters) and rotate it with
  ``prefect cloud webhook rotate`` if it leaks.
- Nothing beats: the stream counts as live while its subscription is open (Prefect's client notices a dead
  socket), and a callback heard before its wait began is remembered for it.

Examples:
    Create the webhook once (Prefect Cloud; the template from this module)::

        prefect cloud webhook create kling-callbacks \\
            --description "Kling job callbacks" --template "$(kling-prefect callbacks webhook-template)"

    Then in the work pool's environment::

        SHORTAPI_CALLBACK_URL=https://api.prefect.cloud/hooks/<slug>
        SHORTAPI_CALLBACK_MODE=webhook
"""

from __future__ import annotations

from typing import Any

from kling_prefect.callback_relay import CALLBACK_RECEIVED, JOB_ID_PATTERN
from kling_prefect.callback_stream import StreamCallbacks

__all__ = ["WEBHOOK_TEMPLATE", "WebhookCallbacks"]

#: The Prefect Cloud webhook template: the vendor's callback body -> ``kling.callback.received`` for its job.
#: Every value is written with ``tojson``: a body cannot inject fields; a job id longer than 128 characters is
#: dropped (the workers also check its shape).
WEBHOOK_TEMPLATE = """\
{%- set fields = body if body is mapping else {} -%}
{%- set data = fields.data if fields.data is mapping else {} -%}
{%- set job = fields.job_id or fields.task_id or fields.id or data.job_id or data.task_id or data.id -%}
{%- set job = job | string if job is integer else job -%}
{%- set job = job if job is string and job | length <= 128 else "" -%}
{%- set status = fields.status if fields.status is defined else data.status -%}
{
  "event": "kling.callback.received",
  "resource": {
    "prefect.resource.id": {{ ("kling.job." ~ (job or "unknown")) | tojson }},
    "kling.job.id": {{ job | tojson }}
  },
  "payload": {
    "via": "prefect-cloud-webhook",
    "status": {{ (status if status is number or status is string else none) | tojson }}
  }
}
"""


class WebhookCallbacks(StreamCallbacks):
    """Callbacks through a Prefect Cloud webhook, heard on Prefect's event stream (see the module documentation).

    Args:
        webhook_url: the webhook's URL, given to the vendor as every job's ``callback_url``.
        subscriber: as for :class:`~kling_prefect.callback_stream.StreamCallbacks` (tests).

    Examples:
        ```python
        from kling_prefect import ShortAPIClient
        from kling_prefect.callback_webhook import WebhookCallbacks

        callbacks = WebhookCallbacks("https://api.prefect.cloud/hooks/AERylZ_uewzpDx-8fcweHQ").start()
        client = ShortAPIClient(callbacks=callbacks)
        ```
    """

    def __init__(self, webhook_url: str, *, subscriber: Any = None) -> None:
        # No probe: a webhook answers any request with 204 (and a GET would make an event of its own).
        super().__init__(webhook_url, probe=False, subscriber=subscriber)
        self._quiet_limit = None  # no heartbeats: quiet is the normal state between callbacks

    @property
    def shown_url(self) -> str:
        head, _, slug = self.public_url.rstrip("/").rpartition("/")
        return f"{head}/{slug[:4]}..."

    def new_url(self) -> str:
        """The webhook's URL: one for every job (the job is known by the id its callback names)."""
        return self.public_url

    def token_of(self, url: str | None) -> str | None:
        return None  # no tokens: see key_of

    def key_of(self, url: str | None, job_id: str | None = None) -> str | None:
        """The job id, for a job whose callback URL is this webhook's."""
        if url is None or url.rstrip("/") != self.public_url.rstrip("/") or not job_id:
            return None
        return job_id if JOB_ID_PATTERN.match(job_id) else None

    def _event_names(self) -> list[str]:
        return [CALLBACK_RECEIVED]

    def _subscribed(self) -> None:
        self._set_live(True, None)

    def _key_of_event(self, event: Any) -> str | None:
        if event.resource.get("kling.callback.token") is not None:
            return None  # a relay's event: known by its token, not by the job its body claims
        job_id = event.resource.get("kling.job.id")
        return job_id if isinstance(job_id, str) and JOB_ID_PATTERN.match(job_id) else None
