"""The durable store: samples, drift hints, jobs, per-job energy and power traces, model versions.

One SQLite file, opened through sqlite-utils, in WAL mode with ``synchronous=FULL``: every commit
fsyncs the write-ahead log, so what a write returned is on stable storage and survives a power
cut (``NORMAL`` would leave the last commits in the page cache until the next checkpoint).

Threads: every write runs on one dedicated writer thread, fed by a queue; the caller blocks until
the transaction holding its changes has committed. Writes that queue up while the writer is busy
are committed together (group commit): one ``BEGIN IMMEDIATE`` transaction, each write in its own
savepoint so a failing one rolls back alone, one commit and one fsync for all of them, then every
caller is answered. Under load that turns one fsync per request into one per group, which is what
an SD card can afford. Reads run on per-thread read-only connections (FastAPI runs ``def``
endpoints in a thread pool and a connection must stay on one thread); WAL lets them read while
the writer writes. Operators may browse the same file with ``sqlite-utils`` or ``datasette``
meanwhile.

The sample buffer has a capacity (samples and payload bytes). A batch that would overflow it
first evicts the oldest samples of contexts that have no pending (queued or running) job; if that
is not enough the batch is refused with :class:`BufferFull` and nothing is dropped.

Must not import torch: the store lives in the daemon's light API process.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from queue import Empty, SimpleQueue
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import numpy as np
from sqlite_utils import Database

from service.eviction import BufferFull, BufferLimits, Eviction, QuotaExceeded, StoreRefusal, make_room

__all__ = ["BufferFull", "QuotaExceeded", "StoreRefusal"]  # the refusals add_samples raises, re-exported

T = TypeVar("T")

#: Bumped with each entry appended to ``_MIGRATIONS``; stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 2

JOB_STATES: tuple[str, ...] = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted",
)  # fmt: skip
#: States of a job that still needs its context's samples: they protect them from eviction.
PENDING_STATES: tuple[str, ...] = ("queued", "running")
FINISHED_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "interrupted")

DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
#: Most queued writes one transaction commits together: bounds how long a write waits behind
#: others and how much one rollback undoes.
MAX_GROUP_WRITES = 64
#: The error recorded on a job that was running when the daemon stopped.
INTERRUPTED_ERROR = "interrupted: the daemon stopped while the job was running"

_STATES_SQL = ", ".join(f"'{s}'" for s in JOB_STATES)
_PENDING_SQL = ", ".join(f"'{s}'" for s in PENDING_STATES)

# Each entry migrates from user_version i to i + 1 and runs in one transaction with the bump.
# Statements are idempotent (IF NOT EXISTS) so a half-known database is repaired, not rejected.
# Times are REAL seconds since the Unix epoch (UTC); JSON columns hold compact JSON text.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS samples (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: jobs record sample ids
            context TEXT NOT NULL,
            device_id TEXT,
            label INTEGER NOT NULL,
            dtype TEXT NOT NULL,                    -- numpy dtype name; payload is little-endian
            shape TEXT NOT NULL,                    -- JSON list, one sample's shape
            payload BLOB NOT NULL,
            payload_bytes INTEGER NOT NULL,         -- length(payload), for capacity sums
            created_at REAL NOT NULL
        )""",
        # Covers per-context counts and byte sums without reading the payload pages.
        "CREATE INDEX IF NOT EXISTS samples_by_context ON samples (context, id, payload_bytes)",
        f"""CREATE TABLE IF NOT EXISTS jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            context TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ({_STATES_SQL})),
            block TEXT,
            drift_type TEXT,
            requested_by TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            progress TEXT,
            accuracy_before REAL,
            accuracy_after REAL,
            error TEXT,
            model_version_in INTEGER,
            model_version_out INTEGER,
            decision TEXT,
            evidence TEXT,
            sample_ids TEXT,
            sample_count INTEGER,
            min_samples INTEGER,
            params TEXT,
            retry_of INTEGER REFERENCES jobs (id)
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id)",
        "CREATE INDEX IF NOT EXISTS jobs_by_context ON jobs (context, state)",
        """CREATE TABLE IF NOT EXISTS drift_hints (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            context TEXT NOT NULL,
            drift_type TEXT,
            block TEXT,
            min_samples INTEGER,
            created_at REAL NOT NULL,
            job_id INTEGER REFERENCES jobs (id)     -- NULL while the hint waits for samples
        )""",
        "CREATE INDEX IF NOT EXISTS drift_hints_by_context ON drift_hints (context, job_id)",
        """CREATE TABLE IF NOT EXISTS energy (
            job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
            joules REAL NOT NULL,
            net_joules REAL,
            seconds REAL NOT NULL,
            mean_watts REAL,
            peak_watts REAL,
            baseline_watts REAL,
            source TEXT NOT NULL,
            counter_joules REAL,
            low_confidence INTEGER NOT NULL DEFAULT 0,
            samples INTEGER NOT NULL DEFAULT 0,
            gaps TEXT,
            details TEXT,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS energy_by_time ON energy (created_at)",
        # One row per job: the readings as float64 arrays and the source as runs (see save_energy).
        """CREATE TABLE IF NOT EXISTS power_traces (
            job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
            points INTEGER NOT NULL,
            t_seconds BLOB NOT NULL,                -- float64 little-endian, seconds since start
            watts BLOB NOT NULL,                    -- float64 little-endian
            source_runs TEXT NOT NULL               -- JSON [[first_index, source], ...]
        )""",
        """CREATE TABLE IF NOT EXISTS model_versions (
            version INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: /predict reports it
            path TEXT NOT NULL,
            parent_version INTEGER,
            job_id INTEGER REFERENCES jobs (id),
            created_at REAL NOT NULL,
            accuracy TEXT,
            active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
            notes TEXT
        )""",
        # At most one active version, enforced by SQLite itself; activate() keeps it exactly one.
        "CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_active "
        "ON model_versions (active) WHERE active = 1",
    ),
    (
        # A version belongs to one model scope: the context it was trained for, or the model group
        # (settings.model_groups) that context shares; NULL for the base and for versions made
        # before per-context models. delta_of: the full version its file is a delta of.
        # ALTER TABLE has no IF NOT EXISTS; the migration's single transaction makes it safe.
        "ALTER TABLE model_versions ADD COLUMN scope TEXT",
        "ALTER TABLE model_versions ADD COLUMN delta_of INTEGER REFERENCES model_versions (version)",
        "CREATE INDEX IF NOT EXISTS model_versions_by_scope ON model_versions (scope, version)",
        # The active version of each scope; a scope without a row serves the default (active = 1).
        """CREATE TABLE IF NOT EXISTS scope_models (
            scope TEXT PRIMARY KEY,
            version INTEGER NOT NULL REFERENCES model_versions (version),
            activated_at REAL NOT NULL
        )""",
        "ALTER TABLE drift_hints ADD COLUMN expired_at REAL",  # set when a waiting hint timed out
        """CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,              -- sha256 of the request it answered
            status INTEGER NOT NULL,
            response TEXT NOT NULL,                 -- JSON body answered
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS idempotency_keys_by_time ON idempotency_keys (created_at)",
        # Covers per-device counts for the device quota.
        "CREATE INDEX IF NOT EXISTS samples_by_device ON samples (device_id, id, payload_bytes)",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class StoreError(Exception):
    """Base of the store's errors."""


class StoreClosed(StoreError):
    """The store was used after :meth:`Store.close`."""


class NotFound(StoreError, LookupError):
    """No job, hint or model version with that id."""


class MixedSamples(StoreError, ValueError):
    """A batch whose dtype or sample shape differs from the samples its context already holds: a
    job stacks a context's samples into one array, so such a context could never be trained.
    Nothing was written; the API answers 409."""


class IdempotencyConflict(StoreError, ValueError):
    """An ``Idempotency-Key`` already used for a different request (the API answers 422)."""


@dataclass(frozen=True)
class WriteStats:
    """What the writer has done since the store opened: writes answered, transactions committed
    (each one fsync of the write-ahead log), and the largest group committed at once."""

    writes: int
    commits: int
    largest_group: int


class BufferUsage(NamedTuple):
    """How much of the sample buffer is in use."""

    samples: int
    bytes: int


@dataclass(frozen=True)
class AddResult:
    """What :meth:`Store.add_samples` did: the new ids, and what it evicted to make room and why.

    ``replayed`` is True when an idempotency key had already stored this batch: nothing was
    written, and the rest describes the first time.
    """

    ids: list[int]
    evicted: int
    evicted_contexts: dict[str, int]
    usage: BufferUsage
    evictions: list[Eviction] = field(default_factory=list)
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what an idempotency key stores)."""
        return {"ids": self.ids, "evicted": self.evicted, "evicted_contexts": self.evicted_contexts,
                "usage": list(self.usage), "evictions": [e.to_dict() for e in self.evictions]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, replayed: bool) -> AddResult:
        """Inverse of :meth:`to_dict`."""
        return cls(ids=list(data["ids"]), evicted=int(data["evicted"]), evicted_contexts=dict(data["evicted_contexts"]),
                   usage=BufferUsage(*data["usage"]), evictions=[Eviction(**e) for e in data["evictions"]],
                   replayed=replayed)


@dataclass(frozen=True)
class StoredResponse:
    """What an idempotency key answered the first time: the request's fingerprint, status, body."""

    fingerprint: str
    status: int
    body: Any


