"""The store against real SQLite files: round trips, WAL, one writer, eviction, recovery."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np
import pytest
from sqlite_utils import Database

from service.store import (
    INTERRUPTED_ERROR,
    PENDING_STATES,
    SCHEMA_VERSION,
    BufferFull,
    IdempotencyConflict,
    MixedSamples,
    NotFound,
    QuotaExceeded,
    Store,
    StoreClosed,
    StoreError,
)


@pytest.fixture(autouse=True)
def no_leaked_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[sqlite3.Connection]]:
    """Fail any test that leaves a SQLite connection open (the store must close all it opens)."""
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield opened
    leaked = []
    for conn in opened:
        try:
            conn.in_transaction  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            continue
        leaked.append(conn)
        conn.close()
    assert not leaked, f"{len(leaked)} SQLite connection(s) left open"


class FakeClock:
    """Seconds since the epoch that tests move by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "tbftd.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store.open(db_path) as opened:
        yield opened


@pytest.fixture
def open_store(db_path: Path) -> Iterator[Callable[..., Store]]:
    """Open stores on ``db_path`` with options; all are closed after the test."""
    stores: list[Store] = []

    def make(**options: object) -> Store:
        stores.append(Store.open(db_path, **options))  # type: ignore[arg-type]
        return stores[-1]

    yield make
    for s in stores:
        s.close()


def batch(n: int, *, fill: int = 0, shape: tuple[int, ...] = (4,)) -> np.ndarray:
    """``n`` uint8 samples of ``shape`` (4 bytes each by default)."""
    return np.full((n, *shape), fill, dtype=np.uint8)


# --- samples -------------------------------------------------------------------------------------


def test_uint8_payloads_round_trip_bit_exact(store: Store) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(16, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, size=16)

    result = store.add_samples("kitchen", "cam-1", labels, x)
    loaded, y, ids = store.load_samples("kitchen")

    assert ids == result.ids and len(set(ids)) == 16
    assert loaded.dtype == np.uint8 and loaded.shape == x.shape
    assert np.array_equal(loaded, x)
    assert np.array_equal(y, labels) and y.dtype == np.int64
    assert loaded.flags.writeable  # torch.from_numpy warns on read-only arrays


def test_float32_payloads_round_trip_bit_exact(store: Store) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    # Values a text or float64 detour would change: signed zero, a NaN payload, subnormals.
    x[0, 0, 0, :] = np.array([-0.0, np.inf, 1e-45, np.nan], dtype=np.float32)
    x[1, 0, 0, 0] = np.uint32(0x7FC00123).view(np.float32)

    store.add_samples("lab", None, np.arange(8), x)
    loaded, _, _ = store.load_samples("lab")

    assert loaded.dtype == np.float32
    assert np.array_equal(loaded.view(np.uint32), x.view(np.uint32))


def test_big_endian_input_is_stored_little_endian_with_equal_values(store: Store) -> None:
    x = np.arange(12, dtype=">f4").reshape(3, 4)
    store.add_samples("c", None, [0, 1, 2], x)
    loaded, _, _ = store.load_samples("c")
    assert loaded.dtype == np.float32 and np.array_equal(loaded, x)


def test_load_samples_limit_keeps_the_newest_and_ids_select(store: Store) -> None:
    first = store.add_samples("c", None, [0, 1, 2], batch(3, fill=1)).ids
    second = store.add_samples("c", None, [3, 4], batch(2, fill=2)).ids
    store.add_samples("other", None, [9], batch(1, fill=9))

    _, y, ids = store.load_samples("c", limit=3)
    assert ids == [first[2], *second] and list(y) == [2, 3, 4]

    x, y, ids = store.load_samples(None, ids=[second[1], first[0]])
    assert ids == [first[0], second[1]] and list(y) == [0, 4] and list(x[:, 0]) == [1, 2]

    x, y, ids = store.load_samples("empty")
    assert x.shape == (0,) and y.shape == (0,) and ids == []


def test_mixed_shapes_in_a_context_cannot_be_stacked(store: Store) -> None:
    # add_samples refuses to mix them now; a database written before it did may still hold some.
    store.add_samples("c", None, [0], batch(1, shape=(4,)))
    store.write(lambda db: db.conn.execute(
        "INSERT INTO samples (context, label, dtype, shape, payload, payload_bytes, created_at) "
        "VALUES ('c', 0, 'uint8', '[2, 2]', x'00000000', 4, 0)"))
    with pytest.raises(ValueError, match="differ in dtype or shape"):
        store.load_samples("c")


