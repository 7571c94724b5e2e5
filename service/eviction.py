"""Fair sample buffers: quotas per context and per device, and what a full buffer gives up first.

One SQLite table holds every context's samples, so without rules one chatty device fills it and
pushes every other context out. :func:`make_room` runs inside the store's write transaction before
a batch is inserted and applies, in order:

1. **Device quota** (``max_device_samples``): a device may hold that many samples across contexts.
   Over it, the device's own samples that a job has already trained on go first; if that is not
   enough the batch is refused with 429 (:class:`QuotaExceeded`): the device must wait for a job
   to use what it sent.
2. **Context quota** (``max_context_samples``): a context keeps its newest samples, as a ring:
   its consumed samples go first, then its oldest. A context whose samples a pending job holds
   cannot give any up, and the batch is refused with 507.
3. **Buffer capacity** (``max_buffer_samples``, ``max_buffer_bytes``): samples already consumed
   by a succeeded job go first, oldest first, from any context; then unconsumed samples are taken
   from whichever context holds the largest share of the buffer (so the chatty context pays, not the
   quiet ones), contexts with a hint waiting for samples last. If even that is not enough the batch
   is refused with 507 (:class:`BufferFull`).

Contexts with a pending (queued or running) job are never touched: the job trains on their
samples. A sample is *consumed* once a succeeded job of its context trained on it (its id is at or
below the last sample id the job recorded). Nothing here commits: an exception rolls the caller's
savepoint back, so a refused batch evicts nothing.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class BufferLimits:
    """The buffer's capacity and quotas; None means no limit."""

    max_samples: int | None = None
    max_bytes: int | None = None
    max_context_samples: int | None = None
    max_device_samples: int | None = None


@dataclass(frozen=True)
class Eviction:
    """Samples one rule evicted from one context: how many, how many of them were consumed, why."""

    context: str
    samples: int
    consumed: int
    bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"context": self.context, "samples": self.samples, "consumed": self.consumed, "bytes": self.bytes,
                "reason": self.reason}


class RoomMade(NamedTuple):
    """What :func:`make_room` evicted, and the samples and payload bytes buffered after it."""

    evictions: list[Eviction]
    samples: int
    bytes: int


class StoreRefusal(Exception):
    """A batch refused by a buffer rule; nothing was written or evicted. ``status`` is the HTTP
    status the API answers, ``field`` the request field at fault, ``quota`` the setting met."""

    status = 507
    field: str | None = None
    quota: str | None = None


