"""The HTTP API: ``create_app(settings)`` builds the FastAPI application; nothing happens at import.

Start-up (the lifespan) opens the store, loads the active model, selects the meter and starts the
job worker; shutdown stops the worker (a running job is asked to stop at its next batch) and closes
the store. Every error is JSON ``{"error": "...", "field": ...}`` naming the problem (the shape is
:class:`service.api_schema.ErrorBody`): bad input is a 4xx, the daemon shutting down a 503, and an
unexpected exception a 500 (:class:`service.error_guard.ErrorGuard`). The OpenAPI document declares
every status an operation answers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from energy.discovery import select_meter
from energy.meter import Meter
from service import metrics
from service.api_schema import SQLITE_INTEGER_MAX, describe_model_input, error_responses, sample_batch_openapi
from service.body_limit import BodySizeLimit
from service.dashboard import dashboard_router, is_public_path
from service.error_guard import ErrorGuard
from service.jobs import JobError, JobManager, ShuttingDown
from service.model_registry import ModelFileError, ModelRegistry
from service.payloads import DEFAULT_CONTEXT, PayloadError, SampleBatch, decode_samples
from service.settings import FinetuneProfile, Settings
from service.store import (
    IdempotencyConflict,
    MixedSamples,
    NotFound,
    QuotaExceeded,
    Store,
    StoreClosed,
    StoredResponse,
    StoreRefusal,
)

log = logging.getLogger(__name__)

API_VERSION = "v1"
CONTEXT_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
#: The header a client sets on a POST so that a retry is answered, not done, again.
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_HELP = (
    "Any unique string of 1-255 printable ASCII characters (a UUID) chosen by the client per request: a retry "
    "with the same key and the same request gets the first answer (header `Idempotent-Replayed: true`) and "
    "changes nothing; the same key with another request is a 422. Keys are kept `idempotency_key_seconds`.")
IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=255,
                                              pattern=r"^[\x21-\x7e]+$", description=IDEMPOTENCY_HELP)]
ContextQuery = Annotated[str, Query(pattern=CONTEXT_PATTERN, description=(
    "The context whose model is meant (default `default`); a context without a model of its own has the "
    "default model."))]


@dataclass
class Daemon:
    """The parts the endpoints use, created by the lifespan."""

    settings: Settings
    store: Store
    registry: ModelRegistry
    jobs: JobManager
    meter: Meter
    started_at: float


class DriftHint(BaseModel):
    """``POST /v1/drift``: a drift type, ``auto`` (detect it from the samples), or ``full``/``bn``/a
    block asked for explicitly."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["input", "feature", "output", "auto", "full", "bn", "block1", "block2", "block3", "fc"]
    context: str = Field(default="default", pattern=CONTEXT_PATTERN)
    min_samples: int | None = Field(default=None, ge=1, le=1_000_000)


class JobRequest(BaseModel):
    """``POST /v1/jobs``: start a job now on a context's samples, by block or drift type."""

    model_config = ConfigDict(extra="forbid")
    context: str = Field(default="default", pattern=CONTEXT_PATTERN)
    block: Literal["block1", "block2", "block3", "fc", "full", "bn"] | None = None
    drift_type: Literal["input", "feature", "output", "auto"] | None = None
    profile: FinetuneProfile | None = Field(
        default=None, description="Fine-tuning profile of this job (default: the daemon's `finetune_profile`).")


