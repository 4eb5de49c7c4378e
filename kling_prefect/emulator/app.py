"""The emulated ShortAPI service: routes, handlers, jobs, faults, result files and callbacks.

Everything here runs on one asyncio loop; :mod:`kling_prefect.emulator.server` decides which thread that
loop lives on. Routes (one table, :meth:`EmulatorApp._build_routes`):

| method | path | what |
|---|---|---|
| POST | ``/api/v1/job/create`` | create a job (bearer auth) |
| GET | ``/api/v1/job/query?id=`` | a job's status and result (bearer auth) |
| GET, HEAD | ``/files/{job_id}/{token}.mp4?expires=`` | the result video, presigned (no auth) |
| GET | ``/_emulator/stats`` | :class:`~kling_prefect.emulator.jobs.Stats` as JSON |
| GET | ``/_emulator/health`` | ``{"ok": true}`` |
| POST, DELETE | ``/_emulator/faults`` | inject a fault / clear all faults |
| POST | ``/_emulator/reset`` | forget counters, jobs and faults |
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from kling_prefect.emulator.faults import Fault, FaultBook, make_fault
from kling_prefect.emulator.fetch import ImageFetchError, describe_ref, fetch_image
from kling_prefect.emulator.files import (
    RangeNotSatisfiable,
    ResultBody,
    expired_error,
    parse_range,
    s3_error,
)
from kling_prefect.emulator.jobs import (
    QUEUED_FRACTION,
    RANDOM_FAILURE_MESSAGE,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    TERMINAL_STATUSES,
    Counters,
    Job,
    Stats,
    base_job_seconds,
    build_stats,
    clock,
)
from kling_prefect.emulator.protocol import Abort, HTTPServer, Request, Response
from kling_prefect.models import MODEL_IDS, request_model_for
from kling_prefect.pricing import estimate_cost

logger = logging.getLogger("kling_prefect.emulator")

JobTime = Callable[[str, Mapping[str, Any]], float]
Handler = Callable[[Request, "Fault | None"], Awaitable[Response]]

CALLBACK_TIMEOUT = 5.0
DEFAULT_ASPECT_RATIO = "16:9"
#: What Kling answers a create over the account's concurrency (HTTP 429): no job is made.
ACCOUNT_BUSY_CODE = 1303
ACCOUNT_BUSY_MESSAGE = "parallel task over resource pack limit"


@dataclass
class EmulatorConfig:
    """Behaviour knobs; see :class:`kling_prefect.emulator.server.Emulator` for their meaning."""

    time_scale: float = 1.0
    api_key: str | None = None
    seed: int | None = None
    timing_jitter: float = 0.25
    fail_rate: float = 0.0
    result_ttl: float = 3600.0
    result_padding_bytes: int = 0
    job_time: JobTime | None = None
    account_concurrency: int | None = None
    workdir: Path = field(default_factory=lambda: Path("."))

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that make no sense."""
        if self.account_concurrency is not None and (
            isinstance(self.account_concurrency, bool)
            or not isinstance(self.account_concurrency, int)
            or self.account_concurrency < 1
        ):
            raise ValueError(f"account_concurrency must be a whole number >= 1 or None, got {self.account_concurrency}")
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        if self.timing_jitter < 0:
            raise ValueError("timing_jitter must be >= 0")
        if not 0 <= self.fail_rate <= 1:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.result_ttl < 0:
            raise ValueError("result_ttl must be >= 0")
        if self.result_padding_bytes != 0 and self.result_padding_bytes < 8:
            raise ValueError("result_padding_bytes must be 0 or at least 8 (an MP4 box header)")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")


@dataclass(frozen=True)
class Route:
    """One entry of the dispatch table. ``endpoint`` names the fault/stats endpoint (None: control)."""

    path: str
    methods: Mapping[str, Handler]
    endpoint: str | None
    auth: bool
    prefix: bool = False

    def matches(self, path: str) -> bool:
        """Whether this route serves ``path``."""
        return path.startswith(self.path) if self.prefix else path == self.path


