"""kling-prefect: Kling video generation through ShortAPI, as Prefect tasks, flows and blocks."""

from kling_prefect.client import CreatedJob, Job, PollPolicy, RetryPolicy, ShortAPIClient, SyncShortAPIClient
from kling_prefect.credentials import ShortAPICredentials
from kling_prefect.exceptions import (
    AuthenticationFailed,
    BudgetExceeded,
    DownloadFailed,
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
    Kling26TextToVideo,
    Kling30TextToVideo,
    KlingO1ImageToVideo,
    KlingO1TextToVideo,
    KlingO3TextToVideo,
    KlingRequest,
    request_model_for,
)
from kling_prefect.pricing import estimate_cost

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "CreatedJob",
    "DownloadFailed",
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
    "PollPolicy",
    "RateLimited",
    "RequestRejected",
    "ResultExpired",
    "RetryPolicy",
    "ShortAPIClient",
    "ShortAPICredentials",
    "ShortAPIError",
    "SyncShortAPIClient",
    "TransientError",
    "UnknownJobStatus",
    "VendorUnavailable",
    "__version__",
    "estimate_cost",
    "request_model_for",
]
