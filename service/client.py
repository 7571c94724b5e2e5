"""A typed Python client of the tbftd HTTP API, for IoT devices and operators.

::

    from service.client import TbftdClient

    client = TbftdClient("http://192.168.1.20:8470")            # token from $TBFTD_API_TOKEN
    client.post_samples(images, labels, context="cam-1", device_id="cam-1")
    hint = client.post_drift("input", context="cam-1")
    if hint["job"]:
        job = client.wait_for_job(hint["job"]["id"], timeout_seconds=600)
        print(job["state"], job["energy"]["joules"], job["energy"]["source"])

It speaks HTTP with the standard library (``urllib.request``), not httpx: httpx is only a test
extra of tbftd, and a device that posts samples should need nothing beyond Python and numpy.
Samples travel as ``application/octet-stream`` (raw little-endian bytes, dtype, shape and labels
in the query), the cheapest form for the daemon to decode; ``form="json"`` sends base64 JSON.

Retries: a request is retried, with exponential backoff and jitter, after a connection error
(refused, reset, timed out) or a 502, 503 or 504 answer, never after any other status. A 4xx
answer raises :class:`ClientError` with the daemon's message; other 5xx answers raise
:class:`ServerError`; a daemon still unreachable after the retries raises
:class:`DaemonUnreachable`.

**Duplicates.** Every POST carries an ``Idempotency-Key`` header, a random key made once per
call and sent again with each retry of it. When the daemon committed a POST but its answer was
lost (the connection broke or timed out after the request was sent), the retry is answered with
the first answer (``replayed`` true for samples) and nothing is stored twice. A refused
connection never reached the daemon, so retrying it is always safe.

Must not import torch, fastapi or httpx.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.client import HTTPException
from typing import Any, Literal, overload

import numpy as np

from service.payloads import RAW_MEDIA_TYPE, encode_json_batch, encode_raw_batch

#: Where the daemon listens by default (``tbftd serve``'s host and port).
DEFAULT_URL = "http://127.0.0.1:8470"
#: Environment variable holding the bearer token when none is given.
TOKEN_VARIABLE = "TBFTD_API_TOKEN"
#: Samples per POST by default: well under the daemon's default ``max_batch_samples`` (1024) and,
#: for 3×32×32 uint8 images, 0.8 MB a request with a label list of about 500 characters in the URL.
DEFAULT_BATCH_SAMPLES = 256
#: Statuses answered while the daemon is behind a proxy that lost it, or overloaded: worth a retry.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Job states after which a job never changes again.
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


class TbftdError(Exception):
    """Anything that went wrong talking to the daemon."""


class DaemonUnreachable(TbftdError):
    """No answer from the daemon after every retry: ``url`` and the last ``reason``."""

    def __init__(self, url: str, reason: str, attempts: int) -> None:
        super().__init__(f"no daemon at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.attempts = attempts


class ResponseError(TbftdError):
    """The daemon answered with an error status.

    ``status`` is the HTTP status, ``message`` the daemon's ``error`` text, ``field`` the field it
    names (or None) and ``body`` the decoded JSON answer (or the raw text).
    """

    def __init__(self, status: int, message: str, field: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.field = field
        self.body = body


class ClientError(ResponseError):
    """A 4xx answer: the request was wrong (never retried)."""


class ServerError(ResponseError):
    """A 5xx answer: 507 (buffer full), 500, or 502/503/504 still failing after the retries."""


class JobWaitTimeout(TbftdError, TimeoutError):
    """:meth:`TbftdClient.wait_for_job` gave up; ``job`` is the last state seen."""

    def __init__(self, job: dict[str, Any], timeout_seconds: float) -> None:
        super().__init__(f"job {job.get('id')} still {job.get('state')} after {timeout_seconds:g} s")
        self.job = job


@dataclass(frozen=True)
class RetryAttempt:
    """A failed attempt about to be retried: passed to the ``on_retry`` hook."""

    method: str
    path: str
    attempt: int  #: 1 for the first failure
    delay_seconds: float  #: how long the client sleeps before the next attempt
    reason: str


@dataclass(frozen=True)
class PostResult:
    """What :meth:`TbftdClient.post_samples` did.

    ``accepted`` samples were stored in ``batches`` POSTs (``batch_sizes`` samples each), with ids
    ``first_id``..``last_id``; ``context_samples`` is how many the context holds now; ``evicted``
    counts samples the daemon dropped elsewhere to make room; ``job`` is a job a waiting drift hint
    started (the daemon's job dict), else None. ``replies`` are the daemon's answers, one a batch.
    """

    context: str
    accepted: int
    batches: int
    batch_sizes: list[int]
    first_id: int
    last_id: int
    context_samples: int
    evicted: int
    job: dict[str, Any] | None
    replies: list[dict[str, Any]] = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    """What :meth:`TbftdClient.predict` answered: ``classes`` (N,) int64, ``probabilities`` (N, K)
    float32, from model ``model_version`` (the last batch's, should it change in between)."""

    model_version: int
    classes: np.ndarray
    probabilities: np.ndarray


TimeBound = float | int | datetime | str


class TbftdClient:
    """A client of one daemon. See the module docstring for retries and their caveat.

    ``url`` is the daemon's base URL; ``token`` the bearer token (default: ``$TBFTD_API_TOKEN``,
    none when unset or empty); ``timeout_seconds`` bounds each attempt; ``retries`` is how many
    times a failed request is tried again, the n-th after ``backoff_seconds · 2^(n−1)`` (at most
    ``max_backoff_seconds``) scaled by a random factor in [0.5, 1] so that many devices do not
    retry in step. ``on_retry`` is called before each retry (for logs, or tests counting them).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_seconds: float = 30.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        on_retry: Callable[[RetryAttempt], None] | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if timeout_seconds <= 0 or backoff_seconds < 0:
            raise ValueError("timeout_seconds must be positive and backoff_seconds not negative")
        self.url = url.rstrip("/")
        self.token = token if token is not None else (os.environ.get(TOKEN_VARIABLE) or None)
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.on_retry = on_retry
        self._random = random.Random()
        # No proxies from the environment: the daemon sits on loopback or the device's LAN, and an
        # http_proxy meant for the internet would swallow requests to 127.0.0.1.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- samples and hints ------------------------------------------------------------------------

    def post_samples(
        self,
        x: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        context: str = "default",
        device_id: str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SAMPLES,
        form: Literal["raw", "json"] = "raw",
    ) -> PostResult:
        """Store labelled samples ``x`` (N, C, H, W), uint8 or float32 in [0, 1], in ``context``.

        The batch is sent in consecutive POSTs of at most ``batch_size`` samples (keep it within
        the daemon's ``max_batch_samples``, 1024 by default), in order; a failure stops at that
        batch, the earlier ones staying stored. Raises :class:`~service.payloads.PayloadError`
        (a ValueError) before sending anything if ``x`` or ``labels`` cannot be encoded.
        """
        array = np.asarray(x)
        label_array = np.asarray(labels).reshape(-1)
        if array.ndim != 4 or len(label_array) != len(array) or len(array) == 0:
            raise ValueError(f"expected N >= 1 samples (N, C, H, W) and N labels; got x of shape "
                             f"{array.shape} and {len(label_array)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        replies = []
        for start in range(0, len(array), batch_size):
            chunk, chunk_labels = array[start : start + batch_size], label_array[start : start + batch_size]
            if form == "json":
                body = encode_json_batch(chunk, chunk_labels, context, device_id)
                replies.append(self._request("POST", "/v1/samples", json_body=body))
            else:
                data, params = encode_raw_batch(chunk, chunk_labels, context, device_id)
                replies.append(self._request("POST", "/v1/samples", params=params, body=data,
                                             content_type=RAW_MEDIA_TYPE))
        last = replies[-1]
        job = next((r["job"] for r in reversed(replies) if r.get("job")), None)
        return PostResult(
            context=last["context"],
            accepted=sum(r["accepted"] for r in replies),
            batches=len(replies),
            batch_sizes=[r["accepted"] for r in replies],
            first_id=replies[0]["first_id"],
            last_id=last["last_id"],
            context_samples=last["context_samples"],
            evicted=sum(r.get("evicted", 0) for r in replies),
            job=job,
            replies=replies,
        )

    def post_drift(self, drift_type: str, context: str = "default", min_samples: int | None = None) -> dict[str, Any]:
        """Send a drift hint: ``drift_type`` is ``input``, ``feature``, ``output``, ``auto`` (where the
        daemon supports detecting it), ``full``, ``bn`` or a block. Returns ``{"status": "scheduled"|"merged"|"waiting for samples", "hint",
        "job" (a job dict or None), "context_samples", "min_samples"}``."""
        body: dict[str, Any] = {"type": drift_type, "context": context}
        if min_samples is not None:
            body["min_samples"] = min_samples
        return self._request("POST", "/v1/drift", json_body=body)

    # -- jobs -------------------------------------------------------------------------------------

    def submit_job(self, context: str = "default", *, block: str | None = None,
                   drift_type: str | None = None) -> dict[str, Any]:
        """Queue a job now on ``context``'s samples, naming exactly one of ``block`` or
        ``drift_type``. Returns the job dict (409 :class:`ClientError` if one is pending)."""
        if (block is None) == (drift_type is None):
            raise ValueError("give exactly one of block or drift_type")
        body = {"context": context, **({"block": block} if block else {"drift_type": drift_type})}
        return self._request("POST", "/v1/jobs", json_body=body)

    def job(self, job_id: int) -> dict[str, Any]:
        """One job: ``id``, ``context``, ``state``, ``block``, ``drift_type``, ``progress`` (epoch,
        epochs, batch, batches, loss, samples_per_second, phase), ``accuracy_before``/``_after``
        (validation fractions), ``model_version_in``/``_out``, ``decision``, ``error``, and
        ``energy`` (joules, net_joules, seconds, mean_watts, peak_watts, source, … or None)."""
        return self._request("GET", f"/v1/jobs/{int(job_id)}")

    def jobs(self, state: str | None = None, context: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs, newest first, with the fields of :meth:`job`."""
        params = _params(state=state, context=context, limit=limit)
        return self._request("GET", "/v1/jobs", params=params)["jobs"]

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued job, or ask a running one to stop at its next batch
        (``cancel_requested`` is then true). 409 :class:`ClientError` for a finished job."""
        return self._request("DELETE", f"/v1/jobs/{int(job_id)}")

    def wait_for_job(
        self,
        job_id: int,
        timeout_seconds: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        poll_seconds: float = 0.5,
    ) -> dict[str, Any]:
        """Poll a job until it is no longer queued or running and return it (as :meth:`job`).

        ``on_progress`` gets the job dict at every poll, the last one included. Raises
        :class:`JobWaitTimeout` after ``timeout_seconds`` (None: wait as long as it takes).
        """
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in FINISHED_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobWaitTimeout(job, timeout_seconds or 0.0)
            time.sleep(poll_seconds)

    def power(self, job_id: int) -> dict[str, Any]:
        """A job's power trace: ``{"job_id", "units", "baseline_watts", "source", "points":
        [{"t_seconds", "watts", "source"}, …]}``."""
        return self._request("GET", f"/v1/jobs/{int(job_id)}/power")

    # -- models -----------------------------------------------------------------------------------

    def predict(self, x: np.ndarray, context: str = "default", *, batch_size: int = DEFAULT_BATCH_SAMPLES) -> Prediction:
        """Classes and probabilities of ``context``'s model for images ``x`` (N, C, H, W), sent in
        POSTs of at most ``batch_size`` images."""
        array = np.asarray(x)
        if array.ndim != 4 or len(array) == 0:
            raise ValueError(f"expected N >= 1 images (N, C, H, W), got shape {array.shape}")
        classes, probabilities, version = [], [], 0
        for start in range(0, len(array), max(1, batch_size)):
            data, params = encode_raw_batch(array[start : start + batch_size], context=context)
            reply = self._request("POST", "/v1/predict", params=params, body=data, content_type=RAW_MEDIA_TYPE)
            classes.append(np.asarray(reply["classes"], dtype=np.int64))
            probabilities.append(np.asarray(reply["probabilities"], dtype=np.float32))
            version = int(reply["model_version"])
        return Prediction(version, np.concatenate(classes), np.concatenate(probabilities))

    def models(self, context: str = "default") -> dict[str, Any]:
        """``context``'s model: ``{"context", "scope", "active": version, "default", "base",
        "contexts": {scope: version}, "versions": [{"version", "scope", "delta_of", "parent_version",
        "job_id", "created_at", "accuracy", "active", "notes", "path"}, …]}`` (the versions of its
        scope and the base)."""
        return self._request("GET", "/v1/models", params={"context": context})

    def activate(self, version: int, context: str = "default") -> dict[str, Any]:
        """Serve ``version`` to ``context`` (rollback or roll forward); returns that version."""
        return self._request("POST", f"/v1/models/{int(version)}/activate", params={"context": context})

    # -- energy and status ------------------------------------------------------------------------

    @overload
    def energy(self, since: TimeBound | None = None, until: TimeBound | None = None, context: str | None = None,
               block: str | None = None, csv: Literal[False] = False) -> dict[str, Any]: ...

    @overload
    def energy(self, since: TimeBound | None = None, until: TimeBound | None = None, context: str | None = None,
               block: str | None = None, *, csv: Literal[True]) -> str: ...

    def energy(
        self,
        since: TimeBound | None = None,
        until: TimeBound | None = None,
        context: str | None = None,
        block: str | None = None,
        csv: bool = False,
    ) -> dict[str, Any] | str:
        """The per-job energy log, oldest first: ``{"units", "jobs": [{"job_id", "context",
        "block", "drift_type", "state", "started_at", "finished_at", "seconds", "joules",
        "net_joules", "mean_watts", "peak_watts", "baseline_watts", "counter_joules", "source",
        "low_confidence", "notes", …}]}``, or the CSV text with ``csv=True``.

        ``since``/``until`` bound when a job's energy was recorded: epoch seconds, an aware
        datetime, or an ISO 8601 string with a time zone.
        """
        params = _params(since=_time_param(since), until=_time_param(until), context=context, block=block,
                         format="csv" if csv else None)
        return self._request("GET", "/v1/energy", params=params, expect_json=not csv)

    def status(self) -> dict[str, Any]:
        """``{"model_version", "buffer": {samples, bytes, max_samples, max_bytes, fill},
        "running_job": {id, progress} | None, "queued_jobs", "meter": {kind, model, port, source,
        estimate, health}, "uptime_seconds"}``."""
        return self._request("GET", "/v1/status")

    def healthz(self) -> dict[str, Any]:
        """``{"status": "ok"}`` when the daemon serves (needs no token)."""
        return self._request("GET", "/healthz")

    # -- the wire ---------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        expect_json: bool = True,
    ) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = {"Accept": "application/json"}
        if method == "POST":  # one key for every attempt of this call: a retry is answered, not done again
            headers["Idempotency-Key"] = uuid.uuid4().hex
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in self._attempts():
            request = urllib.request.Request(url, data=body, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=self.timeout_seconds) as response:
                    text = response.read().decode("utf-8")
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, _read_error_body(exc)
                if status in RETRY_STATUSES and attempt.retry_left:
                    attempt.failed(method, path, f"HTTP {status}")
                    continue
                raise _response_error(status, answer) from None
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                reason = _connection_reason(exc)
                if attempt.retry_left:
                    attempt.failed(method, path, reason)
                    continue
                raise DaemonUnreachable(self.url, reason, attempt.number) from None
            return json.loads(text) if expect_json else text
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempts(self) -> Iterator[_Attempt]:
        for number in range(1, self.retries + 2):
            yield _Attempt(self, number)


class _Attempt:
    """One try of a request; :meth:`failed` reports it and sleeps the backoff before the next."""

    def __init__(self, client: TbftdClient, number: int) -> None:
        self.client = client
        self.number = number
        self.retry_left = number <= client.retries

    def failed(self, method: str, path: str, reason: str) -> None:
        client = self.client
        ceiling = min(client.max_backoff_seconds, client.backoff_seconds * 2 ** (self.number - 1))
        delay = ceiling * client._random.uniform(0.5, 1.0)
        if client.on_retry is not None:
            client.on_retry(RetryAttempt(method, path, self.number, delay, reason))
        time.sleep(delay)


def _params(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _time_param(value: TimeBound | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"give an aware datetime (with tzinfo), got {value!r}")
        return repr(value.timestamp())
    return repr(float(value))


def _read_error_body(exc: urllib.error.HTTPError) -> Any:
    try:
        text = exc.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    finally:
        exc.close()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _response_error(status: int, answer: Any) -> ResponseError:
    if isinstance(answer, dict):
        message, field_name = str(answer.get("error") or answer), answer.get("field")
    else:
        message, field_name = (str(answer).strip() or "no message"), None
    cls = ClientError if 400 <= status < 500 else ServerError
    return cls(status, message, field_name, answer)


def _connection_reason(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = getattr(reason, "strerror", None) or str(reason)
    return text or type(reason).__name__
