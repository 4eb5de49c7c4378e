"""kling-prefect: Kling video generation through ShortAPI, as Prefect tasks, flows and blocks.

The public surface: the credentials block, the clients, one request model per Kling model, price estimates,
and everything the tasks and flows return or raise. Tasks live in :mod:`kling_prefect.tasks`, flows in
:mod:`kling_prefect.flows`.
"""

from importlib.metadata import PackageNotFoundError, version

from kling_prefect.client import CreatedJob, Job, PollPolicy, RetryPolicy, ShortAPIClient, SyncShortAPIClient
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.exceptions import (
    AccountBusy,
    AuthenticationFailed,
    BatchInputError,
    BudgetExceeded,
    ConcurrencyLimitUnavailable,
    DownloadFailed,
    InvalidInput,
    JobFailed,
    JobMayHaveBeenCreated,
    JobNotFound,
    JobTimedOut,
    RateLimited,
    RequestRejected,
    ResultExpired,
    ShortAPIError,
    TransientError,
    UnknownJobStatus,
    VendorUnavailable,
)
from kling_prefect.models import (
    Element,
    Kling26TextToVideo,
    Kling30TextToVideo,
    KlingO1ImageToVideo,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    KlingRequest,
    ModelFacts,
    Shot,
    request_model_for,
)
from kling_prefect.pricing import estimate_cost, format_usd
from kling_prefect.records import FinishedJob, StoredVideo, SubmittedJob
from kling_prefect.runs import ClipRecord, RunIncomplete, RunResult
from kling_prefect.storage import StorageSpec, StoredObject

try:
    __version__ = version("kling-prefect")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AccountBusy",
    "AuthenticationFailed",
    "BatchInputError",
    "BudgetExceeded",
    "ClipRecord",
    "ConcurrencyLimitUnavailable",
    "CreatedJob",
    "DownloadFailed",
    "Element",
    "FinishedJob",
    "InvalidInput",
    "Job",
    "JobFailed",
    "JobMayHaveBeenCreated",
    "JobNotFound",
    "JobTimedOut",
    "Kling26TextToVideo",
    "Kling30TextToVideo",
    "KlingO1ImageToVideo",
    "KlingO1TextToVideo",
    "KlingO3TextToVideo",
    "KlingRequest",
    "ModelFacts",
    "PollPolicy",
    "RateLimited",
    "RequestRejected",
    "ResultExpired",
    "RetryPolicy",
    "RunIncomplete",
    "RunResult",
    "ShortAPIClient",
    "ShortAPICredentials",
    "ShortAPIError",
    "Shot",
    "StorageSpec",
    "StoredObject",
    "StoredVideo",
    "SubmittedJob",
    "SyncShortAPIClient",
    "TransientError",
    "UnknownJobStatus",
    "VendorUnavailable",
    "__version__",
    "estimate_cost",
    "format_usd",
    "request_model_for",
]
