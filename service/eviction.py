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
from typing import Any

PENDING_SQL = "'queued', 'running'"


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


class StoreRefusal(Exception):
    """A batch refused by a buffer rule; nothing was written or evicted. ``status`` is the HTTP
    status the API answers, ``field`` the request field at fault."""

    status = 507
    field: str | None = None


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

    def add(self, rows: Iterable[tuple[int, str, int, bool]], reason: str) -> tuple[int, int]:
        """Take ``(id, context, bytes, consumed)`` rows not already taken; returns samples, bytes."""
        per_context: dict[str, list[int]] = {}
        taken_samples = taken_bytes = 0
        for sample_id, context, nbytes, consumed in rows:
            if sample_id in self.ids:
                continue
            self.ids.add(sample_id)
            counts = per_context.setdefault(context, [0, 0, 0])
            counts[0] += 1
            counts[1] += int(consumed)
            counts[2] += nbytes
            taken_samples += 1
            taken_bytes += nbytes
        for context, (samples, consumed_count, nbytes) in sorted(per_context.items()):
            self.evictions.append(Eviction(context, samples, consumed_count, nbytes, reason))
        return taken_samples, taken_bytes


def consumed_up_to(conn: sqlite3.Connection) -> dict[str, int]:
    """Per context, the last sample id a succeeded job trained on."""
    rows = conn.execute(
        "SELECT context, max(json_extract(sample_ids, '$[1]')) FROM jobs "
        "WHERE state = 'succeeded' AND sample_ids IS NOT NULL GROUP BY context"
    )
    return {context: int(upto) for context, upto in rows if upto is not None}


def protected_contexts(conn: sqlite3.Connection) -> tuple[str, ...]:
    """Contexts with a pending job, whose samples are never evicted."""
    rows = conn.execute(f"SELECT DISTINCT context FROM jobs WHERE state IN ({PENDING_SQL}) ORDER BY context")
    return tuple(row[0] for row in rows)


def make_room(
    conn: sqlite3.Connection,
    limits: BufferLimits,
    *,
    context: str,
    device_id: str | None,
    batch_samples: int,
    batch_bytes: int,
) -> list[Eviction]:
    """Delete what a batch of ``context`` (from ``device_id``) needs deleted under the rules in the
    module docstring, and return what was deleted; raises :class:`QuotaExceeded` or
    :class:`BufferFull` (having deleted nothing) when the batch cannot go in."""
    protected = protected_contexts(conn)
    upto = consumed_up_to(conn)
    victims = _Victims()
    if device_id is not None and limits.max_device_samples is not None:
        _device_quota(conn, limits.max_device_samples, device_id, batch_samples, protected, upto, victims)
    if limits.max_context_samples is not None:
        _context_quota(conn, limits.max_context_samples, context, batch_samples, protected, upto, victims)
    _capacity(conn, limits, batch_samples, batch_bytes, protected, upto, victims)
    if victims.ids:
        conn.execute("DELETE FROM samples WHERE id IN (SELECT value FROM json_each(?))",
                     (_json_ids(victims.ids),))
    return victims.evictions


def _device_quota(conn: sqlite3.Connection, limit: int, device_id: str, batch_samples: int,
                  protected: tuple[str, ...], upto: dict[str, int], victims: _Victims) -> None:
    held = int(conn.execute("SELECT count(*) FROM samples WHERE device_id = ?", (device_id,)).fetchone()[0])
    excess = held + batch_samples - limit
    if excess <= 0:
        return
    rows = conn.execute("SELECT id, context, payload_bytes FROM samples WHERE device_id = ? ORDER BY id", (device_id,))
    consumed = [(i, c, b, True) for i, c, b in rows if c not in protected and i <= upto.get(c, 0)]
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
    rows = conn.execute("SELECT id, payload_bytes FROM samples WHERE context = ? ORDER BY id", (context,)).fetchall()
    held = sum(1 for sample_id, _ in rows if sample_id not in victims.ids)
    excess = held + batch_samples - limit
    if excess <= 0:
        return
    if batch_samples > limit or context in protected:
        why = (f"a batch of {batch_samples} is larger than the quota" if batch_samples > limit else
               "a pending job holds its samples, so none can be evicted until it ends")
        raise QuotaExceeded(
            f"context {context!r} holds {held} samples and max_context_samples is {limit}: {why}",
            quota="max_context_samples", limit=limit, held=held, status=507, field="context")
    consumed_to = upto.get(context, 0)
    # Consumed first, then the oldest: a context's buffer is a ring of its newest samples.
    ordered = sorted(((i, context, b, i <= consumed_to) for i, b in rows if i not in victims.ids),
                     key=lambda row: (not row[3], row[0]))
    victims.add(ordered[:excess], f"context quota: context {context!r} over max_context_samples {limit}")