def test_bad_batches_are_refused_before_writing(store: Store) -> None:
    with pytest.raises(ValueError, match="2 labels for 3 payloads"):
        store.add_samples("c", None, [0, 1], batch(3))
    with pytest.raises(ValueError, match="labels must be integers"):
        store.add_samples("c", None, [0.5], batch(1))
    with pytest.raises(ValueError, match="dtype"):
        store.add_samples("c", None, [0], np.array([["a"]], dtype=object))
    assert store.count_samples() == 0
    assert store.add_samples("c", None, [], batch(0)).ids == []


def test_counts_and_usage(store: Store) -> None:
    store.add_samples("a", None, [0, 1], batch(2))
    store.add_samples("b", None, [0], np.zeros((1, 2), dtype=np.float32))
    assert store.count_samples() == 3 and store.count_samples("a") == 2
    first_of_a = store.load_samples("a")[2][0]
    assert store.count_samples("a", after_id=first_of_a) == 1 and store.count_samples(after_id=0) == 3
    assert store.buffer_usage() == (3, 2 * 4 + 8)
    assert store.context_usage() == {"a": (2, 8), "b": (1, 8)}


# --- SQLite configuration ------------------------------------------------------------------------


def test_wal_synchronous_full_and_busy_timeout_are_set(store: Store, db_path: Path) -> None:
    pragmas = store.connection_settings()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == 2  # FULL: every commit fsyncs the write-ahead log
    assert pragmas["busy_timeout"] >= 1000
    assert pragmas["foreign_keys"] == 1
    assert pragmas["user_version"] == SCHEMA_VERSION
    # WAL is a property of the file: an operator's own connection sees it too.
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_readers_cannot_write(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.read(lambda db: db.execute("DELETE FROM samples"))


def test_a_failed_write_rolls_back_entirely(store: Store) -> None:
    def half_then_fail(db: Database) -> None:
        db["jobs"].insert({"context": "c", "state": "queued", "created_at": 0, "updated_at": 0})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.write(half_then_fail)
    assert store.list_jobs() == []
    store.create_job("c")  # the writer survived the error
    assert len(store.list_jobs()) == 1


def test_a_context_keeps_one_dtype_and_shape(store: Store) -> None:
    store.add_samples("a", None, [1, 2], batch(2))
    with pytest.raises(MixedSamples, match="holds uint8 samples of shape \\(4,\\)"):
        store.add_samples("a", None, [1], np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(MixedSamples, match="shape \\(4,\\)"):
        store.add_samples("a", None, [1], batch(1, shape=(5,)))
    store.add_samples("b", None, [1], np.zeros((1, 4), dtype=np.float32))  # another context may differ
    assert store.count_samples("a") == 2 and store.count_samples("b") == 1


class HeldWriter:
    """Holds the writer thread inside a write until released, so that writes queue up behind it
    and go into one group (what happens on its own under load)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=store.write, args=(self._hold,))

    def _hold(self, db: Database) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the writer"

    def __enter__(self) -> Self:
        self.thread.start()
        assert self.entered.wait(30)
        return self

    def queue(self, *writes: Callable[[], object]) -> list[Future[object]]:
        """Start each write on a thread of its own and wait until all are queued."""
        before = self.store.queued_writes
        pool = ThreadPoolExecutor(max_workers=len(writes))
        futures = [pool.submit(write) for write in writes]
        pool.shutdown(wait=False)
        deadline = time.monotonic() + 30
        while self.store.queued_writes < before + len(writes):
            assert time.monotonic() < deadline, "the writes never reached the writer's queue"
            time.sleep(0.001)
        return futures

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)


def test_writes_queued_behind_a_busy_writer_commit_together(store: Store) -> None:
    before = store.write_stats()
    with HeldWriter(store) as held:
        futures = held.queue(*[lambda i=i: store.add_samples("c", None, [i], batch(1, fill=i)) for i in range(10)])
        assert not any(f.done() for f in futures)  # nobody is answered before the commit
    ids = [f.result(30).ids[0] for f in futures]
    after = store.write_stats()
    assert after.writes - before.writes == 11
    assert after.commits - before.commits == 2  # the held write alone, then the ten in one
    assert after.largest_group == 10
    _, y, stored = store.load_samples("c")
    assert sorted(ids) == stored and sorted(y.tolist()) == list(range(10))


def test_a_failing_write_in_a_group_rolls_back_alone(store: Store) -> None:
    def fail(db: Database) -> None:
        db["jobs"].insert({"context": "bad", "state": "queued", "created_at": 0, "updated_at": 0})
        raise RuntimeError("boom")

    with HeldWriter(store) as held:
        first, failing, last = held.queue(
            lambda: store.create_job("a"), lambda: store.write(fail), lambda: store.create_job("b")
        )
    with pytest.raises(RuntimeError, match="boom"):
        failing.result(30)
    assert [job.context for job in store.list_jobs()] == ["b", "a"]
    assert first.result(30).context == "a" and last.result(30).context == "b"


def test_a_write_that_ends_the_whole_transaction_leaves_the_others_of_its_group_committed(store: Store) -> None:
    # A write whose error rolls back the transaction itself (SQLite does so for some I/O and
    # disk-full errors): the rest of its group is run again, each write in a transaction alone.
    def end_everything(db: Database) -> None:
        db["jobs"].insert({"context": "bad", "state": "queued", "created_at": 0, "updated_at": 0})
        db.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    with HeldWriter(store) as held:
        futures = held.queue(
            lambda: store.create_job("a"), lambda: store.write(end_everything), lambda: store.create_job("b")
        )
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        futures[1].result(30)
    assert sorted(job.context for job in store.list_jobs()) == ["a", "b"]
    assert futures[0].result(30).context == "a" and futures[2].result(30).context == "b"


def test_close_commits_the_writes_queued_before_it(db_path: Path) -> None:
    store = Store.open(db_path)
    with HeldWriter(store) as held:
        futures = held.queue(*[lambda i=i: store.create_job(f"c{i}") for i in range(5)])
        closer = threading.Thread(target=store.close)
        closer.start()
        deadline = time.monotonic() + 30
        while not store.closed:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    closer.join(30)
    assert [f.result(30).context for f in futures] == [f"c{i}" for i in range(5)]
    with Store.open(db_path) as reopened:
        assert len(reopened.list_jobs()) == 5


def test_concurrent_writers_all_land_while_a_reader_reads(store: Store) -> None:
    writers, batches, per_batch = 8, 20, 4
    errors: list[BaseException] = []
    ids: list[int] = []
    ids_lock = threading.Lock()
    done = threading.Event()
    reads = 0

    def write(worker: int) -> None:
        try:
            for i in range(batches):
                labels = [worker] * per_batch
                context, device = f"ctx{worker % 3}", f"dev{worker}"
                result = store.add_samples(context, device, labels, batch(per_batch, fill=i))
                with ids_lock:
                    ids.extend(result.ids)
                if i % 5 == 0:
                    store.create_job(f"ctx{worker % 3}", state="succeeded")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def read() -> None:
        nonlocal reads
        try:
            while True:  # at least once, then until the writers are done
                finished = done.is_set()
                n = store.count_samples()
                x, _, got = store.load_samples("ctx0")
                assert n >= 0 and len(got) == len(x)
                store.list_jobs(limit=5)
                reads += 1
                if finished:
                    break
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()

    assert errors == []
    total = writers * batches * per_batch
    assert len(ids) == len(set(ids)) == total
    assert store.count_samples() == total
    assert len(store.list_jobs(limit=None)) == writers * 4
    assert reads > 0


# --- capacity and eviction -----------------------------------------------------------------------


def test_a_full_buffer_takes_from_the_context_holding_the_most(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=10)
    a = store.add_samples("a", None, [0] * 6, batch(6)).ids
    b = store.add_samples("b", None, [0] * 2, batch(2)).ids
    store.add_samples("c", None, [0] * 2, batch(2))

    result = store.add_samples("c", None, [0] * 3, batch(3))

    # a held the most: only a gives up samples, its oldest, until the batch fits.
    assert result.evicted == 3 and result.evicted_contexts == {"a": 3}
    assert result.usage.samples == 10 == store.count_samples()
    assert store.load_samples("a")[2] == a[3:]
    assert store.load_samples("b")[2] == b  # the quiet context keeps everything
    assert {e.reason for e in result.evictions} == {
        "buffer full (max_buffer_samples 10): the oldest samples of the contexts holding the most"}


def test_one_chatty_context_cannot_evict_the_others(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=100)
    quiet = {name: store.add_samples(name, f"dev-{name}", [0] * 10, batch(10)).ids for name in ("a", "b", "c")}
    for _ in range(20):
        store.add_samples("chatty", "dev-chatty", [0] * 16, batch(16))

    assert store.count_samples() == 100 and store.count_samples("chatty") == 70
    for name, ids in quiet.items():
        assert store.load_samples(name)[2] == ids


def test_consumed_samples_go_first(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=10)
    old = store.add_samples("a", None, [0] * 4, batch(4)).ids
    store.add_samples("b", None, [0] * 2, batch(2))
    trained = store.add_samples("b", None, [0] * 4, batch(4)).ids
    job = store.create_job("b", block="fc")
    store.update_job(job.id, state="succeeded", sample_ids=[trained[0] - 2, trained[-1]])

    result = store.add_samples("c", None, [0] * 3, batch(3))

    # b's six samples were all trained on; a's four were not, though a is not the larger context.
    assert result.evicted_contexts == {"b": 3}
    assert [(e.context, e.samples, e.consumed) for e in result.evictions] == [("b", 3, 3)]
    assert "a job has trained on" in result.evictions[0].reason
    assert store.load_samples("a")[2] == old


def test_a_context_with_a_pending_job_is_protected(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=10)
    store.add_samples("a", None, [0] * 4, batch(4))
    b = store.add_samples("b", None, [0] * 6, batch(6)).ids
    store.create_job("a", drift_type="input")  # queued

    result = store.add_samples("c", None, [0] * 5, batch(5))

    assert result.evicted_contexts == {"b": 5}
    assert store.count_samples("a") == 4
    assert store.load_samples("b")[2] == b[5:]

    running = store.claim_next_job()
    assert running is not None and running.state == "running"
    result = store.add_samples("c", None, [0], batch(1))  # c now holds the most; still not a
    assert result.evicted_contexts == {"c": 1}
    assert store.count_samples("a") == 4 and store.count_samples("b") == 1


def test_a_context_over_its_quota_keeps_its_newest(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=100, max_context_samples=5)
    ids = store.add_samples("a", None, [0] * 5, batch(5)).ids
    other = store.add_samples("b", None, [0] * 3, batch(3)).ids

    result = store.add_samples("a", None, [0] * 2, batch(2))

    assert result.evicted_contexts == {"a": 2}
    assert result.evictions[0].reason == "context quota: context 'a' over max_context_samples 5"
    assert store.load_samples("a")[2] == [*ids[2:], *result.ids]
    assert store.load_samples("b")[2] == other


def test_a_context_quota_that_cannot_evict_refuses_with_507(open_store: Callable[..., Store]) -> None:
    store = open_store(max_context_samples=5)
    store.add_samples("a", None, [0] * 5, batch(5))
    store.create_job("a")  # pending: its samples may not go

    with pytest.raises(QuotaExceeded, match="max_context_samples is 5") as caught:
        store.add_samples("a", None, [0], batch(1))
    refusal = caught.value
    assert (refusal.status, refusal.quota, refusal.limit, refusal.held) == (507, "max_context_samples", 5, 5)
    with pytest.raises(QuotaExceeded, match="larger than the quota"):
        store.add_samples("b", None, [0] * 6, batch(6))
    assert store.count_samples() == 5


def test_a_device_over_its_quota_gets_429_until_a_job_consumes_its_samples(open_store: Callable[..., Store]) -> None:
    store = open_store(max_device_samples=6)
    first = store.add_samples("a", "cam", [0] * 4, batch(4)).ids
    store.add_samples("b", "cam", [0] * 2, batch(2))
    store.add_samples("a", "other", [0] * 5, batch(5))  # another device is not held back

    with pytest.raises(QuotaExceeded, match="device 'cam' holds 6 samples") as caught:
        store.add_samples("b", "cam", [0], batch(1))
    assert (caught.value.status, caught.value.quota, caught.value.field) == (429, "max_device_samples", "device_id")
    assert store.count_samples() == 11  # nothing written, nothing evicted

    job = store.create_job("a", block="fc")
    store.update_job(job.id, state="succeeded", sample_ids=[first[0], first[-1]])
    result = store.add_samples("b", "cam", [0] * 2, batch(2))

    assert result.evicted_contexts == {"a": 2}
    assert [(e.samples, e.consumed) for e in result.evictions] == [(2, 2)]
    assert result.evictions[0].reason == "device quota: device 'cam' over max_device_samples 6"
    assert store.load_samples("a")[2][:2] == first[2:]


def test_an_idempotency_key_stores_a_batch_once(open_store: Callable[..., Store]) -> None:
    store = open_store()
    first = store.add_samples("a", "cam", [1, 2], batch(2), idempotency=("key-1", "request-1"))
    again = store.add_samples("a", "cam", [1, 2], batch(2), idempotency=("key-1", "request-1"))

    assert not first.replayed and again.replayed
    assert again.ids == first.ids and store.count_samples() == 2
    with pytest.raises(IdempotencyConflict, match="different request"):
        store.add_samples("a", "cam", [3], batch(1), idempotency=("key-1", "request-2"))
    store.add_samples("a", "cam", [1, 2], batch(2), idempotency=("key-2", "request-1"))
    assert store.count_samples() == 4


def test_idempotency_keys_expire(open_store: Callable[..., Store]) -> None:
    clock = FakeClock()
    store = open_store(clock=clock)
    store.add_samples("a", None, [1], batch(1), idempotency=("old", "r"))
    clock.now += 100
    store.save_response("new", "r", 202, {"status": "ok"})

    assert store.expire_idempotency_keys(clock.now - 50) == 1
    assert store.stored_response("old", "r") is None
    stored = store.stored_response("new", "r")
    assert stored is not None and (stored.status, stored.body) == (202, {"status": "ok"})


def test_waiting_hints_expire_and_say_so(open_store: Callable[..., Store]) -> None:
    clock = FakeClock()
    store = open_store(clock=clock)
    old = store.add_hint("a", "input")
    clock.now += 100
    fresh = store.add_hint("a", "output")
    job = store.create_job("b")
    linked = store.add_hint("b", "feature", job_id=job.id)
    clock.now += 1

    expired = store.expire_hints(clock.now - 50)

    assert [h.id for h in expired] == [old.id] and expired[0].expired_at == clock.now
    assert expired[0].to_dict()["state"] == "expired"
    assert [h.id for h in store.waiting_hints()] == [fresh.id]
    assert store.get_hint(linked.id).state == "scheduled" and store.get_hint(fresh.id).state == "waiting"
    assert store.expire_hints(clock.now - 50) == []


def test_contexts_waiting_for_samples_are_evicted_last(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=6)
    store.add_samples("hinted", None, [0] * 3, batch(3))
    store.add_samples("plain", None, [0] * 3, batch(3))
    store.add_hint("hinted", "feature", min_samples=5)

    result = store.add_samples("new", None, [0] * 4, batch(4))

    assert result.evicted_contexts == {"hinted": 1, "plain": 3}


def test_buffer_full_when_nothing_evictable_and_nothing_dropped(
    open_store: Callable[..., Store],
) -> None:
    store = open_store(max_samples=8)
    store.add_samples("a", None, [0] * 4, batch(4))
    store.add_samples("b", None, [0] * 3, batch(3))
    store.create_job("a")
    store.create_job("b", state="running")

    with pytest.raises(BufferFull, match="pending job") as caught:
        store.add_samples("c", None, [0] * 2, batch(2))

    assert caught.value.evictable_samples == 0
    assert caught.value.protected_contexts == ("a", "b")
    assert store.count_samples() == 7 and store.count_samples("c") == 0
    store.add_samples("c", None, [0], batch(1))  # what fits still goes in


def test_buffer_full_refuses_rather_than_evicting_part_of_what_is_needed(
    open_store: Callable[..., Store],
) -> None:
    store = open_store(max_samples=6)
    store.add_samples("protected", None, [0] * 4, batch(4))
    store.add_samples("free", None, [0] * 2, batch(2))
    store.create_job("protected")

    with pytest.raises(BufferFull):
        store.add_samples("new", None, [0] * 3, batch(3))
    assert store.count_samples("free") == 2  # the transaction evicted nothing


def test_byte_capacity_evicts_by_payload_bytes(open_store: Callable[..., Store]) -> None:
    store = open_store(max_bytes=100)
    store.add_samples("small", None, [0] * 10, batch(10, shape=(4,)))  # 40 bytes
    store.add_samples("big", None, [0] * 2, batch(2, shape=(30,)))  # 60 bytes

    result = store.add_samples("new", None, [0], batch(1, shape=(10,)))

    assert result.evicted_contexts == {"big": 1}  # the larger share of the bytes; 30 freed for 10 needed
    assert store.buffer_usage().bytes == 40 + 30 + 10


def test_a_batch_larger_than_the_buffer_is_refused(open_store: Callable[..., Store]) -> None:
    store = open_store(max_samples=4)
    with pytest.raises(BufferFull):
        store.add_samples("a", None, [0] * 5, batch(5))
    assert store.count_samples() == 0


def test_capacity_must_be_positive(db_path: Path) -> None:
    with pytest.raises(ValueError, match="max_samples"):
        Store.open(db_path, max_samples=0)


# --- hints and jobs ------------------------------------------------------------------------------


def test_hints_wait_until_a_job_takes_them(store: Store) -> None:
    first = store.add_hint("c", "input", min_samples=50)
    second = store.add_hint("c", "input")
    store.add_hint("other", None, block="bn")
    assert [h.id for h in store.waiting_hints("c")] == [first.id, second.id]

    job = store.create_job("c", drift_type="input", requested_by="hint", hint_ids=[first.id])
    store.link_hints([second.id], job.id)

    assert store.waiting_hints("c") == []
    assert [h.id for h in store.list_hints(job_id=job.id)] == [first.id, second.id]
    assert [h.block for h in store.waiting_hints()] == ["bn"]


def test_job_life_cycle(store: Store) -> None:
    job = store.create_job(
        "c", block="block1", drift_type="input", requested_by="api", params={"epochs": 3}
    )
    assert job.state == "queued" and job.pending and job.params == {"epochs": 3}
    assert store.pending_job_for_context("c") == job
    assert store.next_queued_job() == job

    running = store.claim_next_job()
    assert running is not None and running.state == "running" and running.started_at is not None
    assert store.claim_next_job() is None

    progress = store.update_job(running.id, progress={"epoch": 1, "loss": 0.5}, sample_ids=[1, 2])
    assert progress.progress == {"epoch": 1, "loss": 0.5} and progress.sample_ids == [1, 2]

    done = store.update_job(
        running.id, state="succeeded", accuracy_before=0.5, accuracy_after=0.75,
        model_version_in=1, model_version_out=2, decision={"promoted": True},
    )  # fmt: skip
    assert done.finished_at is not None and not done.pending
    assert store.pending_job_for_context("c") is None
    assert store.get_job(running.id) == done


def test_transition_job_is_compare_and_set(store: Store) -> None:
    job = store.create_job("c")
    cancelled = store.transition_job(job.id, PENDING_STATES, "cancelled")
    assert cancelled is not None and cancelled.state == "cancelled"
    assert store.transition_job(job.id, PENDING_STATES, "running") is None
    assert store.get_job(job.id).state == "cancelled"


def test_job_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_job(99)
    with pytest.raises(NotFound):
        store.update_job(99, state="failed")
    job = store.create_job("c")
    with pytest.raises(ValueError, match="unknown job state"):
        store.update_job(job.id, state="exploded")
    with pytest.raises(ValueError, match="cannot update job column"):
        store.update_job(job.id, id=5)


def test_list_jobs_filters_newest_first(store: Store) -> None:
    a1 = store.create_job("a")
    b1 = store.create_job("b", state="running")
    a2 = store.create_job("a", state="failed")
    assert [j.id for j in store.list_jobs()] == [a2.id, b1.id, a1.id]
    assert [j.id for j in store.list_jobs(context="a")] == [a2.id, a1.id]
    assert [j.id for j in store.list_jobs(state=PENDING_STATES)] == [b1.id, a1.id]
    assert [j.id for j in store.list_jobs(state="failed", context="a")] == [a2.id]
    assert len(store.list_jobs(limit=1)) == 1


def test_running_jobs_become_interrupted_after_a_crash(open_store: Callable[..., Store]) -> None:
    before = open_store()
    running = before.create_job("a", block="fc", params={"epochs": 2})
    before.claim_next_job()
    queued = before.create_job("b")
    finished = before.create_job("c", state="succeeded")
    before.close()  # the daemon died with a job running

    after = open_store()
    assert after.mark_running_jobs_interrupted() == [running.id]

    interrupted = after.get_job(running.id)
    assert interrupted.state == "interrupted" and interrupted.error == INTERRUPTED_ERROR
    assert interrupted.finished_at is not None
    assert after.get_job(queued.id).state == "queued"
    assert after.get_job(finished.id).state == "succeeded"
    assert after.mark_running_jobs_interrupted() == []


def test_interrupted_jobs_can_be_requeued(store: Store) -> None:
    job = store.create_job("a", block="fc", drift_type="output", params={"epochs": 2})
    store.claim_next_job()

    assert store.mark_running_jobs_interrupted(requeue=True) == [job.id]

    retry = store.pending_job_for_context("a")
    assert retry is not None and retry.state == "queued" and retry.retry_of == job.id
    assert (retry.block, retry.drift_type, retry.params) == ("fc", "output", {"epochs": 2})
    assert retry.requested_by == "requeue"


# --- energy --------------------------------------------------------------------------------------


def test_energy_log_filters_and_power_trace(open_store: Callable[..., Store]) -> None:
    clock = FakeClock()
    store = open_store(clock=clock)
    jobs = [
        store.create_job("kitchen", block="block1", drift_type="input"),
        store.create_job("kitchen", block="fc", drift_type="output"),
        store.create_job("garden", block="block1", drift_type="input"),
    ]
    for i, job in enumerate(jobs):
        clock.now = 1_700_000_000.0 + 100 * i
        meter = "UM25C@/dev/ttyUSB0"
        trace = [(0.0, 5.0, meter), (0.5, 6.0, meter), (1.0, 4.0, "estimate:pi4")]
        summary = {
            "joules": 10.0 + i, "net_joules": 4.0, "seconds": 2.0, "mean_watts": 5.0,
            "peak_watts": 6.0, "baseline_watts": 3.0, "source": "UM25C@/dev/ttyUSB0",
            "counter_joules": 10.5, "low_confidence": i == 2, "samples": 3,
            "gaps": [{"start_seconds": 0.6, "end_seconds": 0.9}], "rate_hz": 2.0, "trace": trace,
        }  # fmt: skip
        store.save_energy(job.id, summary)

    everything = store.energy_log()
    assert [e.job_id for e in everything] == [j.id for j in jobs]
    first = everything[0]
    assert (first.context, first.block, first.drift_type) == ("kitchen", "block1", "input")
    assert first.joules == 10.0 and first.source == "UM25C@/dev/ttyUSB0"
    assert first.gaps == [{"start_seconds": 0.6, "end_seconds": 0.9}]
    assert first.details == {"rate_hz": 2.0} and everything[2].low_confidence

    assert [e.job_id for e in store.energy_log(context="kitchen")] == [jobs[0].id, jobs[1].id]
    assert [e.job_id for e in store.energy_log(block="block1")] == [jobs[0].id, jobs[2].id]
    assert [e.job_id for e in store.energy_log(drift_type="output")] == [jobs[1].id]
    assert [e.job_id for e in store.energy_log(since=1_700_000_100.0)] == [jobs[1].id, jobs[2].id]
    until = datetime.fromtimestamp(1_700_000_100.0, tz=UTC)
    assert [e.job_id for e in store.energy_log(until=until)] == [jobs[0].id]
    assert store.energy_log(context="kitchen", block="block1", since=1_700_000_050.0) == []

    points = store.power_trace(jobs[0].id)
    assert [tuple(p) for p in points] == trace
    assert points[0].t_seconds == 0.0 and points[2].source == "estimate:pi4"
    assert store.power_trace(store.create_job("none").id) == []
    with pytest.raises(NotFound):
        store.power_trace(999)


def test_save_energy_replaces_and_checks(store: Store) -> None:
    job = store.create_job("c")
    store.save_energy(job.id, {"joules": 1.0, "seconds": 1.0, "source": "a"}, [(0.0, 1.0, "a")])
    store.save_energy(job.id, {"joules": 2.0, "seconds": 1.0, "source": "b"}, [])
    record = store.get_energy(job.id)
    assert record is not None and record.joules == 2.0 and record.source == "b"
    assert store.power_trace(job.id) == []
    with pytest.raises(ValueError, match="joules"):
        store.save_energy(job.id, {"seconds": 1.0, "source": "a"})
    with pytest.raises(NotFound):
        store.save_energy(999, {"joules": 1.0, "seconds": 1.0, "source": "a"})


# --- model versions ------------------------------------------------------------------------------


def test_exactly_one_version_is_active(store: Store) -> None:
    assert store.active_version() is None
    v1 = store.add_model_version("models/v1.pt", activate=True, accuracy={"val": 0.8})
    v2 = store.add_model_version("models/v2.pt", parent_version=v1, notes="kitchen fc")
    v3 = store.add_model_version("models/v3.pt", parent_version=v2, activate=True)

    def active() -> list[int]:
        return [v.version for v in store.list_versions() if v.active]

    assert active() == [v3]
    assert store.activate(v1).active and active() == [v1]  # rollback
    with pytest.raises(NotFound):
        store.activate(99)
    assert active() == [v1]  # a failed activation changes nothing
    assert store.get_version(v1).accuracy == {"val": 0.8}
    assert store.get_version(v2).notes == "kitchen fc"
    # SQLite itself refuses a second active version, whoever writes the file.
    with pytest.raises(sqlite3.IntegrityError):
        store.write(lambda db: db.execute("UPDATE model_versions SET active = 1"))
    assert active() == [v1]


def test_prune_keeps_the_newest_of_a_scope_the_base_and_every_active(store: Store) -> None:
    base = store.add_model_version("models/base.pt", activate=True)
    jobs = [store.create_job("cam").id for _ in range(8)]
    cam = [store.add_model_version(f"models/job-{j}.delta.npz", scope="cam", delta_of=base, job_id=j)
           for j in jobs[:6]]
    other = [store.add_model_version(f"models/job-{j}.delta.npz", scope="other", delta_of=base, job_id=j)
             for j in jobs[6:]]
    store.activate(cam[0], "cam")
    store.activate(cam[1], "hall")  # another scope serves one of cam's versions

    pruned = store.prune_versions(keep=2, scope="cam")

    assert [v.version for v in pruned] == cam[2:4]
    assert [v.path for v in pruned] == [f"models/job-{j}.delta.npz" for j in jobs[2:4]]
    assert [v.version for v in store.list_versions("cam")] == [cam[5], cam[4], cam[1], cam[0], base]
    assert [v.version for v in store.list_versions("other")] == [*reversed(other), base]
    assert [v.version for v in store.prune_versions(keep=1, scope="cam")] == [cam[4]]
    assert store.get_version(base).active  # the base survives every prune
    assert store.prune_versions(keep=1) == []  # nothing without a scope but the base
    # Numbers are never reused, so a version seen by /predict always names the same weights.
    assert store.add_model_version("models/x.pt") == other[-1] + 1
    with pytest.raises(ValueError):
        store.prune_versions(keep=0)


def test_each_scope_has_its_own_active_version(store: Store) -> None:
    base = store.add_model_version("models/base.pt", activate=True)
    job = store.create_job("cam").id
    mine = store.add_model_version("models/a.delta.npz", scope="cam", delta_of=base, job_id=job, activate=True)

    assert store.scope_versions() == {"cam": mine}
    active = store.active_version()
    assert active is not None and active.version == base  # the default did not move
    store.activate(base, "cam")  # roll the scope back to the base
    assert store.scope_versions() == {"cam": base}
    with pytest.raises(NotFound):
        store.activate(999, "cam")
    assert store.get_version(mine).scope == "cam" and store.get_version(mine).delta_of == base


def test_a_database_of_schema_1_is_migrated_keeping_its_data(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    from service.store import _MIGRATIONS

    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO model_versions (path, created_at, active) VALUES ('models/base.pt', 1, 0)")
    conn.execute("INSERT INTO jobs (context, state, created_at, updated_at) VALUES ('cam', 'succeeded', 1, 1)")
    conn.execute("INSERT INTO model_versions (path, job_id, created_at, active) VALUES ('models/job-1.pt', 1, 2, 1)")
    conn.execute("INSERT INTO drift_hints (context, drift_type, created_at) VALUES ('cam', 'input', 3)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    with Store.open(db_path) as store:
        assert store.connection_settings()["user_version"] == SCHEMA_VERSION
        active = store.active_version()
        assert active is not None and active.path == "models/job-1.pt"  # still what every context serves
        base = store.base_version()
        assert base is not None and base.path == "models/base.pt" and base.scope is None
        assert store.scope_versions() == {}
        assert [h.state for h in store.list_hints()] == ["waiting"]



# --- durability and life cycle -------------------------------------------------------------------


def test_everything_survives_a_restart(open_store: Callable[..., Store], db_path: Path) -> None:
    first = open_store(max_samples=100)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    ids = first.add_samples("c", "dev", [3, 4], x).ids
    hint = first.add_hint("c", "feature")
    job = first.create_job("c", block="block3", hint_ids=[hint.id])
    first.save_energy(job.id, {"joules": 3.0, "seconds": 1.0, "source": "s"}, [(0.0, 3.0, "s")])
    version = first.add_model_version("models/v1.pt", job_id=job.id, activate=True)
    first.close()

    second = open_store(max_samples=100)
    loaded, y, loaded_ids = second.load_samples("c")
    assert np.array_equal(loaded, x) and list(y) == [3, 4] and loaded_ids == ids
    assert second.get_job(job.id) == job
    assert second.list_hints(job_id=job.id)[0].id == hint.id
    energy = second.get_energy(job.id)
    assert energy is not None and energy.joules == 3.0
    assert second.power_trace(job.id) == [(0.0, 3.0, "s")]
    active = second.active_version()
    assert active is not None and active.version == version
    assert second.connection_settings()["user_version"] == SCHEMA_VERSION


def test_a_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(db_path)


def test_close_stops_the_writer_and_closes_every_connection(
    db_path: Path, no_leaked_connections: list[sqlite3.Connection]
) -> None:
    store = Store.open(db_path)
    store.add_samples("c", None, [0], batch(1))

    def read_in_thread() -> None:
        assert store.count_samples() == 1

    threads = [threading.Thread(target=read_in_thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_samples() == 1
    assert len(no_leaked_connections) >= 5  # the writer, three dead threads' readers, this one
    assert store.writer_thread.is_alive()

    store.close()

    assert not store.writer_thread.is_alive()
    for conn in no_leaked_connections:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    with pytest.raises(StoreClosed):
        store.count_samples()
    with pytest.raises(StoreClosed):
        store.create_job("c")
    store.close()  # idempotent


def test_readers_of_finished_threads_are_closed_as_new_ones_open(
    store: Store, no_leaked_connections: list[sqlite3.Connection]
) -> None:
    for _ in range(5):
        t = threading.Thread(target=store.count_samples)
        t.start()
        t.join()
    store.count_samples()  # this thread's reader; the dead threads' are closed now
    open_now = []
    for conn in no_leaked_connections:
        try:
            conn.in_transaction  # noqa: B018
        except sqlite3.ProgrammingError:
            continue
        open_now.append(conn)
    assert len(open_now) == 2  # the writer and this thread's reader


def test_store_does_not_import_torch() -> None:
    code = "import sys, service.store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