class BufferFull(StoreRefusal):
    """A batch does not fit: evicting every evictable sample would not make room for it.

    Nothing was written or evicted. The API answers 507. Attributes say by how much.
    """

    def __init__(
        self,
        message: str,
        *,
        batch_samples: int,
        batch_bytes: int,
        evictable_samples: int,
        evictable_bytes: int,
        protected_contexts: tuple[str, ...],
        quota: str = "max_buffer_samples",
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.batch_samples = batch_samples
        self.batch_bytes = batch_bytes
        self.evictable_samples = evictable_samples
        self.evictable_bytes = evictable_bytes
        self.protected_contexts = protected_contexts


class QuotaExceeded(StoreRefusal):
    """A batch over a context's or a device's quota that eviction cannot bring under it.

    ``quota`` names the setting, ``limit`` its value and ``held`` what the context or device holds.
    A device answers 429 (wait for a job to consume its samples), a context 507.
    """

    def __init__(self, message: str, *, quota: str, limit: int, held: int, status: int, field: str) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.held = held
        self.status = status
        self.field = field


@dataclass
class _Victims:
    """Sample ids chosen for eviction, with what is recorded about them."""

    ids: set[int] = field(default_factory=set)
    evictions: list[Eviction] = field(default_factory=list)

    def taken_from(self, context: str) -> int:
        """Samples of ``context`` taken so far."""
        return sum(e.samples for e in self.evictions if e.context == context)

    def add(self, rows: Iterable[tuple[int, str, int, bool]], reason: str) -> None:
        """Take ``(id, context, bytes, consumed)`` rows not already taken."""
        per_context: dict[str, list[int]] = {}
        for sample_id, context, nbytes, consumed in rows:
            if sample_id in self.ids:
                continue
            self.ids.add(sample_id)
            counts = per_context.setdefault(context, [0, 0, 0])
            counts[0] += 1
            counts[1] += int(consumed)
            counts[2] += nbytes
        for context, (samples, consumed_count, nbytes) in sorted(per_context.items()):
            self.evictions.append(Eviction(context, samples, consumed_count, nbytes, reason))


def consumed_up_to(conn: sqlite3.Connection) -> dict[str, int]:
    """Per context, the last sample id a succeeded job trained on."""
    rows = conn.execute(
        "SELECT context, max(json_extract(sample_ids, '$[1]')) FROM jobs "
        "WHERE state = 'succeeded' AND sample_ids IS NOT NULL GROUP BY context"
    )
    return {context: int(upto) for context, upto in rows if upto is not None}


def make_room(
    conn: sqlite3.Connection,
    limits: BufferLimits,
    *,
    context: str,
    device_id: str | None,
    batch_samples: int,
    batch_bytes: int,
    protected: tuple[str, ...],
) -> RoomMade:
    """Delete what a batch of ``context`` (from ``device_id``) needs deleted under the rules in the
    module docstring, never from the ``protected`` contexts (those with a pending job), and return
    what was deleted; raises :class:`QuotaExceeded` or :class:`BufferFull` (having deleted
    nothing) when the batch cannot go in."""
    upto = consumed_up_to(conn)
    victims = _Victims()
    if device_id is not None and limits.max_device_samples is not None:
        _device_quota(conn, limits.max_device_samples, device_id, batch_samples, protected, upto, victims)
    if limits.max_context_samples is not None:
        _context_quota(conn, limits.max_context_samples, context, batch_samples, protected, upto, victims)
    used_samples, used_bytes = _capacity(conn, limits, batch_samples, batch_bytes, protected, upto, victims)
    if victims.ids:
        conn.execute("DELETE FROM samples WHERE id IN (SELECT value FROM json_each(?))",
                     (_json_ids(victims.ids),))
    return RoomMade(victims.evictions, used_samples - len(victims.ids),
                    used_bytes - sum(e.bytes for e in victims.evictions))


def _device_quota(conn: sqlite3.Connection, limit: int, device_id: str, batch_samples: int,
                  protected: tuple[str, ...], upto: dict[str, int], victims: _Victims) -> None:
    held = int(conn.execute("SELECT count(*) FROM samples WHERE device_id = ?", (device_id,)).fetchone()[0])
    excess = held + batch_samples - limit
    if excess <= 0:
        return
    consumed: list[tuple[int, str, int, bool]] = []
    rows = conn.execute("SELECT id, context, payload_bytes FROM samples WHERE device_id = ? ORDER BY id", (device_id,))
    for i, c, b in rows:  # read lazily: only as far as the oldest consumed ones it needs
        if c not in protected and i <= upto.get(c, 0):
            consumed.append((i, c, b, True))
            if len(consumed) == excess:
                break
    rows.close()
    if len(consumed) < excess:
        raise QuotaExceeded(
            f"device {device_id!r} holds {held} samples and max_device_samples is {limit}: a batch of "
            f"{batch_samples} would exceed its quota, and only {len(consumed)} of its samples have been trained "
            "on (those may be evicted); wait for a job to use its samples (POST /v1/drift), or raise "
            "max_device_samples",
            quota="max_device_samples", limit=limit, held=held, status=429, field="device_id")
    victims.add(consumed[:excess], f"device quota: device {device_id!r} over max_device_samples {limit}")


def _context_quota(conn: sqlite3.Connection, limit: int, context: str, batch_samples: int,
                   protected: tuple[str, ...], upto: dict[str, int], victims: _Victims) -> None:
    held = _count(conn, context) - victims.taken_from(context)
    excess = held + batch_samples - limit
    if excess <= 0:
        return
    if batch_samples > limit or context in protected:
        why = (f"a batch of {batch_samples} is larger than the quota" if batch_samples > limit else
               "a pending job holds its samples, so none can be evicted until it ends")
        raise QuotaExceeded(
            f"context {context!r} holds {held} samples and max_context_samples is {limit}: {why}",
            quota="max_context_samples", limit=limit, held=held, status=507, field="context")
    # Consumed first, then the oldest: a context's buffer is a ring of its newest samples.
    ordered = _oldest(conn, context, upto.get(context, 0), True, excess, victims.ids)
    ordered += _oldest(conn, context, upto.get(context, 0), False, excess - len(ordered), victims.ids)
    victims.add(ordered, f"context quota: context {context!r} over max_context_samples {limit}")


def _capacity(conn: sqlite3.Connection, limits: BufferLimits, batch_samples: int, batch_bytes: int,
              protected: tuple[str, ...], upto: dict[str, int], victims: _Victims) -> tuple[int, int]:
    """The buffer rule; returns the samples and bytes buffered before any rule evicted."""
    # Counts come from the covering index (context, id, payload_bytes); sample rows are read only
    # for the contexts and as many as eviction takes, so a full buffer costs little per batch.
    stats = {c: (int(n), int(b)) for c, n, b in conn.execute(
        "SELECT context, count(*), coalesce(sum(payload_bytes), 0) FROM samples GROUP BY context")}
    used_samples = sum(n for n, _ in stats.values())
    used_bytes = sum(b for _, b in stats.values())
    free_samples = len(victims.ids)
    free_bytes = sum(e.bytes for e in victims.evictions)
    excess_samples = used_samples - free_samples + batch_samples - limits.max_samples if limits.max_samples else 0
    excess_bytes = used_bytes - free_bytes + batch_bytes - limits.max_bytes if limits.max_bytes else 0
    if excess_samples <= 0 and excess_bytes <= 0:
        return used_samples, used_bytes
    candidates = {c: (n, b // n) for c, (n, b) in stats.items() if c not in protected and n}
    smallest = min((size for _, size in candidates.values()), default=1) or 1
    needed = max(excess_samples, -(-excess_bytes // smallest), 1)
    consumed = sorted(row for c in candidates if upto.get(c, 0)
                      for row in _oldest(conn, c, upto[c], True, needed, victims.ids))
    freed_samples = freed_bytes = 0
    chosen: list[tuple[int, str, int, bool]] = []
    for row in consumed:
        if freed_samples >= excess_samples and freed_bytes >= excess_bytes:
            break
        chosen.append(row)
        freed_samples += 1
        freed_bytes += row[2]
    victims.add(chosen, _capacity_reason(limits, "samples a job has trained on go first"))
    if freed_samples >= excess_samples and freed_bytes >= excess_bytes:
        return used_samples, used_bytes
    left = {c: n - victims.taken_from(c) - _count(conn, c, upto.get(c, 0)) + _taken_consumed(victims, c)
            for c, (n, _) in candidates.items()}
    left = {c: n for c, n in left.items() if n > 0}
    waiting = {row[0] for row in conn.execute(
        "SELECT DISTINCT context FROM drift_hints WHERE job_id IS NULL AND expired_at IS NULL")}
    # Contexts a hint waits on last (a job for them is near); then the largest share of the
    # buffer first, and among equals the one holding the oldest sample.
    oldest = {c: conn.execute("SELECT min(id) FROM samples WHERE context = ? AND id > ?",
                              (c, upto.get(c, 0))).fetchone()[0] for c in left}
    heap = [(c in waiting, -_share(limits, n, candidates[c][1]), oldest[c], c) for c, n in left.items()]
    heapq.heapify(heap)
    taken: dict[str, int] = {}
    while heap and (freed_samples < excess_samples or freed_bytes < excess_bytes):
        hinted, _, first, c = heapq.heappop(heap)
        taken[c] = taken.get(c, 0) + 1
        freed_samples += 1
        freed_bytes += candidates[c][1]
        if taken[c] < left[c]:
            heapq.heappush(heap, (hinted, -_share(limits, left[c] - taken[c], candidates[c][1]), first, c))
    if freed_samples < excess_samples or freed_bytes < excess_bytes:
        evictable_samples = free_samples + sum(left.values()) + len(chosen)
        evictable_bytes = free_bytes + sum(n * candidates[c][1] for c, n in left.items()) + sum(r[2] for r in chosen)
        raise BufferFull(
            f"sample buffer full: {used_samples} of {limits.max_samples or 'unlimited'} samples, "
            f"{used_bytes} of {limits.max_bytes or 'unlimited'} bytes in use; a batch of "
            f"{batch_samples} samples ({batch_bytes} bytes) does not fit even after evicting "
            f"all {evictable_samples} evictable samples; samples of contexts with a pending "
            f"job are kept ({', '.join(map(repr, protected)) or 'none'})",
            batch_samples=batch_samples, batch_bytes=batch_bytes, evictable_samples=evictable_samples,
            evictable_bytes=evictable_bytes, protected_contexts=protected,
            quota="max_buffer_samples" if freed_samples < excess_samples else "max_buffer_bytes")
    victims.add((row for c, count in taken.items()
                 for row in _oldest(conn, c, upto.get(c, 0), False, count, victims.ids)),
                _capacity_reason(limits, "the oldest samples of the contexts holding the most"))
    return used_samples, used_bytes


def _count(conn: sqlite3.Connection, context: str, up_to_id: int | None = None) -> int:
    """Samples of ``context`` (only those with ids up to ``up_to_id``), from the index."""
    if up_to_id is None:
        return int(conn.execute("SELECT count(*) FROM samples WHERE context = ?", (context,)).fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM samples WHERE context = ? AND id <= ?",
                            (context, up_to_id)).fetchone()[0])


def _taken_consumed(victims: _Victims, context: str) -> int:
    return sum(e.consumed for e in victims.evictions if e.context == context)


def _oldest(conn: sqlite3.Connection, context: str, consumed_to: int, consumed: bool, count: int,
            skip: set[int]) -> list[tuple[int, str, int, bool]]:
    """Up to ``count`` of ``context``'s oldest consumed (or unconsumed) samples not in ``skip``,
    as ``(id, context, bytes, consumed)``."""
    if count <= 0:
        return []
    op = "<=" if consumed else ">"
    rows = conn.execute(f"SELECT id, payload_bytes FROM samples WHERE context = ? AND id {op} ? ORDER BY id LIMIT ?",
                        (context, consumed_to, count + len(skip)))
    return [(i, context, b, consumed) for i, b in rows if i not in skip][:count]


def _share(limits: BufferLimits, samples: int, sample_bytes: int) -> float:
    """The fraction of the buffer ``samples`` of ``sample_bytes`` each take (the larger of the
    sample and the byte fractions)."""
    by_count = samples / limits.max_samples if limits.max_samples else 0.0
    by_bytes = samples * sample_bytes / limits.max_bytes if limits.max_bytes else 0.0
    return max(by_count, by_bytes)


def _capacity_reason(limits: BufferLimits, order: str) -> str:
    caps = [f"max_buffer_samples {limits.max_samples}" if limits.max_samples else "",
            f"max_buffer_bytes {limits.max_bytes}" if limits.max_bytes else ""]
    return f"buffer full ({', '.join(c for c in caps if c)}): {order}"


def _json_ids(ids: Iterable[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in sorted(ids)) + "]"