def _capacity(conn: sqlite3.Connection, limits: BufferLimits, batch_samples: int, batch_bytes: int,
              protected: tuple[str, ...], upto: dict[str, int], victims: _Victims) -> None:
    used_samples, used_bytes = conn.execute(
        "SELECT count(*), coalesce(sum(payload_bytes), 0) FROM samples").fetchone()
    taken_bytes = _taken_bytes(conn, victims.ids)
    excess_samples = used_samples - len(victims.ids) + batch_samples - (limits.max_samples or 0) \
        if limits.max_samples else 0
    excess_bytes = used_bytes - taken_bytes + batch_bytes - (limits.max_bytes or 0) if limits.max_bytes else 0
    if excess_samples <= 0 and excess_bytes <= 0:
        return
    rows = [(i, c, b) for i, c, b in conn.execute("SELECT id, context, payload_bytes FROM samples ORDER BY id")
            if c not in protected and i not in victims.ids]
    consumed = [(i, c, b, True) for i, c, b in rows if i <= upto.get(c, 0)]
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
        return
    unconsumed: dict[str, list[tuple[int, int]]] = {}
    for i, c, b in rows:
        if i > upto.get(c, 0):
            unconsumed.setdefault(c, []).append((i, b))
    waiting = {row[0] for row in conn.execute(
        "SELECT DISTINCT context FROM drift_hints WHERE job_id IS NULL AND expired_at IS NULL")}
    # Contexts a hint waits on last (a job for them is near); then the largest share of the
    # buffer first, and among equals the oldest sample first.
    heap = [(c in waiting, -_share(limits, len(samples), samples[0][1]), samples[0][0], c)
            for c, samples in unconsumed.items()]
    heapq.heapify(heap)
    taken: dict[str, int] = {}
    while heap and (freed_samples < excess_samples or freed_bytes < excess_bytes):
        hinted, _, _, c = heapq.heappop(heap)
        index = taken.get(c, 0)
        sample_id, nbytes = unconsumed[c][index]
        taken[c] = index + 1
        freed_samples += 1
        freed_bytes += nbytes
        if taken[c] < len(unconsumed[c]):
            left = len(unconsumed[c]) - taken[c]
            heapq.heappush(heap, (hinted, -_share(limits, left, nbytes), unconsumed[c][taken[c]][0], c))
    if freed_samples < excess_samples or freed_bytes < excess_bytes:
        evictable_samples = len(rows)
        evictable_bytes = sum(b for _, _, b in rows)
        raise BufferFull(
            f"sample buffer full: {used_samples} of {limits.max_samples or 'unlimited'} samples, "
            f"{used_bytes} of {limits.max_bytes or 'unlimited'} bytes in use; a batch of "
            f"{batch_samples} samples ({batch_bytes} bytes) does not fit even after evicting "
            f"all {evictable_samples} evictable samples; samples of contexts with a pending "
            f"job are kept ({', '.join(map(repr, protected)) or 'none'})",
            batch_samples=batch_samples, batch_bytes=batch_bytes, evictable_samples=evictable_samples,
            evictable_bytes=evictable_bytes, protected_contexts=protected,
            quota="max_buffer_samples" if freed_samples < excess_samples else "max_buffer_bytes")
    victims.add(((sample_id, c, nbytes, False) for c, count in taken.items()
                 for sample_id, nbytes in unconsumed[c][:count]),
                _capacity_reason(limits, "the oldest samples of the contexts holding the most"))


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


def _taken_bytes(conn: sqlite3.Connection, ids: set[int]) -> int:
    if not ids:
        return 0
    return int(conn.execute("SELECT coalesce(sum(payload_bytes), 0) FROM samples WHERE id IN "
                            "(SELECT value FROM json_each(?))", (_json_ids(ids),)).fetchone()[0])


def _json_ids(ids: Iterable[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in sorted(ids)) + "]"