def create_app(settings: Settings, *, meter: Meter | None = None) -> FastAPI:
    """Build the application for ``settings``; ``meter`` overrides meter selection (tests, demo)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        daemon = await run_in_threadpool(_start_daemon, settings, meter)
        app.state.daemon = daemon
        try:
            yield
        finally:
            await run_in_threadpool(_stop_daemon, daemon)

    app = FastAPI(
        title="tbftd",
        version=API_VERSION,
        description="On-device target-block fine-tuning with per-job energy accounting.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs loads its scripts from a CDN: blank on an offline Pi.
        redoc_url=None,
    )
    _install_error_handlers(app)
    if settings.api_token:
        _install_token_guard(app, settings.api_token)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    # Added last, so outermost: it also catches what escapes the body cap and the token guard.
    app.add_middleware(ErrorGuard)
    _add_routes(app, token_required=bool(settings.api_token))
    app.include_router(dashboard_router())
    _describe_served_model(app)
    return app


def _describe_served_model(app: FastAPI) -> None:
    """Make ``app.openapi()`` state the served model's input shape and labels once the daemon runs."""
    build = app.openapi
    described = False

    def openapi() -> dict[str, Any]:
        nonlocal described
        document = build()  # FastAPI caches it in app.openapi_schema; this edits that copy once
        daemon: Daemon | None = getattr(app.state, "daemon", None)
        if daemon is not None and not described:
            config = daemon.registry.config
            describe_model_input(document, input_shape=config.input_shape, num_classes=config.num_classes,
                                 max_batch=daemon.settings.max_batch_samples)
            described = True
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _start_daemon(settings: Settings, meter: Meter | None) -> Daemon:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database_path, max_samples=settings.max_buffer_samples,
                       max_bytes=settings.max_buffer_bytes, max_context_samples=settings.max_context_samples,
                       max_device_samples=settings.max_device_samples)
    try:
        registry = ModelRegistry(store, settings.models_dir, settings.base_model, settings.context_groups())
        active = registry.bootstrap()
        if meter is None:
            meter = select_meter(settings.meter_port, None if settings.meter_kind == "auto" else settings.meter_kind,
                                 baudrate=settings.meter_baud)
        jobs = JobManager(store, registry, settings, meter)
        jobs.start()
    except BaseException:
        store.close()
        raise
    info = meter.describe()
    log.info("ready: model version %s, meter %s, data in %s", active.version, info.source, settings.data_dir)
    return Daemon(settings, store, registry, jobs, meter, time.time())


def _stop_daemon(daemon: Daemon) -> None:
    # The worker first records a running job (cancelled, with its energy); then nothing writes.
    daemon.jobs.shutdown()
    daemon.meter.close()  # an energy window closes the meter it opened; this covers any other path
    daemon.store.close()
    log.info("stopped: jobs recorded, meter and database closed")


def _daemon(request: Request) -> Daemon:
    return request.app.state.daemon


# -- errors ------------------------------------------------------------------------------------------


