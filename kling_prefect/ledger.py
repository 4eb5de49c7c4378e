"""The money-safety ledger: what a run remembers so that no retry or re-run pays for a step twice.

There is no idempotency key at the vendor and no cancel: a second ``job/create`` for the same step is a
second charge. What makes a step safe to repeat is remembered in Prefect's result storage (where the cached
submissions live too), keyed like the step itself: run key + step + request (:func:`step_key`).

- **Create in flight** (:meth:`StepLedger.note_create_sending`): written before the POST. If it is still
  there on a later attempt, the create may have been accepted without its answer being recorded (a timeout
  after sending, a reset, the process killed mid-request), so :meth:`StepLedger.before_create` refuses to send
  the step again, naming when, until the caller says ``resubmit_uncertain=True`` after checking the vendor's
  dashboard. A refusal clears it (no job was created); a limit's refusal (the account's concurrency, its
  request rate) is then sent again by the submit task after a pause, outside the lease.
- **Created job** (:meth:`StepLedger.note_created`): the vendor's answer replaces the note the moment it
  arrives, before the submit task returns and Prefect caches its result. An attempt that finds it (that result
  was never saved: the process killed just after the answer, a result-storage failure) resumes that job.
- **Unresolved job** (:meth:`StepLedger.note_unresolved`): a job that answered with a status the documents
  do not define. Later attempts ask about that job again instead of paying for the step again.

- **Lease** (:meth:`StepLedger.creating`): reading the ledger, sending the create and recording its answer
  happen under a lease on the step (:mod:`kling_prefect.leases`), so attempts running at the same time in any
  process take turns: the second one finds the first one's job (and resumes it) or, if the first one died
  mid-create, its in-flight note (and refuses). A note found with no live holder means what it always meant.

The cached result of the submit task (:class:`~kling_prefect.tasks.submit.JobSubmissionKey`, same key
material) remembers the job too; it is what a retry or re-run normally finds first.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prefect.filesystems import LocalFileSystem
from prefect.logging import get_run_logger
from prefect.results import ResultStore, get_result_store

from kling_prefect.exceptions import JobMayHaveBeenCreated
from kling_prefect.leases import DEFAULT_LEASE_SECONDS, lease_directory, step_lease
from kling_prefect.models import KlingRequest
from kling_prefect.records import SubmittedJob

__all__ = ["StepLedger", "request_fingerprint", "run_lease_directory", "step_key"]

_UNREADABLE = "(the note could not be read)"


def request_fingerprint(request: KlingRequest) -> str:
    """A stable digest of what a request asks for.

    Image URLs are reduced to scheme, host and path: a presigned URL for the same frame gets a new signature
    each time it is issued, and that must not look like a new request (it would pay for the clip again).
    """

    def stable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stable(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [stable(v) for v in value]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        if isinstance(value, str) and value.startswith("data:"):
            return "data:" + hashlib.sha256(value.encode()).hexdigest()
        return value

    body = json.dumps([request.model_id, stable(request.to_args())], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def step_key(kind: str, run_key: str, step: str, request: KlingRequest) -> str:
    """A result-storage key of one step: ``kling-<kind>-<digest of run key, step and request>``."""
    digest = hashlib.sha256(json.dumps([run_key, step, request_fingerprint(request)]).encode()).hexdigest()
    return f"kling-{kind}-{digest}"


_warned_storage: set[str] = set()


def _warn_once_per_machine_leases(storage: str) -> None:
    if storage in _warned_storage:
        return
    _warned_storage.add(storage)
    get_run_logger().warning(
        "result storage is %s, but step leases are files on this machine: attempts of one step on other machines "
        "are not kept from creating at the same moment (the ledger still refuses a second create it can see). "
        "Set lease_url (SHORTAPI_LEASE_URL=redis://...) when workers on several machines share this storage",
        storage,
    )


def run_lease_directory(lease_url: str | None) -> Path:
    """Where this run's file leases live (:func:`~kling_prefect.leases.lease_directory` of its result storage):
    beside a local result storage, else in ``$PREFECT_HOME``, with a warning (once per storage) when the storage
    is shared by machines that such file leases do not reach and no ``lease_url`` is set."""
    storage = get_result_store().result_storage
    basepath: str | None = None
    if storage is None:  # Prefect's default: a local folder
        from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

        basepath = str(PREFECT_LOCAL_STORAGE_PATH.value())
    elif isinstance(storage, LocalFileSystem):
        basepath = storage.basepath
    elif not lease_url:
        _warn_once_per_machine_leases(type(storage).__name__)
    return lease_directory(basepath)


@dataclass(frozen=True)
class StepLedger:
    """The ledger of one step of one run (see the module documentation). Use inside a flow or task run."""

    run_key: str
    step: str
    request: KlingRequest

    def _key(self, entry: str) -> str:
        return step_key(entry, self.run_key, self.step, self.request)

    @staticmethod
    def _store() -> ResultStore:
        # The run's result storage, as self-describing records: the flow's own store keeps no metadata, so it
        # cannot tell whether a key exists.
        return ResultStore(result_storage=get_result_store().result_storage)

    async def _read(self, entry: str) -> Any:
        store = self._store()
        key = self._key(entry)
        if not await store.aexists(key):
            return None
        try:
            return (await store.aread(key)).result
        except Exception:  # unreadable: still a reason not to pay again blindly
            return _UNREADABLE

    async def _write(self, entry: str, value: Any) -> None:
        """Write (``None``: clear) an entry; a storage failure is logged, not raised (the error itself still
        reaches the user)."""
        try:
            await self._store().awrite(value, key=self._key(entry))
        except Exception as exc:
            get_run_logger().warning("could not write the %s note of step %r: %s", entry, self.step, exc)

    # -- the lease

    @asynccontextmanager
    async def creating(
        self, *, lease_url: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> AsyncIterator[None]:
        """Hold the step's lease for the body: :meth:`before_create`, the POST and the note of its answer.

        Another attempt of this step holding it (in this process or any other sharing the lease store) is
        waited for; what it left in the ledger is then read by :meth:`before_create` as usual.

        Args:
            lease_url: a Redis URL for leases across machines (``None``: file leases on this machine).
            lease_seconds: how long a Redis lease outlives a holder that stopped renewing it.
        """
        logger = get_run_logger()

        def waiting() -> None:
            logger.info(
                "%s: another attempt of this step is creating its job; waiting for its outcome (nothing is sent "
                "meanwhile)",
                self.step,
            )

        def lost() -> None:
            logger.warning(
                "%s: the step's lease expired while its create was out (the lease store was unreachable); an "
                "attempt starting now finds the in-flight note and refuses, it does not pay again",
                self.step,
            )

        async with step_lease(
            self._key("lease"),
            lease_url=lease_url,
            directory=run_lease_directory(lease_url),
            lease_seconds=lease_seconds,
            on_wait=waiting,
            on_lost=lost,
        ):
            yield

    # -- creates

    async def note_create_sending(self) -> None:
        """Before the POST: a create for this step is being sent."""
        await self._write(
            "uncertain-create",
            {
                "run_key": self.run_key,
                "step": self.step,
                "noted_at": time.time(),
                "message": "a create was being sent when that attempt stopped, and its answer was never recorded",
            },
        )

    async def note_create_refused(self) -> None:
        """The create was refused, or never sent: no job was created, nothing is uncertain any more."""
        await self._write("uncertain-create", None)

    async def note_created(self, job: SubmittedJob) -> None:
        """The vendor answered with a job: remembered at once, in place of the in-flight note."""
        await self._write("uncertain-create", job)

    async def note_create_uncertain(self, error: JobMayHaveBeenCreated) -> None:
        """The create may have been accepted: keep the note, with what happened."""
        await self._write(
            "uncertain-create",
            {"run_key": self.run_key, "step": self.step, "noted_at": time.time(), "message": str(error)[:500]},
        )

    async def before_create(
        self, *, resubmit_uncertain: bool = False, replacing: str | None = None
    ) -> SubmittedJob | None:
        """What an earlier create of this step left: the job it made (to resume instead of paying again), or
        ``None`` (create). Raises :class:`JobMayHaveBeenCreated` (sending nothing) when an earlier create may
        have been accepted, unless ``resubmit_uncertain``.

        Args:
            resubmit_uncertain: the caller checked the vendor's dashboard: an uncertain create is no reason to
                refuse.
            replacing: the id of a job that failed at the vendor and is being replaced: not resumed.
        """
        note = await self._read("uncertain-create")
        if isinstance(note, SubmittedJob):
            return None if note.job_id == replacing else note
        if note is None or resubmit_uncertain:
            return None
        details = note if isinstance(note, dict) else {"message": str(note)}
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(details.get("noted_at", 0))))
        raise JobMayHaveBeenCreated(
            f"a create for step {self.step!r} of run {self.run_key!r} may have been accepted in an earlier attempt "
            f"(noted at {when}), so it is not submitted again. Check your ShortAPI dashboard for a job created "
            "then; if there is none, re-run with resubmit_uncertain=True (CLI: --resubmit-uncertain). "
            f"Earlier error: {str(details.get('message', ''))[:300]}"
        )

    # -- jobs in an undocumented status

    async def unresolved_job(self) -> SubmittedJob | None:
        """The job an earlier attempt left in an undocumented status, if any."""
        job = await self._read("unresolved-job")
        return job if isinstance(job, SubmittedJob) else None

    async def note_unresolved(self, job: SubmittedJob) -> None:
        await self._write("unresolved-job", job)

    async def clear_unresolved(self) -> None:
        await self._write("unresolved-job", None)