@dataclass(frozen=True)
class Job:
    """A fine-tuning job. Times are seconds since the Unix epoch; accuracies fractions (0..1)."""

    id: int
    context: str
    state: str
    block: str | None
    drift_type: str | None
    requested_by: str | None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    error: str | None = None
    model_version_in: int | None = None
    model_version_out: int | None = None
    decision: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    sample_ids: list[int] | None = None
    sample_count: int | None = None
    min_samples: int | None = None
    params: dict[str, Any] | None = None
    retry_of: int | None = None

    @property
    def pending(self) -> bool:
        """Whether the job is queued or running."""
        return self.state in PENDING_STATES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class Hint:
    """A drift hint; ``job_id`` is None while it waits for its context to hold enough samples."""

    id: int
    context: str
    drift_type: str | None
    block: str | None
    min_samples: int | None
    created_at: float
    job_id: int | None
    expired_at: float | None = None

    @property
    def state(self) -> str:
        """``scheduled`` (linked to a job), ``expired`` (timed out waiting) or ``waiting``."""
        if self.job_id is not None:
            return "scheduled"
        return "expired" if self.expired_at is not None else "waiting"

    def expires_at(self, expiry_seconds: float) -> float | None:
        """When a waiting hint expires (epoch seconds) under ``hint_expiry_seconds``; None otherwise."""
        return self.created_at + expiry_seconds if self.state == "waiting" else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary, with the hint's ``state``."""
        return {**asdict(self), "state": self.state}


@dataclass(frozen=True)
class ModelVersion:
    """A stored model version; ``path`` is its file, ``accuracy`` free-form JSON.

    ``scope`` is the context (or model group) whose history it belongs to, None for the base;
    ``delta_of`` the full version its file is a delta of (None: a full checkpoint). ``active``
    marks the default model, which scopes without a model of their own serve.
    """

    version: int
    path: str
    parent_version: int | None
    job_id: int | None
    created_at: float
    accuracy: dict[str, Any] | None
    active: bool
    notes: str | None
    scope: str | None = None
    delta_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class EnergyRecord:
    """One row of the energy log: a job's energy with the job's context, block and drift type."""

    job_id: int
    context: str
    state: str
    block: str | None
    drift_type: str | None
    started_at: float | None
    finished_at: float | None
    joules: float
    net_joules: float | None
    seconds: float
    mean_watts: float | None
    peak_watts: float | None
    baseline_watts: float | None
    source: str
    counter_joules: float | None
    low_confidence: bool
    samples: int
    gaps: list[Any] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


class TracePoint(NamedTuple):
    """One power reading of a job: seconds since the job started, watts, what measured it."""

    t_seconds: float
    watts: float
    source: str


# Job columns update_job may change, and which of them hold JSON.
_JOB_MUTABLE = frozenset(
    {
        "state", "block", "drift_type", "started_at", "finished_at", "progress",
        "accuracy_before", "accuracy_after", "error", "model_version_in", "model_version_out",
        "decision", "evidence", "sample_ids", "sample_count", "min_samples", "params",
    }
)  # fmt: skip
_JOB_JSON = frozenset({"progress", "decision", "evidence", "sample_ids", "params"})
# Energy summary keys with their own column; the rest of a summary goes to ``details``.
_ENERGY_SELECT = (
    "SELECT e.*, j.context, j.state, j.block, j.drift_type, j.started_at, j.finished_at "
    "FROM energy e JOIN jobs j ON j.id = e.job_id"
)
_ENERGY_COLUMNS = (
    "joules", "net_joules", "seconds", "mean_watts", "peak_watts", "baseline_watts", "source",
    "counter_joules", "low_confidence", "samples",
)  # fmt: skip