def _error(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        for error in errors:
            if error.get("type") == "json_invalid":  # as for /v1/samples: a body that is not JSON is a 400
                reason = (error.get("ctx") or {}).get("error", "JSON decode error")
                return _error(400, f"body: not valid JSON: {reason}", "body")
        problems = []
        for error in errors:
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request", _error_field(errors), details=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(PayloadError)
    async def bad_payload(request: Request, exc: PayloadError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.field)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc).strip("'\""))

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, exc: ShuttingDown) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(JobError)
    async def conflict(request: Request, exc: JobError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(StoreRefusal)
    async def refused(request: Request, exc: StoreRefusal) -> JSONResponse:
        # A full buffer (507), or a context's (507) or device's (429) quota: the body names the quota.
        if isinstance(exc, QuotaExceeded):
            return _error(exc.status, str(exc), exc.field, quota=exc.quota, limit=exc.limit, held=exc.held)
        return _error(exc.status, str(exc), exc.field, quota=exc.quota)

    @app.exception_handler(IdempotencyConflict)
    async def key_reused(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _error(422, str(exc), IDEMPOTENCY_HEADER)

    @app.exception_handler(MixedSamples)
    async def mixed(request: Request, exc: MixedSamples) -> JSONResponse:
        return _error(409, f"dtype: {exc}", field="dtype")

    @app.exception_handler(ModelFileError)
    async def unservable(request: Request, exc: ModelFileError) -> JSONResponse:
        # Raised in a request only by POST /v1/models/{version}/activate. 500, not 409: the request is
        # right and the version exists, but its file on the daemon's disk is missing or corrupt, which
        # only an operator can repair; a 4xx would blame the client. Logged without a traceback: no bug.
        version = request.path_params.get("version", "?")
        log.error("model version %s cannot be activated: %s", version, exc)
        return _error(500, f"model version {version} cannot be served: {exc}", "version")

    @app.exception_handler(StoreClosed)
    async def store_closed(request: Request, exc: StoreClosed) -> JSONResponse:
        # Only during shutdown, once the database is closed: not a bug, and the daemon is going away.
        return _error(503, "the daemon is shutting down (its database is closed); retry once it is back")


def _error_field(errors: list[Any]) -> str | None:
    """The field of the first validation error: the last name in its location (``job_id``, ``type``)."""
    if not errors:
        return None
    names = [part for part in errors[0].get("loc", ()) if isinstance(part, str)]
    return names[-1] if names else None


def _install_token_guard(app: FastAPI, token: str) -> None:
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path == "/healthz" or is_public_path(request.url.path):
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        return await call_next(request)


# -- routes ------------------------------------------------------------------------------------------


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
# Ids bound to SQLite: beyond a signed 64-bit integer they would overflow the binding (a 500).
JobId = Annotated[int, Path(ge=1, le=SQLITE_INTEGER_MAX, description="A job id.")]
VersionNumber = Annotated[int, Path(ge=1, le=SQLITE_INTEGER_MAX, description="A model version.")]


def _add_routes(app: FastAPI, *, token_required: bool) -> None:
    guarded = (401,) if token_required else ()

    def errors(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
        """An operation's error responses: ``statuses``, 500 always, and 401 behind a token."""
        return error_responses(*sorted({*statuses, *guarded, 500}), described=described)

    @app.get("/healthz", responses=error_responses(500))
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/samples",
        status_code=201,
        responses=errors(400, 409, 413, 415, 422, 429, 503, 507,
                         described={409: "The context holds samples of another dtype or shape (a job stacks them)."}),
        openapi_extra=sample_batch_openapi(labelled=True),
    )
    async def post_samples(request: Request, idempotency_key: IdempotencyKey = None) -> Response:
        daemon = _daemon(request)
        batch, body = await _read_batch(request, daemon, labelled=True)
        idempotency = None if idempotency_key is None else (idempotency_key, _fingerprint(request, body))

        def store_batch() -> Response:
            # The key is stored in the batch's own transaction: a retry after any failure, a
            # crash included, finds it there, and the batch is stored once.
            result = daemon.store.add_samples(batch.context, batch.device_id, batch.labels, batch.x,
                                              idempotency=idempotency)
            job = None if result.replayed else daemon.jobs.samples_added(batch.context)
            answer = {
                "accepted": len(result.ids),
                "first_id": result.ids[0],
                "last_id": result.ids[-1],
                "context": batch.context,
                "context_samples": daemon.store.count_samples(batch.context),
                "buffer": {"samples": result.usage.samples, "bytes": result.usage.bytes},
                "evicted": result.evicted,
                "evicted_contexts": result.evicted_contexts,
                "evictions": [e.to_dict() for e in result.evictions],
                "job": job.to_dict() if job else None,
                "replayed": result.replayed,
            }
            headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
            return JSONResponse(answer, status_code=201, headers=headers)

        return await run_in_threadpool(store_batch)

    @app.post("/v1/drift", status_code=202, responses=errors(400, 413, 422, 503))
    def post_drift(hint: DriftHint, request: Request, idempotency_key: IdempotencyKey = None) -> Any:
        daemon = _daemon(request)
        key = _keyed(daemon, request, idempotency_key, hint)
        if isinstance(key, Response):
            return key
        outcome = daemon.jobs.hint(hint.context, hint.type, hint.min_samples)
        status = "merged" if outcome.merged else ("scheduled" if outcome.job else "waiting for samples")
        answer = {
            "status": status,
            "hint": outcome.hint.to_dict(),
            "job": outcome.job.to_dict() if outcome.job else None,
            "context_samples": outcome.samples,
            "min_samples": outcome.min_samples,
            "expires_at": outcome.expires_at,
        }
        return _remember(daemon, key, 202, answer)

    @app.get("/v1/drift", responses=errors(422, 503))
    def list_hints(
        request: Request,
        context: Annotated[str | None, Query(pattern=CONTEXT_PATTERN, description="Only this context's hints.")] = None,
        state: Annotated[Literal["waiting", "scheduled", "expired"] | None, Query(
            description="Only hints in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="The newest hints to list.")] = 100,
    ) -> dict[str, Any]:
        daemon = _daemon(request)
        hints = daemon.store.list_hints(context=context, newest_first=True, state=state, limit=limit)
        expiry = daemon.settings.hint_expiry_seconds
        return {"hints": [{**h.to_dict(), "expires_at": h.expires_at(expiry)} for h in hints]}

    @app.post(
        "/v1/jobs",
        status_code=201,
        responses=errors(400, 409, 413, 422, 503,
                         described={409: "The context holds too few samples, or already has a pending job."}),
    )
    def post_job(body: JobRequest, request: Request, idempotency_key: IdempotencyKey = None) -> Any:
        if (body.block is None) == (body.drift_type is None):
            raise PayloadError("give exactly one of block or drift_type", "block")
        daemon = _daemon(request)
        key = _keyed(daemon, request, idempotency_key, body)
        if isinstance(key, Response):
            return key
        job = daemon.jobs.submit(body.context, body.block or body.drift_type or "", body.profile)
        return _remember(daemon, key, 201, job.to_dict())

    @app.get("/v1/jobs", responses=errors(422, 503))
    def list_jobs(
        request: Request,
        state: JobState | None = None,
        context: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="The newest jobs to list.")] = 100,
    ) -> dict[str, Any]:
        store = _daemon(request).store
        jobs = store.list_jobs(state=state, context=context, limit=limit)
        energy = store.energy_of_jobs(job.id for job in jobs)
        return {"jobs": [{**job.to_dict(), "energy": _energy_dict(energy[job.id].to_dict()) if job.id in energy else None}
                         for job in jobs]}

    @app.get("/v1/jobs/{job_id}", responses=errors(404, 422, 503, described={404: "No such job."}))
    def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
        daemon = _daemon(request)
        job = daemon.store.get_job(job_id).to_dict()
        if daemon.jobs.running_job == job_id and daemon.jobs.latest_progress is not None:
            job["progress"] = daemon.jobs.latest_progress
        energy = daemon.store.get_energy(job_id)
        job["energy"] = _energy_dict(energy.to_dict()) if energy else None
        return job

    @app.delete(
        "/v1/jobs/{job_id}",
        responses=errors(404, 409, 422, 503, described={
            404: "No such job.", 409: "The job has finished: only queued or running jobs can be cancelled."}),
    )
    def cancel_job(job_id: JobId, request: Request) -> dict[str, Any]:
        job = _daemon(request).jobs.cancel(job_id)
        return {**job.to_dict(), "cancel_requested": job.state == "running"}

    @app.get("/v1/jobs/{job_id}/power", responses=errors(404, 422, 503, described={404: "No such job."}))
    def job_power(job_id: JobId, request: Request) -> dict[str, Any]:
        daemon = _daemon(request)
        trace = daemon.store.power_trace(job_id)
        energy = daemon.store.get_energy(job_id)
        return {
            "job_id": job_id,
            "units": {"t": "seconds since the job started", "watts": "W"},
            "baseline_watts": energy.baseline_watts if energy else None,
            "source": energy.source if energy else None,
            "points": [{"t_seconds": p.t_seconds, "watts": p.watts, "source": p.source} for p in trace],
        }

    # No 503: prediction uses the model in memory, not the database.
    @app.post("/v1/predict", responses=errors(400, 413, 415, 422), openapi_extra=sample_batch_openapi(labelled=False))
    async def post_predict(request: Request) -> dict[str, Any]:
        daemon = _daemon(request)
        batch, _ = await _read_batch(request, daemon, labelled=False)
        version, prediction = await run_in_threadpool(daemon.registry.predict, batch.context, batch.x)
        return {
            "context": batch.context,
            "model_version": version,
            "classes": prediction.classes.tolist(),
            "probabilities": prediction.probabilities.round(6).tolist(),
        }

    @app.get("/v1/models", responses=errors(422, 503))
    def list_models(request: Request, context: ContextQuery = DEFAULT_CONTEXT) -> dict[str, Any]:
        daemon = _daemon(request)
        registry = daemon.registry
        scope = registry.scope_of(context)
        return {"context": context,
                "scope": scope,
                "active": registry.version_for(context),
                "default": registry.default_version,
                "base": registry.base.version,
                "contexts": registry.scope_versions(),
                "versions": [v.to_dict() for v in daemon.store.list_versions(scope)]}

    @app.post(
        "/v1/models/{version}/activate",
        responses=errors(404, 422, 503, described={
            404: "No such model version.", 500: "An internal error, or the version's model file cannot be served."}),
    )
    def activate_model(version: VersionNumber, request: Request, context: ContextQuery = DEFAULT_CONTEXT,
                       idempotency_key: IdempotencyKey = None) -> Any:
        daemon = _daemon(request)
        key = _keyed(daemon, request, idempotency_key, None)
        if isinstance(key, Response):
            return key
        record = daemon.registry.activate(version, context)
        return _remember(daemon, key, 200, {**record.to_dict(), "context": context,
                                            "activated_for": daemon.registry.scope_of(context)})

    @app.get(
        "/v1/energy",
        responses={
            200: {
                "description": "The per-job energy log: JSON, or CSV with `format=csv`.",
                "content": {"application/json": {"schema": {"type": "object"}},
                            "text/csv": {"schema": {"type": "string"}}},
            },
            **errors(422, 503),
        },
    )
    def energy_log(
        request: Request,
        since: Annotated[str | None, Query(min_length=1, description=TIME_BOUND_HELP)] = None,
        until: Annotated[str | None, Query(min_length=1, description=TIME_BOUND_HELP)] = None,
        context: str | None = None,
        block: str | None = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        rows = _daemon(request).store.energy_log(
            since=_parse_time(since, "since"), until=_parse_time(until, "until"), context=context, block=block
        )
        records = [_energy_dict(r.to_dict()) for r in rows]
        if format == "csv":
            return PlainTextResponse(_energy_csv(records), media_type="text/csv")
        return JSONResponse({"units": ENERGY_UNITS, "jobs": records})

    @app.get("/v1/status", responses=errors(503))
    def status(request: Request) -> dict[str, Any]:
        return _status(_daemon(request))

    @app.get(
        "/metrics",
        # Response has no media type, so FastAPI files the JSON errors under application/json, not text/plain.
        response_class=Response,
        responses={200: {"description": "Prometheus text exposition format 0.0.4.",
                         "content": {"text/plain": {"schema": {"type": "string"}}}},
                   **errors(503)},
    )
    def prometheus(request: Request) -> Response:
        return PlainTextResponse(_metrics(_daemon(request)), media_type=metrics.CONTENT_TYPE)


TIME_BOUND_HELP = "Epoch seconds, or an ISO 8601 time with a time zone (e.g. 2024-05-01T12:00:00Z)."


ENERGY_UNITS = {"joules": "J", "net_joules": "J", "seconds": "s", "mean_watts": "W", "peak_watts": "W",
                "baseline_watts": "W", "counter_joules": "J"}
ENERGY_CSV_COLUMNS = ("job_id", "context", "drift_type", "block", "state", "started_at", "finished_at", "seconds",
                      "joules", "net_joules", "mean_watts", "peak_watts", "baseline_watts", "counter_joules",
                      "source", "low_confidence")


async def _read_batch(request: Request, daemon: Daemon, labelled: bool) -> tuple[SampleBatch, bytes]:
    config = daemon.registry.config
    body = await request.body()
    batch = decode_samples(
        body,
        content_type=request.headers.get("content-type", ""),
        params={**dict(request.headers), **dict(request.query_params)},
        input_shape=config.input_shape,
        num_classes=config.num_classes,
        max_batch=daemon.settings.max_batch_samples,
        labelled=labelled,
    )
    return batch, body


def _fingerprint(request: Request, body: bytes) -> str:
    """What makes two requests the same for an idempotency key: method, path, query, content type,
    the ``X-*`` headers that carry sample fields, and the body."""
    digest = hashlib.sha256()
    headers = sorted((k, v) for k, v in request.headers.items() if k.startswith("x-") or k == "content-type")
    for part in (request.method, request.url.path, sorted(request.query_params.multi_items()), headers):
        digest.update(repr(part).encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def _keyed(daemon: Daemon, request: Request, key: str | None, body: BaseModel | None) -> tuple[str, str] | Response | None:
    """For a POST with an idempotency key: the stored answer when the key was used before (a
    replay), else ``(key, fingerprint)`` for :func:`_remember`; None without a key."""
    if key is None:
        return None
    fingerprint = _fingerprint(request, b"" if body is None else body.model_dump_json().encode())
    stored = daemon.store.stored_response(key, fingerprint)
    return (key, fingerprint) if stored is None else _replayed(stored)


def _remember(daemon: Daemon, key: tuple[str, str] | None, status: int, answer: dict[str, Any]) -> Any:
    """Store ``answer`` under the request's idempotency key (if it has one) and return it."""
    if key is not None:
        daemon.store.save_response(*key, status, answer)
    return answer


def _replayed(stored: StoredResponse) -> Response:
    return JSONResponse(stored.body, status_code=stored.status, headers={"Idempotent-Replayed": "true"})


def _energy_dict(record: dict[str, Any]) -> dict[str, Any]:
    details = record.pop("details", None) or {}
    record.pop("trace", None)
    record["notes"] = details.get("notes", [])
    record["source_seconds"] = details.get("source_seconds", {})
    return record


def _energy_csv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ENERGY_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(record)
    return out.getvalue()


def _parse_time(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # float() takes "nan" and "inf", and "1e999" becomes inf: no time, and nan would bind as NULL.
        if not math.isfinite(seconds):
            raise PayloadError(f"{name}: expected a finite number of epoch seconds, got {value[:40]!r}", name)
        return seconds
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(f"{name}: expected epoch seconds or an ISO 8601 time, got {value[:40]!r}", name) from None
    if parsed.tzinfo is None:
        raise PayloadError(f"{name}: give a time zone (e.g. {value}Z or +00:00)", name)
    return parsed.timestamp()


def _last_job_gaps(daemon: Daemon) -> int | None:
    """Meter gaps in the last measured job (None before any job): the meter's health."""
    last = daemon.jobs.last_energy
    return None if last is None else len(last.get("gaps") or ())


def _status(daemon: Daemon) -> dict[str, Any]:
    usage = daemon.store.buffer_usage()
    info = daemon.meter.describe()
    gaps = _last_job_gaps(daemon)
    if gaps is None:
        health = "unknown (no job measured yet)"
    elif gaps:
        health = f"degraded: {gaps} gap(s) in the last job, covered by the estimator"
    else:
        health = "ok"
    running = daemon.jobs.running_job
    registry = daemon.registry
    return {
        # The version the default context is served; `models` has every context's own.
        "model_version": registry.version_for(DEFAULT_CONTEXT),
        "models": {"base": registry.base.version, "default": registry.default_version,
                   "contexts": registry.scope_versions()},
        "buffer": {
            "samples": usage.samples,
            "bytes": usage.bytes,
            "max_samples": daemon.settings.max_buffer_samples,
            "max_bytes": daemon.settings.max_buffer_bytes,
            "max_context_samples": daemon.settings.max_context_samples,
            "max_device_samples": daemon.settings.max_device_samples,
            "fill": max(usage.samples / daemon.settings.max_buffer_samples, usage.bytes / daemon.settings.max_buffer_bytes),
        },
        "running_job": None if running is None else {"id": running, "progress": daemon.jobs.latest_progress},
        "queued_jobs": len(daemon.store.list_jobs(state="queued", limit=1000)),
        "meter": {"kind": info.kind, "model": info.model, "port": info.port, "source": info.source,
                  "estimate": info.is_estimate, "health": health},
        "uptime_seconds": time.time() - daemon.started_at,
    }


def _metrics(daemon: Daemon) -> str:
    store = daemon.store
    usage = store.buffer_usage()
    jobs_by_state = {state: 0 for state in JOB_STATES}
    for job in store.list_jobs(limit=None):
        jobs_by_state[job.state] = jobs_by_state.get(job.state, 0) + 1
    energy = store.energy_log()
    joules_by_block: dict[str, float] = {}
    seconds_by_block: dict[str, float] = {}
    for record in energy:
        block = record.block or "unknown"
        joules_by_block[block] = joules_by_block.get(block, 0.0) + record.joules
        seconds_by_block[block] = seconds_by_block.get(block, 0.0) + record.seconds
    info = daemon.meter.describe()
    writes = store.write_stats()
    meter_up = 0.0 if info.is_estimate or _last_job_gaps(daemon) else 1.0
    families = [
        metrics.MetricFamily("tbftd_samples_buffered", "gauge", "Labelled samples held in the buffer.").add(usage.samples),
        metrics.MetricFamily("tbftd_buffer_bytes", "gauge", "Payload bytes held in the buffer.").add(usage.bytes),
        metrics.MetricFamily("tbftd_jobs", "gauge", "Jobs by state."),
        metrics.MetricFamily("tbftd_energy_joules_total", "counter", "Energy of fine-tuning jobs, by block."),
        metrics.MetricFamily("tbftd_training_seconds_total", "counter", "Wall seconds of fine-tuning jobs, by block."),
        metrics.MetricFamily("tbftd_meter_up", "gauge",
                             "1 when a power meter measured the last job without gaps, 0 for an estimate or gaps.")
        .add(meter_up, source=info.source),
        metrics.MetricFamily("tbftd_model_version", "gauge",
                             "Model version served: the default model, and each context's own by scope.")
        .add(daemon.registry.default_version, scope=""),
        metrics.MetricFamily("tbftd_store_writes_total", "counter", "Writes the store has committed and answered.")
        .add(writes.writes),
        metrics.MetricFamily("tbftd_store_commits_total", "counter",
                             "Store transactions committed, each one fsync of the write-ahead log (group commit "
                             "puts the writes that queue up together into one).").add(writes.commits),
    ]
    for scope, version in daemon.registry.scope_versions().items():
        families[6].add(version, scope=scope)
    for state, count in jobs_by_state.items():
        families[2].add(count, state=state)
    for block, joules in sorted(joules_by_block.items()):
        families[3].add(joules, block=block)
        families[4].add(seconds_by_block[block], block=block)
    return metrics.render(families)