class EmulatorApp:
    """The emulator's state and request handling. Not thread-safe: use it from its loop only."""

    def __init__(self, config: EmulatorConfig) -> None:
        config.validate()
        self.config = config
        self.base_url = ""
        seed = config.seed
        self._rng = random.Random(seed)
        self._faults = FaultBook(random.Random(None if seed is None else f"{seed}/faults"))
        self._counters = Counters()
        self._jobs: dict[str, Job] = {}
        self._renders: dict[str, asyncio.Future[Path]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self._http = HTTPServer(self.dispatch, on_connect=self._count_connection)
        self._routes = self._build_routes()
        self._padding_header = b""
        if config.result_padding_bytes:
            self._padding_header = _free_box_header(config.result_padding_bytes)
        (config.workdir / "renders").mkdir(parents=True, exist_ok=True)
        (config.workdir / "images").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> int:
        """Bind the server; returns the port. Sets :attr:`base_url`."""
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=200))
        bound = await self._http.start(host, port)
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        shown = f"[{shown}]" if ":" in shown else shown
        self.base_url = f"http://{shown}:{bound}"
        return bound

    async def close(self) -> None:
        """Stop serving, cancel timers and background tasks, close the HTTP client."""
        await self._http.close()
        for job in self._jobs.values():
            if job.timer is not None:
                job.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # ---------------------------------------------------------------------------------------- public API

    def stats(self) -> Stats:
        """A snapshot of counters and jobs."""
        return build_stats(self._counters, self._jobs, self._faults.pending())

    def reset_stats(self) -> None:
        """Forget counters and jobs (their pending callbacks are cancelled)."""
        for job in self._jobs.values():
            if job.timer is not None:
                job.timer.cancel()
        self._jobs.clear()
        self._counters = Counters()

    def inject(
        self,
        fault: str,
        *,
        endpoint: str = "any",
        times: int | None = 1,
        probability: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue a fault (see :mod:`kling_prefect.emulator.faults`); ``ValueError`` when invalid."""
        self._faults.add(make_fault(fault, endpoint=endpoint, times=times, probability=probability, params=params))

    def clear_faults(self) -> None:
        """Forget all pending faults."""
        self._faults.clear()

    def set_account_concurrency(self, limit: int | None) -> None:
        """Change the account's concurrency rule (``None``: off); jobs already running keep their slots."""
        previous = self.config.account_concurrency
        self.config.account_concurrency = limit
        try:
            self.config.validate()
        except ValueError:
            self.config.account_concurrency = previous
            raise

    # ------------------------------------------------------------------------------------------ dispatch

    def _build_routes(self) -> list[Route]:
        return [
            Route("/api/v1/job/create", {"POST": self._handle_create}, "create", auth=True),
            Route("/api/v1/job/query", {"GET": self._handle_query}, "query", auth=True),
            Route("/files/", {"GET": self._handle_download}, "download", auth=False, prefix=True),
            Route("/_emulator/stats", {"GET": self._handle_stats}, None, auth=False),
            Route("/_emulator/health", {"GET": self._handle_health}, None, auth=False),
            Route(
                "/_emulator/faults",
                {"POST": self._handle_inject, "DELETE": self._handle_clear_faults},
                None,
                auth=False,
            ),
            Route("/_emulator/reset", {"POST": self._handle_reset}, None, auth=False),
        ]

    async def dispatch(self, request: Request) -> Response:
        """Route one request: count it, apply faults and auth, run the handler."""
        route = next((r for r in self._routes if r.matches(request.path)), None)
        if route is None or route.endpoint is not None:
            self._counters.requests += 1
        try:
            response = await self._route(route, request)
        except Abort:
            self._count_response("reset", route)
            raise
        except Exception as exc:
            logger.exception("emulator error serving %s %s", request.method, request.target)
            response = Response.envelope_error(500, f"internal emulator error: {type(exc).__name__}: {exc}")
        self._count_response(str(response.status), route)
        return response

    async def _route(self, route: Route | None, request: Request) -> Response:
        if route is None:
            return Response.envelope_error(404, f"no such endpoint: {request.path}")
        handler = route.methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            allow = ", ".join(sorted(route.methods))
            return Response.json(405, {"code": 405, "message": "method not allowed"}, headers=[("Allow", allow)])
        self._count_endpoint(route.endpoint, request)
        fault = self._faults.take(route.endpoint) if route.endpoint else None
        if fault is not None:
            self._counters.faults_fired[fault.kind] = self._counters.faults_fired.get(fault.kind, 0) + 1
            early = await self._apply_fault(fault)
            if early is not None:
                return early
        if route.auth:
            refusal = self._check_auth(request)
            if refusal is not None:
                return refusal
        response = await handler(request, fault)
        if fault is not None and fault.kind == "truncate":
            response.truncate_fraction = float(fault.params["fraction"])
        return response

    def _count_connection(self) -> None:
        self._counters.connections += 1

    def _count_endpoint(self, endpoint: str | None, request: Request) -> None:
        counters = self._counters
        if endpoint == "create":
            counters.create_requests += 1
        elif endpoint == "query":
            counters.queries += 1
            counters.query_times.append(clock())
        elif endpoint == "download" and request.method == "GET":
            counters.downloads += 1
            if request.header("authorization"):
                counters.downloads_with_authorization += 1

    def _count_response(self, key: str, route: Route | None) -> None:
        if route is None or route.endpoint is not None:
            self._counters.responses[key] = self._counters.responses.get(key, 0) + 1

    async def _apply_fault(self, fault: Fault) -> Response | None:
        """The response a fault substitutes for the real one (``None``: carry on)."""
        kind, params = fault.kind, fault.params
        if kind == "reset":
            raise Abort
        if kind == "slow":
            await asyncio.sleep(float(params["delay"]))
            return None
        if kind == "rate_limit":
            return Response.json(
                429,
                {"code": 429, "message": "too many requests"},
                headers=[("Retry-After", str(params["retry_after"]))],
            )
        if kind == "server_error":
            return _html_error(int(params["status"]))
        if kind == "malformed_json":
            truncated = b'{"code": 0, "data": {"job_id": "' + uuid.uuid4().hex[:12].encode()
            return Response(200, truncated, "application/json")
        if kind == "error_code":
            return Response.json(200, {"code": params["code"], "message": params["message"]})
        return None  # drop_after_create, unknown_status, truncate: applied by the handlers

    def _check_auth(self, request: Request) -> Response | None:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        token = token.strip()
        expected = self.config.api_key
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("missing bearer token")
        if expected is not None and not secrets.compare_digest(token.encode(), expected.encode()):
            return _unauthorized("invalid API key")
        return None

    # ------------------------------------------------------------------------------------------- create

    async def _handle_create(self, request: Request, fault: Fault | None) -> Response:
        try:
            body = _json_object(request.body)
            model, args, callback_url = _create_fields(body)
        except ValueError as exc:
            return Response.envelope_error(400, str(exc))
        if model not in MODEL_IDS:  # the vendor knows full ids only (request_model_for also takes short names)
            return Response.envelope_error(400, f"unknown model: {model}")
        request_model = request_model_for(model)
        try:
            validated = request_model.model_validate(args)
        except ValidationError as exc:
            return Response.envelope_error(400, _validation_message(exc))
        refusal = self._account_refusal()
        if refusal is not None:
            return refusal
        job = self._create_job(model, args, validated, callback_url)
        if fault is not None and fault.kind == "drop_after_create":
            raise Abort
        return Response.json(200, {"code": 0, "data": {"amount": str(job.amount), "job_id": job.job_id}})

    def _account_refusal(self) -> Response | None:
        """Kling's concurrency rule, when configured: each job holds one of the account's slots from submission
        until it ends (status queries hold none); a create over the limit is refused and makes nothing."""
        limit = self.config.account_concurrency
        if limit is None:
            return None
        now = clock()
        running = sum(1 for job in self._jobs.values() if job.status_at(now) not in TERMINAL_STATUSES)
        if running < limit:
            return None
        self._counters.account_refusals += 1
        return Response.envelope_error(429, ACCOUNT_BUSY_MESSAGE, code=ACCOUNT_BUSY_CODE)

    def _create_job(self, model: str, args: dict[str, Any], validated: Any, callback_url: str | None) -> Job:
        now = clock()
        seconds = self._job_seconds(model, args, validated)
        error = self._faults.take_job_failure()
        if error is None and self.config.fail_rate > 0 and self._rng.random() < self.config.fail_rate:
            error = RANDOM_FAILURE_MESSAGE
        job = Job(
            job_id=uuid.uuid4().hex,
            model=model,
            args=args,
            request=validated,
            amount=Decimal(estimate_cost(validated)),
            callback_url=callback_url,
            token=secrets.token_hex(16),
            created_at=now,
            queued_until=now + seconds * QUEUED_FRACTION,
            done_at=now + seconds,
            error=error,
        )
        self._jobs[job.job_id] = job
        counters = self._counters
        counters.creates += 1
        counters.by_model[model] = counters.by_model.get(model, 0) + 1
        refs = _image_refs(validated)
        if refs:
            job.fetching = True
            self._spawn(self._fetch_images(job, refs))
        else:
            self._schedule_terminal(job)
        return job

    def _job_seconds(self, model: str, args: Mapping[str, Any], validated: Any) -> float:
        """Scaled seconds the job takes: ``job_time`` if given, else the table with log-normal jitter."""
        config = self.config
        if config.job_time is not None:
            return max(0.0, float(config.job_time(model, args))) * config.time_scale
        base = base_job_seconds(
            model,
            mode=str(getattr(validated, "mode", "pro")),
            video_seconds=int(validated.video_seconds),
            has_audio=bool(validated.has_audio),
        )
        jitter = math.exp(self._rng.gauss(0.0, config.timing_jitter)) if config.timing_jitter > 0 else 1.0
        return base * jitter * config.time_scale

    async def _fetch_images(self, job: Job, refs: list[tuple[str, str, bool]]) -> None:
        """Fetch a job's images (``(field, reference, keep)``: the frames are kept for rendering); a failure fails
        the job, saying which image and why."""
        try:
            for where, ref, keep in refs:
                try:
                    data = await fetch_image(self._http_client(), ref)
                    await asyncio.to_thread(_check_decodable, data)
                except ImageFetchError as exc:
                    job.fail_now(clock(), f"failed to load {where} ({describe_ref(ref)}): {exc}")
                    return
                if keep:
                    path = self.config.workdir / "images" / f"{job.job_id}-{len(job.image_paths)}"
                    await asyncio.to_thread(path.write_bytes, data)
                    job.image_paths.append(path)
                    job.image_digests.append(hashlib.sha256(data).hexdigest())
            job.fetched(clock())
        except Exception as exc:  # never leave a job processing forever
            logger.exception("image fetch for job %s failed", job.job_id)
            job.fail_now(clock(), f"failed to load images: {type(exc).__name__}: {exc}")
        finally:
            if self._jobs.get(job.job_id) is job:
                self._schedule_terminal(job)

    # -------------------------------------------------------------------------------------------- query

    async def _handle_query(self, request: Request, fault: Fault | None) -> Response:
        job_id = request.query.get("id", "").strip()
        if not job_id:
            return Response.envelope_error(400, "missing query parameter: id")
        job = self._jobs.get(job_id)
        if job is None:
            return Response.envelope_error(404, "job not found")
        now = clock()
        job.queries += 1
        if fault is not None and fault.kind == "unknown_status":
            data: dict[str, Any] = {"job_id": job_id, "status": fault.params["status"], "result": None}
            return Response.json(200, {"code": 0, "data": data})
        status = job.status_at(now)
        data = {"job_id": job_id, "status": status, "result": None}
        if status == STATUS_SUCCEEDED:
            data["result"] = {"videos": [{"url": self._result_url(job, request, now)}]}
        elif status == STATUS_FAILED:
            data["error"] = job.error
        if status in TERMINAL_STATUSES and job.first_terminal_seen_at is None:
            job.first_terminal_seen_at = now
        return Response.json(200, {"code": 0, "data": data})

    def _ttl(self) -> float:
        return self.config.result_ttl * self.config.time_scale

    def _result_url(self, job: Job, request: Request, now: float) -> str:
        """The presigned result URL, on the host the client used to reach us."""
        if job.expires_unix is None:
            finished_unix = time.time() - (now - job.done_at)
            job.expires_unix = math.ceil(finished_unix + self._ttl())
        host = request.header("host")
        base = f"http://{host}" if host else self.base_url
        return f"{base}/files/{job.job_id}/{job.token}.mp4?expires={job.expires_unix}"

    # ----------------------------------------------------------------------------------------- download

    async def _handle_download(self, request: Request, fault: Fault | None) -> Response:
        job_id, _, name = request.path[len("/files/") :].partition("/")
        token = name.removesuffix(".mp4")
        job = self._jobs.get(job_id)
        if job is None or not name.endswith(".mp4"):
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if (
            not secrets.compare_digest(token.encode(), job.token.encode())
            or job.expires_unix is None
            or request.query.get("expires") != str(job.expires_unix)
        ):
            return s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        now = clock()
        if job.status_at(now) != STATUS_SUCCEEDED:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if now >= job.done_at + self._ttl():
            return expired_error(job.expires_unix, time.time())
        body = ResultBody(await self._result_file(job), self._padding_header, self.config.result_padding_bytes)
        return _file_response(request, body, etag=f'"{job.job_id}-{body.size}"')

    async def _result_file(self, job: Job) -> Path:
        """The job's MP4, rendered once per distinct content in a worker thread (concurrent callers wait)."""
        spec = self._render_spec(job)
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]
        future = self._renders.get(key)
        if future is None:
            out_path = self.config.workdir / "renders" / f"{key}.mp4"
            future = asyncio.ensure_future(asyncio.to_thread(_render, out_path, spec, list(job.image_paths)))
            self._renders[key] = future
            self._counters.renders += 1
            future.add_done_callback(lambda done: self._forget_failed_render(key, done))
        return await asyncio.shield(future)

    def _forget_failed_render(self, key: str, future: asyncio.Future[Path]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._renders.pop(key, None)

    def _render_spec(self, job: Job) -> dict[str, Any]:
        request = job.request
        prompt = getattr(request, "prompt", None) or " ".join(
            str(shot.prompt) for shot in (getattr(request, "multi_prompt", None) or [])
        )
        return {
            "duration_s": int(request.video_seconds),
            "aspect_ratio": getattr(request, "aspect_ratio", None),
            "seed_text": prompt,
            "audio": bool(request.has_audio),
            "images": job.image_digests,
        }

    # ------------------------------------------------------------------------------------------ control

    async def _handle_stats(self, request: Request, fault: Fault | None) -> Response:
        return Response.json(200, _abbreviate(self.stats().to_dict()))

    async def _handle_health(self, request: Request, fault: Fault | None) -> Response:
        return Response.json(200, {"ok": True, "base_url": self.base_url})

    async def _handle_inject(self, request: Request, fault: Fault | None) -> Response:
        try:
            body = _json_object(request.body)
            params = body.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("params must be an object")
            self.inject(
                str(body.get("fault")),
                endpoint=str(body.get("endpoint") or "any"),
                times=body.get("times", 1),
                probability=body.get("probability"),
                params=params,
            )
        except ValueError as exc:
            return Response.envelope_error(400, str(exc))
        return Response.json(200, {"code": 0, "faults": self._faults.pending()})

    async def _handle_clear_faults(self, request: Request, fault: Fault | None) -> Response:
        self.clear_faults()
        return Response.json(200, {"code": 0, "faults": []})

    async def _handle_reset(self, request: Request, fault: Fault | None) -> Response:
        self.reset_stats()
        self.clear_faults()
        return Response.json(200, {"code": 0})

    # -------------------------------------------------------------------------------- callbacks & tasks

    def _schedule_terminal(self, job: Job) -> None:
        """Arrange the callback POST for when the job reaches its terminal status."""
        if not job.callback_url:
            return
        loop = asyncio.get_running_loop()
        job.timer = loop.call_later(max(0.0, job.done_at - clock()), self._on_terminal, job)

    def _on_terminal(self, job: Job) -> None:
        job.timer = None
        if self._jobs.get(job.job_id) is job:
            self._spawn(self._send_callback(job))

    async def _send_callback(self, job: Job) -> None:
        """POST ``{"job_id", "status"}`` to the job's callback URL once; errors are counted, not raised."""
        # At done_at or later by construction; max() guards against a timer firing a hair early.
        payload = {"job_id": job.job_id, "status": job.status_at(max(clock(), job.done_at))}
        fault = self._faults.take("callback")
        if fault is not None:
            self._counters.faults_fired[fault.kind] = self._counters.faults_fired.get(fault.kind, 0) + 1
            self._counters.callbacks_lost += 1
            return
        try:
            await self._http_client().post(str(job.callback_url), json=payload, timeout=CALLBACK_TIMEOUT)
            self._counters.callbacks_sent += 1
        except (httpx.HTTPError, OSError, ValueError) as exc:
            self._counters.callbacks_failed += 1
            logger.debug("callback for job %s failed: %s", job.job_id, exc)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _http_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        return self._client


# ---------------------------------------------------------------------------------------------- helpers


def _free_box_header(size: int) -> bytes:
    from kling_prefect.emulator.video import free_box_header  # imported late: see _render

    return free_box_header(size)


def _render(out_path: Path, spec: dict[str, Any], image_paths: list[Path]) -> Path:
    """Render the result MP4 in a worker thread (``render_clip`` writes atomically)."""
    # Imported here: video rendering pulls in PyAV/numpy and lives in a module written separately.
    from kling_prefect.emulator.video import render_clip

    if out_path.exists():
        return out_path
    images = [path.read_bytes() for path in image_paths]
    return render_clip(
        out_path,
        duration_s=spec["duration_s"],
        aspect_ratio=spec["aspect_ratio"] or DEFAULT_ASPECT_RATIO,  # ignored for 'frame': the image's shape
        seed_text=spec["seed_text"],
        first_image=images[0] if images else None,
        last_image=images[1] if len(images) > 1 else None,
        audio=spec["audio"],
    )


def _image_refs(validated: Any) -> list[tuple[str, str, bool]]:
    """Every image a job fetches, as ``(field, reference, keep)``: its ``images`` (with ``frame`` only the first
    two take effect, and are kept: the clip is rendered from them), then each element's frontal and reference
    images (fetched and checked as the vendor would, not rendered)."""
    images = list(getattr(validated, "images", None) or [])
    frame = getattr(validated, "action", None) == "frame"
    refs = [(f"images[{i}]", ref, frame) for i, ref in enumerate(images[:2] if frame else images)]
    for e, element in enumerate(getattr(validated, "elements", None) or []):
        refs.append((f"elements[{e}].frontal_image_url", element.frontal_image_url, False))
        for r, ref in enumerate(element.reference_image_urls or []):
            refs.append((f"elements[{e}].reference_image_urls[{r}]", ref, False))
    return refs


def _check_decodable(data: bytes) -> None:
    """Raise :class:`ImageFetchError` unless FFmpeg can decode ``data`` as an image (worker thread)."""
    from kling_prefect.media import decode_image

    try:
        decode_image(data)
    except ValueError as exc:
        raise ImageFetchError(str(exc)) from None


def _file_response(request: Request, body: ResultBody, *, etag: str) -> Response:
    """200 or 206 (single ``Range``) or 416, streaming the body; ``If-Range`` with another ETag ignores Range."""
    headers = [("Accept-Ranges", "bytes"), ("ETag", etag), ("Cache-Control", "private, max-age=0")]
    range_header = request.header("range")
    if_range = request.header("if-range")
    if if_range is not None and if_range != etag:
        range_header = None
    try:
        window = parse_range(range_header, body.size)
    except RangeNotSatisfiable:
        return Response(416, b"", "application/xml", [*headers, ("Content-Range", f"bytes */{body.size}")])
    status, (start, end) = (200, (0, body.size)) if window is None else (206, window)
    if status == 206:
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{body.size}"))
    return Response(
        status,
        content_type="video/mp4",
        headers=headers,
        stream=lambda: body.iter_range(start, end),
        length=end - start,
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("invalid JSON body: expected an object")
    return value


def _create_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("invalid request: 'model' is required")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ValueError("invalid request: 'args' must be an object")
    callback_url = body.get("callback_url")
    if callback_url in (None, ""):
        callback_url = None
    elif not isinstance(callback_url, str) or not callback_url.lower().startswith(("http://", "https://")):
        raise ValueError("invalid request: 'callback_url' must be an http(s) URL")
    return model, args, callback_url


def _validation_message(exc: ValidationError) -> str:
    """``invalid args: duration: Input should be '5' or '10'; prompt: Field required``."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error['msg']}" if location else str(error["msg"]))
    return "invalid args: " + "; ".join(parts)


def _unauthorized(message: str) -> Response:
    response = Response.envelope_error(401, f"unauthorized: {message}")
    response.headers.append(("WWW-Authenticate", 'Bearer realm="shortapi"'))
    return response


def _html_error(status: int) -> Response:
    """An nginx-style gateway error page."""
    try:
        title = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        title = str(status)
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(status, page.encode(), "text/html")


def _abbreviate(value: Any) -> Any:
    """Shorten long ``data:`` URIs (inline images) so the stats JSON stays small."""
    if isinstance(value, dict):
        return {key: _abbreviate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_abbreviate(item) for item in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 256:
        return describe_ref(value)
    return value