class Store:
    """The daemon's SQLite store. Open with :meth:`open`; close with :meth:`close` (or ``with``).

    Safe to call from any thread. ``limits`` bound the sample buffer and set its quotas
    (:mod:`service.eviction`). ``clock`` gives the times recorded in rows (seconds since the epoch).
    """

    def __init__(
        self,
        path: Path,
        *,
        limits: BufferLimits,
        busy_timeout_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        # Use Store.open(): this only sets fields; open() starts the writer.
        self.path = path
        self.limits = limits
        self.busy_timeout_seconds = busy_timeout_seconds
        self.clock = clock
        self._queue: SimpleQueue[_Task | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._readers: dict[threading.Thread, Database] = {}
        self._writer_thread = threading.Thread(
            target=self._run_writer, name=f"store-writer:{path.name}", daemon=True
        )
        self._writer_ready: Future[None] = Future()
        # Written by the writer thread only; read racily by stats(), which is fine for counters.
        self._writes = 0
        self._commits = 0
        self._largest_group = 0

    # --- life cycle ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        max_samples: int | None = None,
        max_bytes: int | None = None,
        max_context_samples: int | None = None,
        max_device_samples: int | None = None,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Open (creating or migrating) the database at ``path`` and start the writer thread.

        ``max_samples``/``max_bytes`` bound the buffer, ``max_context_samples`` and
        ``max_device_samples`` are the quotas (None: no limit). The parent directory is created if
        needed. A database from a newer tbftd (higher schema version) is refused with :class:`StoreError`.
        """
        path = Path(path)
        limits = BufferLimits(max_samples, max_bytes, max_context_samples, max_device_samples)
        for name, limit in vars(limits).items():
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1, got {limit}")
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(
            path,
            limits=limits,
            busy_timeout_seconds=busy_timeout_seconds,
            clock=clock,
        )
        store._writer_thread.start()
        try:
            store._writer_ready.result()
        except BaseException:
            store._writer_thread.join()
            raise
        return store

    def close(self) -> None:
        """Finish queued writes, stop the writer thread and close every connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Under the lock, so no write can be queued behind the sentinel and wait forever.
            self._queue.put(None)
        self._writer_thread.join()
        with self._lock:
            readers, self._readers = list(self._readers.values()), {}
        for db in readers:
            db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def writer_thread(self) -> threading.Thread:
        """The thread all writes run on (exposed so tests can check it ends with the store)."""
        return self._writer_thread

    # --- the writer and the readers --------------------------------------------------------------

    def write(self, fn: Callable[[Database], T]) -> T:
        """Run ``fn(db)`` on the writer thread; return its result once its changes are committed
        and on stable storage.

        ``fn`` may share its transaction with other queued writes (group commit), inside a
        savepoint of its own: an exception in ``fn`` undoes exactly its changes and is raised
        here. For composite writes the typed methods do not cover; ``fn`` must not call back into
        the store, nor commit or roll back itself.
        """
        if threading.current_thread() is self._writer_thread:
            raise RuntimeError("Store.write() called from inside a write: it would deadlock")
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            self._queue.put(_Task(fn, future))
        return future.result()

    def read(self, fn: Callable[[Database], T]) -> T:
        """Run ``fn(db)`` on this thread's read-only connection."""
        return fn(self._reader())

    def _connect(self, *, read_only: bool) -> sqlite3.Connection:
        if read_only:
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, timeout=self.busy_timeout_seconds, check_same_thread=False
            )
        else:
            # check_same_thread=False only so close() can close a connection whose thread is gone;
            # each connection is still used by one thread at a time.
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_seconds, check_same_thread=False
            )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_seconds * 1000)}")
        return conn

    def _reader(self) -> Database:
        thread = threading.current_thread()
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is closed")
            db = self._readers.get(thread)
            if db is not None:
                return db
            # Close the connections of threads that have ended (a pool may replace its workers),
            # so their number stays bounded by the live threads.
            for dead in [t for t in self._readers if not t.is_alive()]:
                self._readers.pop(dead).close()
            conn = self._connect(read_only=True)
            db = Database(conn, recursive_triggers=False, execute_plugins=False)
            self._readers[thread] = db
            return db

    def _run_writer(self) -> None:
        try:
            conn = self._connect(read_only=False)
        except BaseException as exc:
            self._writer_ready.set_exception(exc)
            return
        try:
            db = Database(conn, execute_plugins=False)
            db.enable_wal()
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            self._migrate(db)
        except BaseException as exc:
            conn.close()
            self._writer_ready.set_exception(exc)
            return
        self._writer_ready.set_result(None)
        try:
            stopping = False
            while not stopping and (task := self._queue.get()) is not None:
                group = [task]
                while len(group) < MAX_GROUP_WRITES:
                    try:
                        queued = self._queue.get_nowait()
                    except Empty:
                        break
                    if queued is None:  # close(): commit what came before, then stop
                        stopping = True
                        break
                    group.append(queued)
                self._commit_group(db, [t for t in group if t.future.set_running_or_notify_cancel()])
        finally:
            conn.close()

    def _commit_group(self, db: Database, group: list[_Task]) -> None:
        """Commit ``group`` in one transaction and answer each caller only after the commit.

        Should the transaction itself fail (the commit, or a write whose error ends the whole
        transaction, as SQLITE_FULL may), nothing of it was kept and the writes run again one
        transaction each, so that each caller gets the outcome of its own write alone.
        """
        if not group:
            return
        outcomes: list[tuple[bool, Any]] = []
        conn = db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for task in group:
                conn.execute("SAVEPOINT write")
                try:
                    value = task.fn(db)
                except Exception as exc:
                    if not conn.in_transaction:
                        raise
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE write")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except BaseException:  # noqa: BLE001 - each write is run again and gets its own outcome
            db.rollback()
            outcomes = [self._commit_alone(db, task) for task in group]
        else:
            self._commits += 1
        self._writes += len(group)
        self._largest_group = max(self._largest_group, len(group))
        for task, (ok, value) in zip(group, outcomes):
            if ok:
                task.future.set_result(value)
            else:  # handed to the caller, who re-raises it
                task.future.set_exception(value)

    def _commit_alone(self, db: Database, task: _Task) -> tuple[bool, Any]:
        try:
            value = _in_transaction(db, task.fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            return False, exc
        self._commits += 1
        return True, value

    @property
    def queued_writes(self) -> int:
        """Writes waiting for the writer thread now (they go into the next group)."""
        return self._queue.qsize()

    def write_stats(self) -> WriteStats:
        """Writes answered and transactions committed so far (see :class:`WriteStats`)."""
        return WriteStats(self._writes, self._commits, self._largest_group)

    def _migrate(self, db: Database) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this tbftd's "
                f"({SCHEMA_VERSION}); upgrade tbftd or use another data directory"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):

            def migrate(db: Database, target: int = target) -> None:
                for statement in _MIGRATIONS[target - 1]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

            _in_transaction(db, migrate)

    def connection_settings(self) -> dict[str, Any]:
        """The writer connection's journal mode, synchronous level, busy timeout (ms), foreign
        keys and schema version, as SQLite reports them (for tests and ``/v1/status``)."""

        def pragmas(db: Database) -> dict[str, Any]:
            names = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys", "user_version")
            return {name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        # Runs on the writer thread (a write task that writes nothing): synchronous and
        # busy_timeout are per connection, and the writer's are the ones that matter.
        return self.write(pragmas)

    # --- samples ---------------------------------------------------------------------------------

    def add_samples(
        self,
        context: str,
        device_id: str | None,
        labels: Sequence[int] | np.ndarray,
        payloads: np.ndarray,
        *,
        idempotency: tuple[str, str] | None = None,
    ) -> AddResult:
        """Store a batch atomically: ``payloads[i]`` (any numeric dtype) labelled ``labels[i]``.

        Arrays are stored little-endian with their dtype and shape and come back bit-exact from
        :meth:`load_samples`. Makes room under the buffer's quotas and capacity
        (:mod:`service.eviction`), raising :class:`QuotaExceeded` or :class:`BufferFull` (nothing
        written) when it cannot, and :class:`MixedSamples` for a batch of another dtype or shape than
        the context holds. ``idempotency`` is ``(key, request fingerprint)``: a key already used for
        the same request returns the first result with ``replayed`` set and writes nothing; for
        another request it raises :class:`IdempotencyConflict`. The key is stored in the batch's
        own transaction, so a batch is never stored twice, even across a crash.
        """
        payloads = np.asarray(payloads)
        label_array = np.asarray(labels).reshape(-1)
        if payloads.ndim < 1 or len(label_array) != payloads.shape[0]:
            count = payloads.shape[0] if payloads.ndim else 0
            raise ValueError(f"{len(label_array)} labels for {count} payloads")
        if len(label_array) and label_array.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got {label_array.dtype}")
        if payloads.dtype.kind not in "biuf":  # also refuses object and structured dtypes
            raise ValueError(f"payload dtype {payloads.dtype} cannot be stored; use a numeric one")
        if len(payloads) == 0:
            return AddResult(ids=[], evicted=0, evicted_contexts={}, usage=self.buffer_usage())
        label_list = [int(v) for v in label_array]
        batch = np.ascontiguousarray(payloads, dtype=payloads.dtype.newbyteorder("<"))
        dtype_name = batch.dtype.name
        shape_json = json.dumps(list(batch.shape[1:]))
        blobs = [sample.tobytes() for sample in batch]
        batch_bytes = sum(len(blob) for blob in blobs)

        def add(db: Database) -> AddResult:
            if idempotency is not None:
                stored = self._stored_response(db.conn, *idempotency)
                if stored is not None:
                    return AddResult.from_dict(stored.body["stored"], replayed=True)
            # In the write transaction: two first batches racing into an empty context cannot mix.
            held = db.conn.execute(
                "SELECT dtype, shape FROM samples WHERE context = ? LIMIT 1", (context,)
            ).fetchone()
            if held is not None and tuple(held) != (dtype_name, shape_json):
                raise MixedSamples(
                    f"context {context!r} holds {held[0]} samples of shape {tuple(json.loads(held[1]))}, this "
                    f"batch is {dtype_name} of shape {tuple(batch.shape[1:])}; a job trains on one array, so send "
                    f"{held[0]} or use another context"
                )
            protected = tuple(row[0] for row in db.conn.execute(
                f"SELECT DISTINCT context FROM jobs WHERE state IN ({_PENDING_SQL}) ORDER BY context"))
            room = make_room(db.conn, self.limits, context=context, device_id=device_id,
                             batch_samples=len(blobs), batch_bytes=batch_bytes, protected=protected)
            now = self.clock()
            ids = []
            for label, blob in zip(label_list, blobs):
                cursor = db.conn.execute(
                    "INSERT INTO samples (context, device_id, label, dtype, shape, payload, "
                    "payload_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (context, device_id, label, dtype_name, shape_json, blob, len(blob), now),
                )
                ids.append(int(cursor.lastrowid or 0))
            evicted_contexts: dict[str, int] = {}
            for eviction in room.evictions:
                evicted_contexts[eviction.context] = evicted_contexts.get(eviction.context, 0) + eviction.samples
            result = AddResult(ids=ids, evicted=sum(evicted_contexts.values()),
                               evicted_contexts=dict(sorted(evicted_contexts.items())),
                               usage=BufferUsage(room.samples + len(blobs), room.bytes + batch_bytes),
                               evictions=room.evictions)
            if idempotency is not None:
                self._save_response(db.conn, *idempotency, 201, {"stored": result.to_dict()})
            return result

        return self.write(add)

    # --- idempotency keys ------------------------------------------------------------------------

    def stored_response(self, key: str, fingerprint: str) -> StoredResponse | None:
        """What ``key`` answered before (None: unused); :class:`IdempotencyConflict` if it answered
        another request than ``fingerprint``."""
        return self._stored_response(self._reader().conn, key, fingerprint)

    def save_response(self, key: str, fingerprint: str, status: int, body: Any) -> None:
        """Remember what ``key`` answered, replacing what a batch stored with the full response."""
        self.write(lambda db: self._save_response(db.conn, key, fingerprint, status, body))

    def expire_idempotency_keys(self, older_than: float) -> int:
        """Forget keys stored before ``older_than`` (epoch seconds); returns how many."""
        found = self._reader().conn.execute(
            "SELECT 1 FROM idempotency_keys WHERE created_at < ? LIMIT 1", (older_than,)).fetchone()
        if found is None:  # a read first: no write (and fsync) when there is nothing to forget
            return 0
        return self.write(lambda db: db.conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?", (older_than,)).rowcount)

    def _stored_response(self, conn: sqlite3.Connection, key: str, fingerprint: str) -> StoredResponse | None:
        row = conn.execute("SELECT fingerprint, status, response FROM idempotency_keys WHERE key = ?",
                           (key,)).fetchone()
        if row is None:
            return None
        if row[0] != fingerprint:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for a different request; a retry must repeat the same "
                "method, path, query and body, and a new request needs a new key")
        return StoredResponse(row[0], int(row[1]), json.loads(row[2]))

    def _save_response(self, conn: sqlite3.Connection, key: str, fingerprint: str, status: int, body: Any) -> None:
        conn.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, response, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET status = excluded.status, response = excluded.response "
            "WHERE fingerprint = excluded.fingerprint",
            (key, fingerprint, status, _json(body), self.clock()),
        )

    def load_samples(
        self,
        context: str | None,
        limit: int | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """``(x, y, ids)`` of a context's samples (or of all, for None), oldest first.

        ``limit`` keeps the newest ``limit``; ``ids`` keeps only those samples (in id order).
        ``x`` stacks the payloads with their stored dtype and shape; ``y`` is int64. An empty
        result has ``x`` of shape ``(0,)``. Samples of different dtypes or shapes are a
        ValueError (they cannot be stacked).
        """
        where, params = [], []
        if context is not None:
            where.append("context = ?")
            params.append(context)
        if ids is not None:
            where.append("id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(i) for i in ids]))
        sql = "SELECT id, label, dtype, shape, payload FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        rows = self._reader().conn.execute(sql + " ORDER BY id", params).fetchall()
        if not rows:
            return np.empty((0,), dtype=np.uint8), np.empty((0,), dtype=np.int64), []
        kinds = {(dtype, shape) for _, _, dtype, shape, _ in rows}
        if len(kinds) > 1:
            found = ", ".join(f"{d} {tuple(json.loads(s))}" for d, s in sorted(kinds))
            raise ValueError(f"samples of context {context!r} differ in dtype or shape: {found}")
        ((dtype_name, shape_json),) = kinds
        dtype = np.dtype(dtype_name).newbyteorder("<")
        shape = tuple(json.loads(shape_json))
        sample_bytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        # One writable buffer filled in place: one copy, and callers (torch) get a writable array.
        buffer = bytearray(sample_bytes * len(rows))
        view = memoryview(buffer)
        for i, row in enumerate(rows):
            if len(row[4]) != sample_bytes:
                raise StoreError(
                    f"sample {row[0]}: {len(row[4])} payload bytes, expected {sample_bytes}"
                )
            view[i * sample_bytes : (i + 1) * sample_bytes] = row[4]
        x = np.frombuffer(buffer, dtype=dtype).reshape((len(rows), *shape))
        x = x.astype(dtype.newbyteorder("="), copy=False)
        y = np.fromiter((row[1] for row in rows), dtype=np.int64, count=len(rows))
        return x, y, [int(row[0]) for row in rows]

    def count_samples(self, context: str | None = None, *, after_id: int | None = None) -> int:
        """Samples buffered for ``context`` (all contexts for None), only those with ids above
        ``after_id`` when given (samples newer than what a job used)."""
        conn = self._reader().conn
        clauses, params = [], []
        if context is not None:
            clauses.append("context = ?")
            params.append(context)
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return int(conn.execute(f"SELECT count(*) FROM samples{where}", params).fetchone()[0])

    def buffer_usage(self) -> BufferUsage:
        """Samples and payload bytes buffered, across contexts."""
        return _usage(self._reader().conn)

    def context_usage(self) -> dict[str, BufferUsage]:
        """Samples and payload bytes buffered, per context."""
        rows = self._reader().conn.execute(
            "SELECT context, count(*), sum(payload_bytes) FROM samples "
            "GROUP BY context ORDER BY context"
        )
        return {context: BufferUsage(int(n), int(b)) for context, n, b in rows}

    # --- drift hints -----------------------------------------------------------------------------

    def add_hint(
        self,
        context: str,
        drift_type: str | None,
        *,
        block: str | None = None,
        min_samples: int | None = None,
        job_id: int | None = None,
    ) -> Hint:
        """Record a drift hint; ``job_id`` links it to a job at once (a hint merged into it)."""

        def add(db: Database) -> Hint:
            cursor = db.conn.execute(
                "INSERT INTO drift_hints (context, drift_type, block, min_samples, created_at, "
                "job_id) VALUES (?, ?, ?, ?, ?, ?)",
                (context, drift_type, block, min_samples, self.clock(), job_id),
            )
            return _hint(db.table("drift_hints").get(cursor.lastrowid))

        return self.write(add)

    def link_hints(self, hint_ids: Iterable[int], job_id: int) -> int:
        """Link hints to the job that handles them; returns how many were linked."""
        ids = json.dumps([int(i) for i in hint_ids])
        return self.write(
            lambda db: db.conn.execute(
                "UPDATE drift_hints SET job_id = ? WHERE id IN (SELECT value FROM json_each(?))",
                (job_id, ids),
            ).rowcount
        )

    def waiting_hints(self, context: str | None = None) -> list[Hint]:
        """Hints not yet linked to a job nor expired, oldest first."""
        return self.list_hints(context=context, state="waiting", limit=None)

    def get_hint(self, hint_id: int) -> Hint:
        """The hint with ``hint_id``; NotFound otherwise."""
        rows = self._reader().query("SELECT * FROM drift_hints WHERE id = ?", [hint_id])
        found = next((_hint(row) for row in rows), None)
        if found is None:
            raise NotFound(f"no drift hint {hint_id}")
        return found

    def expire_hints(self, created_before: float) -> list[Hint]:
        """Mark expired the hints still waiting that were made before ``created_before`` (epoch
        seconds); returns them. Writes nothing (no fsync) when none is due."""
        due = "job_id IS NULL AND expired_at IS NULL AND created_at < ?"
        if self._reader().conn.execute(f"SELECT 1 FROM drift_hints WHERE {due} LIMIT 1",
                                       (created_before,)).fetchone() is None:
            return []

        def expire(db: Database) -> list[Hint]:
            ids = [row[0] for row in db.conn.execute(f"SELECT id FROM drift_hints WHERE {due}", (created_before,))]
            db.conn.execute("UPDATE drift_hints SET expired_at = ? WHERE id IN (SELECT value FROM json_each(?))",
                            (self.clock(), json.dumps(ids)))
            return [_hint(row) for row in db.query(
                "SELECT * FROM drift_hints WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id", [json.dumps(ids)])]

        return self.write(expire)

    def list_hints(
        self,
        context: str | None = None,
        *,
        job_id: int | None = None,
        state: str | None = None,
        newest_first: bool = False,
        limit: int | None = 100,
    ) -> list[Hint]:
        """Hints, oldest first (or newest first), filtered by context, job, or state (``waiting``,
        ``scheduled``, ``expired``)."""
        where, params = _where(context=context, job_id=job_id)
        if state is not None:
            where.append({"waiting": "job_id IS NULL AND expired_at IS NULL", "scheduled": "job_id IS NOT NULL",
                          "expired": "job_id IS NULL AND expired_at IS NOT NULL"}[state])
        order = " ORDER BY id DESC" if newest_first else " ORDER BY id"
        sql = "SELECT * FROM drift_hints" + _and(where) + order + _limit(limit)
        return [_hint(row) for row in self._reader().query(sql, params)]

    # --- jobs ------------------------------------------------------------------------------------

    def create_job(
        self,
        context: str,
        *,
        block: str | None = None,
        drift_type: str | None = None,
        requested_by: str | None = None,
        state: str = "queued",
        min_samples: int | None = None,
        params: Mapping[str, Any] | None = None,
        hint_ids: Iterable[int] = (),
        retry_of: int | None = None,
    ) -> Job:
        """Create a job (queued by default) and link ``hint_ids`` to it, in one transaction."""
        _check_state(state)
        hints = json.dumps([int(i) for i in hint_ids])

        def create(db: Database) -> Job:
            now = self.clock()
            cursor = db.conn.execute(
                "INSERT INTO jobs (context, state, block, drift_type, requested_by, created_at, "
                "updated_at, started_at, min_samples, params, retry_of) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    context, state, block, drift_type, requested_by, now, now,
                    now if state == "running" else None, min_samples, _json(params), retry_of,
                ),
            )  # fmt: skip
            job_id = int(cursor.lastrowid or 0)
            db.conn.execute(
                "UPDATE drift_hints SET job_id = ? WHERE id IN (SELECT value FROM json_each(?))",
                (job_id, hints),
            )
            return _get_job(db, job_id)

        return self.write(create)

    def update_job(self, job_id: int, **changes: Any) -> Job:
        """Change a job's columns; returns the job as it now is. JSON columns take dicts/lists.

        Moving to ``running`` sets ``started_at`` and to a finished state sets ``finished_at``
        (unless given). Raises NotFound for an unknown id, ValueError for an unknown column.
        """

        def update(db: Database) -> Job:
            job = self._update_job(db, job_id, None, changes)
            assert job is not None  # only a compare-and-set returns None
            return job

        return self.write(update)

    def transition_job(
        self, job_id: int, from_states: Iterable[str], to_state: str, **changes: Any
    ) -> Job | None:
        """Compare-and-set: move a job to ``to_state`` only if it is in one of ``from_states``.

        Returns the updated job, or None if it was in another state (nothing changed). E.g.
        cancelling only a queued or running job: ``transition_job(i, PENDING_STATES, "cancelled")``.
        """
        states = tuple(from_states)
        for state in states:
            _check_state(state)
        changes = {**changes, "state": to_state}
        return self.write(lambda db: self._update_job(db, job_id, states, changes))

    def _update_job(
        self,
        db: Database,
        job_id: int,
        from_states: tuple[str, ...] | None,
        changes: dict[str, Any],
    ) -> Job | None:
        unknown = set(changes) - _JOB_MUTABLE
        if unknown:
            raise ValueError(f"cannot update job column(s) {', '.join(sorted(unknown))}")
        job = _get_job(db, job_id)
        if from_states is not None and job.state not in from_states:
            return None
        now = self.clock()
        state = changes.get("state")
        if state is not None:
            _check_state(state)
            if state == "running" and "started_at" not in changes and job.started_at is None:
                changes["started_at"] = now
            if state in FINISHED_STATES and "finished_at" not in changes:
                changes["finished_at"] = now
        values = {k: _json(v) if k in _JOB_JSON else v for k, v in changes.items()}
        values["updated_at"] = now
        db.table("jobs").update(job_id, values)
        return _get_job(db, job_id)

    def get_job(self, job_id: int) -> Job:
        """The job with ``job_id``; NotFound otherwise."""
        return _get_job(self._reader(), job_id)

    def list_jobs(
        self,
        state: str | Sequence[str] | None = None,
        context: str | None = None,
        limit: int | None = 100,
    ) -> list[Job]:
        """Jobs, newest first, filtered by state(s) and context."""
        where, params = _where(context=context)
        if state is not None:
            states = (state,) if isinstance(state, str) else tuple(state)
            for s in states:
                _check_state(s)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        sql = "SELECT * FROM jobs" + _and(where) + " ORDER BY id DESC" + _limit(limit)
        return [_job(row) for row in self._reader().query(sql, params)]

    def pending_job_for_context(self, context: str) -> Job | None:
        """The oldest queued or running job of ``context``, if any."""
        rows = self._reader().query(
            f"SELECT * FROM jobs WHERE context = ? AND state IN ({_PENDING_SQL}) "
            "ORDER BY id LIMIT 1",
            [context],
        )
        return next((_job(row) for row in rows), None)

    def next_queued_job(self) -> Job | None:
        """The oldest queued job, if any (see :meth:`claim_next_job` to take it atomically)."""
        rows = self._reader().query("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1")
        return next((_job(row) for row in rows), None)

    def claim_next_job(self) -> Job | None:
        """Atomically move the oldest queued job to ``running`` and return it; None if none."""

        def claim(db: Database) -> Job | None:
            row = db.conn.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            return self._update_job(db, int(row[0]), ("queued",), {"state": "running"})

        return self.write(claim)

    def mark_running_jobs_interrupted(self, *, requeue: bool = False) -> list[int]:
        """Crash recovery at start-up: jobs left ``running`` become ``interrupted``.

        Returns their ids. With ``requeue`` each also gets a new queued job with the same
        context, block, drift type and parameters (``retry_of`` names the old one), in the same
        transaction.
        """

        def recover(db: Database) -> list[int]:
            rows = db.conn.execute("SELECT id FROM jobs WHERE state = 'running' ORDER BY id")
            ids = [int(row[0]) for row in rows]
            for job_id in ids:
                self._update_job(
                    db,
                    job_id,
                    ("running",),
                    {"state": "interrupted", "error": INTERRUPTED_ERROR},
                )
                if requeue:
                    self._requeue(db, job_id)
            return ids

        return self.write(recover)

    def requeue_job(self, job_id: int) -> Job:
        """A new queued job like ``job_id`` (same context, block, drift type, parameters)."""
        return self.write(lambda db: self._requeue(db, job_id))

    def _requeue(self, db: Database, job_id: int) -> Job:
        old = _get_job(db, job_id)
        now = self.clock()
        cursor = db.conn.execute(
            "INSERT INTO jobs (context, state, block, drift_type, requested_by, created_at, "
            "updated_at, min_samples, params, retry_of) "
            "VALUES (?, 'queued', ?, ?, 'requeue', ?, ?, ?, ?, ?)",
            (
                old.context, old.block, old.drift_type, now, now, old.min_samples,
                _json(old.params), old.id,
            ),
        )
        return _get_job(db, int(cursor.lastrowid or 0))

    # --- energy ----------------------------------------------------------------------------------

    def save_energy(
        self,
        job_id: int,
        summary: Mapping[str, Any],
        trace: Sequence[tuple[float, float, str]] | None = None,
    ) -> None:
        """Store a job's energy summary (e.g. ``EnergyResult.to_dict()``) and power trace.

        Needs ``joules``, ``seconds`` and ``source``; the other columns are optional, and keys
        without a column are kept in ``details``. ``trace`` (seconds since start, watts, source)
        defaults to ``summary["trace"]``. Replaces an earlier record of the same job.
        """
        missing = [k for k in ("joules", "seconds", "source") if summary.get(k) is None]
        if missing:
            raise ValueError(f"energy summary lacks {', '.join(missing)}")
        if trace is None:
            trace = summary.get("trace") or ()
        points = list(trace)
        row = {k: summary.get(k) for k in _ENERGY_COLUMNS}
        row["low_confidence"] = int(bool(row["low_confidence"]))
        row["samples"] = int(row["samples"] or 0)
        details = {k: v for k, v in summary.items() if k not in (*_ENERGY_COLUMNS, "gaps", "trace")}
        t_seconds = np.array([p[0] for p in points], dtype="<f8")
        watts = np.array([p[1] for p in points], dtype="<f8")
        # The source changes rarely (meter → estimator across a gap), so store it as runs.
        runs: list[list[Any]] = []
        for i, point in enumerate(points):
            if not runs or runs[-1][1] != point[2]:
                runs.append([i, str(point[2])])

        def save(db: Database) -> None:
            _get_job(db, job_id)
            db.conn.execute(
                "INSERT OR REPLACE INTO energy (job_id, joules, net_joules, seconds, mean_watts, "
                "peak_watts, baseline_watts, source, counter_joules, low_confidence, samples, "
                "gaps, details, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id, *(row[k] for k in _ENERGY_COLUMNS),
                    _json(summary.get("gaps") or []), _json(details), self.clock(),
                ),
            )  # fmt: skip
            db.conn.execute(
                "INSERT OR REPLACE INTO power_traces "
                "(job_id, points, t_seconds, watts, source_runs) VALUES (?, ?, ?, ?, ?)",
                (job_id, len(points), t_seconds.tobytes(), watts.tobytes(), _json(runs)),
            )

        self.write(save)

    def energy_log(
        self,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        context: str | None = None,
        block: str | None = None,
        drift_type: str | None = None,
        limit: int | None = None,
    ) -> list[EnergyRecord]:
        """Per-job energy, oldest first, with the job's context, block and drift type.

        ``since``/``until`` (epoch seconds or aware datetimes) bound when the energy was
        recorded (the end of the job): ``since <= t < until``.
        """
        where, params = _where(
            **{"j.context": context, "j.block": block, "j.drift_type": drift_type}
        )
        if since is not None:
            where.append("e.created_at >= ?")
            params.append(_epoch_seconds(since))
        if until is not None:
            where.append("e.created_at < ?")
            params.append(_epoch_seconds(until))
        sql = _ENERGY_SELECT + _and(where) + " ORDER BY e.created_at, e.job_id" + _limit(limit)
        return [_energy(row) for row in self._reader().query(sql, params)]

    def get_energy(self, job_id: int) -> EnergyRecord | None:
        """A job's energy record, None if none was saved (NotFound for an unknown job)."""
        db = self._reader()
        _get_job(db, job_id)
        rows = db.query(_ENERGY_SELECT + " WHERE e.job_id = ?", [job_id])
        return next((_energy(row) for row in rows), None)

    def energy_of_jobs(self, job_ids: Iterable[int]) -> dict[int, EnergyRecord]:
        """The energy records of ``job_ids`` that have one, by job id (one query for a list)."""
        rows = self._reader().query(_ENERGY_SELECT + " WHERE e.job_id IN (SELECT value FROM json_each(?))",
                                    [json.dumps([int(i) for i in job_ids])])
        return {record.job_id: record for record in map(_energy, rows)}

    def power_trace(self, job_id: int) -> list[TracePoint]:
        """A job's power readings, in order; empty if none were saved (NotFound: unknown job)."""
        db = self._reader()
        _get_job(db, job_id)
        row = db.conn.execute(
            "SELECT t_seconds, watts, source_runs FROM power_traces WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return []
        t_seconds = np.frombuffer(row[0], dtype="<f8").tolist()
        watts = np.frombuffer(row[1], dtype="<f8").tolist()
        runs = json.loads(row[2])
        sources: list[str] = []
        for (start, source), nxt in zip(runs, [*runs[1:], [len(t_seconds), None]]):
            sources.extend([source] * (nxt[0] - start))
        return [TracePoint(t, w, s) for t, w, s in zip(t_seconds, watts, sources)]

    # --- model versions -------------------------------------------------------------------------

    def add_model_version(
        self,
        path: str | Path,
        *,
        scope: str | None = None,
        delta_of: int | None = None,
        parent_version: int | None = None,
        job_id: int | None = None,
        accuracy: Mapping[str, Any] | None = None,
        notes: str | None = None,
        activate: bool = False,
    ) -> int:
        """Record a model version (its file already at ``path``); returns its number.

        Numbers are never reused. ``activate`` makes it, in the same transaction, the active
        version of ``scope``, or the default model when ``scope`` is None.
        """

        def add(db: Database) -> int:
            cursor = db.conn.execute(
                "INSERT INTO model_versions (path, parent_version, job_id, created_at, accuracy, "
                "notes, scope, delta_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (str(path), parent_version, job_id, self.clock(), _json(accuracy), notes, scope, delta_of),
            )
            version = int(cursor.lastrowid or 0)
            if activate:
                self._activate(db, version, scope)
            return version

        return self.write(add)

    def activate(self, version: int, scope: str | None = None) -> ModelVersion:
        """Make ``version`` the active version of ``scope`` (rollback or roll forward), or the
        default model when ``scope`` is None; NotFound if there is no such version."""

        def run(db: Database) -> ModelVersion:
            self._activate(db, version, scope)
            return _version(db.table("model_versions").get(version))

        return self.write(run)

    def _activate(self, db: Database, version: int, scope: str | None) -> None:
        exists = db.conn.execute("SELECT 1 FROM model_versions WHERE version = ?", (version,))
        if exists.fetchone() is None:
            raise NotFound(f"no model version {version}")
        if scope is None:
            # Both statements in the caller's transaction: readers see the old or the new default.
            db.conn.execute("UPDATE model_versions SET active = 0 WHERE active = 1 AND version != ?", (version,))
            db.conn.execute("UPDATE model_versions SET active = 1 WHERE version = ?", (version,))
        else:
            db.conn.execute(
                "INSERT INTO scope_models (scope, version, activated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (scope) DO UPDATE SET version = excluded.version, activated_at = excluded.activated_at",
                (scope, version, self.clock()),
            )

    def active_version(self) -> ModelVersion | None:
        """The default model version (what scopes without their own serve); None before the first."""
        rows = self._reader().query("SELECT * FROM model_versions WHERE active = 1")
        return next((_version(row) for row in rows), None)

    def scope_versions(self) -> dict[str, int]:
        """The active version of every scope that has a model of its own."""
        rows = self._reader().conn.execute("SELECT scope, version FROM scope_models ORDER BY scope")
        return {scope: int(version) for scope, version in rows}

    def base_version(self) -> ModelVersion | None:
        """The base model: the oldest version no job made (None in a store without one)."""
        rows = self._reader().query(
            "SELECT * FROM model_versions WHERE job_id IS NULL ORDER BY version LIMIT 1")
        return next((_version(row) for row in rows), None)

    def get_version(self, version: int) -> ModelVersion:
        """Model version ``version``; NotFound otherwise."""
        rows = self._reader().query("SELECT * FROM model_versions WHERE version = ?", [version])
        found = next((_version(row) for row in rows), None)
        if found is None:
            raise NotFound(f"no model version {version}")
        return found

    def list_versions(self, scope: str | None = None) -> list[ModelVersion]:
        """Stored model versions, newest first: every one, or with ``scope`` that scope's and those
        that belong to no scope (the base)."""
        if scope is None:
            rows = self._reader().query("SELECT * FROM model_versions ORDER BY version DESC")
        else:
            rows = self._reader().query(
                "SELECT * FROM model_versions WHERE scope = ? OR scope IS NULL ORDER BY version DESC", [scope])
        return [_version(row) for row in rows]

    def prune_versions(self, keep: int, scope: str | None = None) -> list[ModelVersion]:
        """Forget all but the newest ``keep`` versions of ``scope`` (of versions without a scope
        when None). Never forgotten: the base (any version no job made), the default model, any
        scope's active version, and a version another one is a delta of.

        Returns the forgotten versions, oldest first, once their removal is committed (and on
        stable storage): only then may the caller delete their files.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")

        def prune(db: Database) -> list[ModelVersion]:
            rows = list(
                db.query(
                    """SELECT * FROM model_versions v WHERE scope IS ? AND active = 0 AND job_id IS NOT NULL
                    AND version NOT IN (SELECT version FROM scope_models)
                    AND version NOT IN (SELECT delta_of FROM model_versions WHERE delta_of IS NOT NULL)
                    AND version NOT IN (SELECT version FROM model_versions WHERE scope IS ?
                                        ORDER BY version DESC LIMIT ?)
                    ORDER BY version""",
                    [scope, scope, keep],
                )
            )
            db.conn.execute(
                "DELETE FROM model_versions WHERE version IN (SELECT value FROM json_each(?))",
                (json.dumps([r["version"] for r in rows]),),
            )
            return [_version(r) for r in rows]

        return self.write(prune)

    def version_paths(self) -> set[str]:
        """The file of every recorded version (what a sweep of the models directory keeps)."""
        return {row[0] for row in self._reader().conn.execute("SELECT path FROM model_versions")}

class _Task(NamedTuple):
    fn: Callable[[Database], Any]
    future: Future[Any]


def _in_transaction(db: Database, fn: Callable[[Database], T]) -> T:
    """``fn(db)`` inside BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""
    # IMMEDIATE takes the write lock up front, so a read-then-write transaction never fails with
    # SQLITE_BUSY half way (an operator's sqlite-utils may also be writing to the file).
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
        db.conn.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise
    return result


def _usage(conn: sqlite3.Connection) -> BufferUsage:
    samples, nbytes = conn.execute(
        "SELECT count(*), coalesce(sum(payload_bytes), 0) FROM samples"
    ).fetchone()
    return BufferUsage(int(samples), int(nbytes))


def _check_state(state: str) -> None:
    if state not in JOB_STATES:
        raise ValueError(f"unknown job state {state!r}; choose one of {', '.join(JOB_STATES)}")


def _get_job(db: Database, job_id: int) -> Job:
    rows = db.query("SELECT * FROM jobs WHERE id = ?", [job_id])
    job = next((_job(row) for row in rows), None)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def _job(row: dict[str, Any]) -> Job:
    return Job(**{k: _unjson(v) if k in _JOB_JSON else v for k, v in row.items()})


def _hint(row: dict[str, Any]) -> Hint:
    return Hint(**row)


def _version(row: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        **{**row, "accuracy": _unjson(row["accuracy"]), "active": bool(row["active"])}
    )


def _energy(row: dict[str, Any]) -> EnergyRecord:
    return EnergyRecord(
        **{
            **row,
            "low_confidence": bool(row["low_confidence"]),
            "gaps": _unjson(row["gaps"]) or [],
            "details": _unjson(row["details"]) or {},
        }
    )


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _epoch_seconds(value: float | datetime) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a datetime bound must be timezone-aware")
        return value.timestamp()
    return float(value)


def _where(**equal: Any) -> tuple[list[str], list[Any]]:
    """``column = ?`` clauses for the given values that are not None."""
    where, params = [], []
    for column, value in equal.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params


def _and(where: list[str]) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


def _limit(limit: int | None) -> str:
    return f" LIMIT {int(limit)}" if limit is not None else ""
