"""The power-cut simulator loses what was never fsynced and keeps what was; tests built on it rely
on both, so each is shown here on real files and real SQLite through a real FUSE mount."""

from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.files import PARTIAL_PREFIX, atomic_write_bytes
from tests.powercut_fs import PAGE_BYTES, PowerCutMount, PowerCutStats, fuse_available


@pytest.fixture(scope="module", autouse=True)
def _needs_fuse() -> None:
    reason = fuse_available()
    if reason is not None:
        pytest.skip(f"power-cut file system unavailable: {reason}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerCutMount]:
    with PowerCutMount(tmp_path / "backing", tmp_path / "mnt") as mount:
        yield mount
    assert not mount.mounted


def power_cycle(disk: PowerCutMount) -> None:
    """Pull the plug and boot again on the same disk."""
    disk.cut()
    disk.start()


def write_file(path: Path, data: bytes, *, fsync: bool) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


def pattern(size_bytes: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size_bytes))


def test_unsynced_write_is_lost_at_a_cut(disk: PowerCutMount) -> None:
    path = disk.mountpoint / "a.bin"
    write_file(path, b"not yet durable", fsync=False)
    assert path.read_bytes() == b"not yet durable"  # read-your-writes before the cut
    assert (disk.backing / "a.bin").stat().st_size == 0

    power_cycle(disk)

    assert path.exists()  # the create was metadata, durable at once
    assert path.read_bytes() == b""


def test_fsynced_write_survives_a_cut(disk: PowerCutMount) -> None:
    data = pattern(3 * PAGE_BYTES + 123)
    write_file(disk.mountpoint / "a.bin", data, fsync=True)

    power_cycle(disk)

    assert (disk.mountpoint / "a.bin").read_bytes() == data


def test_only_the_synced_part_survives(disk: PowerCutMount) -> None:
    path = disk.mountpoint / "a.bin"
    synced = pattern(2 * PAGE_BYTES + 500)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, synced, 0)
        os.fsync(fd)
        os.pwrite(fd, b"X" * 300, PAGE_BYTES - 100)  # overwrites across a page boundary
        os.pwrite(fd, b"appended", len(synced))
        assert os.pread(fd, 300, PAGE_BYTES - 100) == b"X" * 300
        assert os.fstat(fd).st_size == len(synced) + len(b"appended")
    finally:
        os.close(fd)

    power_cycle(disk)

    assert path.read_bytes() == synced


def test_rename_of_unsynced_data_leaves_an_empty_file(disk: PowerCutMount) -> None:
    target = disk.mountpoint / "model.bin"
    atomic_write_bytes(target, b"old model")
    temp = disk.mountpoint / "model.bin.tmp"
    write_file(temp, b"new model", fsync=False)
    os.replace(temp, target)
    assert target.read_bytes() == b"new model"

    power_cycle(disk)

    # The rename was durable at once, the data it pointed at never was: the old model is gone too.
    assert target.read_bytes() == b""
    assert not temp.exists()


def test_atomic_write_survives_a_cut(disk: PowerCutMount) -> None:
    target = disk.mountpoint / "model.bin"
    atomic_write_bytes(target, b"old model")
    atomic_write_bytes(target, b"new model")

    power_cycle(disk)

    assert target.read_bytes() == b"new model"
    assert [p.name for p in disk.mountpoint.iterdir() if p.name.startswith(PARTIAL_PREFIX)] == []


def test_unsynced_truncations_are_undone_by_a_cut(disk: PowerCutMount) -> None:
    path = disk.mountpoint / "a.bin"
    data = pattern(3 * PAGE_BYTES)
    write_file(path, data, fsync=True)
    os.truncate(path, 100)
    with path.open("r+b") as handle:
        handle.truncate(PAGE_BYTES * 2)  # ftruncate: the cut-off bytes come back as zeros
        assert handle.read() == data[:100] + bytes(2 * PAGE_BYTES - 100)
    assert path.stat().st_size == 2 * PAGE_BYTES

    power_cycle(disk)

    assert path.read_bytes() == data
    path.open("wb").close()  # open with O_TRUNC
    assert path.stat().st_size == 0

    power_cycle(disk)

    assert path.read_bytes() == data


def test_renamed_file_keeps_its_pending_data_and_syncs_under_its_new_name(disk: PowerCutMount) -> None:
    write_file(disk.mountpoint / "old", b"carried along", fsync=False)
    os.rename(disk.mountpoint / "old", disk.mountpoint / "new")
    with (disk.mountpoint / "new").open("rb") as handle:
        assert handle.read() == b"carried along"
        os.fsync(handle.fileno())

    power_cycle(disk)

    assert (disk.mountpoint / "new").read_bytes() == b"carried along"


def test_files_unlinked_while_open_work_and_leave_nothing_after_a_cut(disk: PowerCutMount) -> None:
    fd = os.open(disk.mountpoint / "scratch", os.O_RDWR | os.O_CREAT, 0o600)
    os.unlink(disk.mountpoint / "scratch")
    os.write(fd, b"spill")
    assert os.fstat(fd).st_size == 5  # what tempfile.TemporaryFile needs
    assert os.pread(fd, 10, 0) == b"spill"
    assert any(p.name.startswith(".fuse_hidden") for p in disk.backing.iterdir())

    disk.cut()
    with contextlib.suppress(OSError):
        os.close(fd)  # closed, though the dead mount reports ENOTCONN
    disk.start()

    assert list(disk.mountpoint.iterdir()) == []


def test_shared_mmap_writes_are_durable_only_after_msync(disk: PowerCutMount) -> None:
    # SQLite's -shm is a shared mmap: the kernel writes its dirty pages back through the server.
    unsynced, synced = disk.mountpoint / "unsynced.bin", disk.mountpoint / "synced.bin"
    for path in (unsynced, synced):
        write_file(path, bytes(2 * PAGE_BYTES), fsync=True)
        with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
            mapped[PAGE_BYTES : PAGE_BYTES + 5] = b"mmap!"
            if path is synced:
                mapped.flush()  # msync(MS_SYNC): write back, then fsync
    expected = bytes(PAGE_BYTES) + b"mmap!" + bytes(PAGE_BYTES - 5)
    assert unsynced.read_bytes() == expected  # written back on close, not durable

    power_cycle(disk)

    assert unsynced.read_bytes() == bytes(2 * PAGE_BYTES)
    assert synced.read_bytes() == expected


def test_stats_count_fsyncs_and_pending_pages(disk: PowerCutMount) -> None:
    assert disk.stats() == PowerCutStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
    path = disk.mountpoint / "a.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, pattern(2 * PAGE_BYTES + 1))
        pending = disk.stats()
        assert (pending.pending_files, pending.pending_pages) == (1, 3)
        assert pending.pending_bytes == 3 * PAGE_BYTES
        assert pending.written_bytes == 2 * PAGE_BYTES + 1

        os.fsync(fd)
        synced = disk.stats()
        assert synced.fsyncs == 1
        assert (synced.pending_files, synced.pending_pages, synced.pending_bytes) == (0, 0, 0)
        assert synced.durable_bytes == 2 * PAGE_BYTES + 1

        os.write(fd, b"more")
        os.fdatasync(fd)
        assert (disk.stats().fsyncs, disk.stats().fdatasyncs) == (1, 1)
        # Whole pages are written back, cut at the end of the file: the last page's 1 + 4 bytes.
        assert disk.stats().durable_bytes == (2 * PAGE_BYTES + 1) + (1 + 4)
    finally:
        os.close(fd)
    # Unlinking the last name of a closed file forgets its unsynced data.
    write_file(disk.mountpoint / "b.bin", b"doomed", fsync=False)
    assert disk.stats().pending_files == 1
    (disk.mountpoint / "b.bin").unlink()
    assert disk.stats().pending_files == 0


def test_stop_writes_pending_data_back_and_cut_does_not(disk: PowerCutMount) -> None:
    write_file(disk.mountpoint / "kept", b"clean shutdown", fsync=False)
    disk.stop()
    assert not disk.mounted
    assert (disk.backing / "kept").read_bytes() == b"clean shutdown"

    disk.start()
    write_file(disk.mountpoint / "lost", b"power cut", fsync=False)
    disk.cut()
    assert not disk.mounted
    assert (disk.backing / "lost").read_bytes() == b""
    disk.start()
    assert (disk.mountpoint / "kept").read_bytes() == b"clean shutdown"


# --- SQLite in WAL mode ---------------------------------------------------------------------------

COMMITS = 20


def open_wal(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("PRAGMA wal_autocheckpoint = 0")  # nothing reaches the main file before the cut
    return db


def commit_rows(db: sqlite3.Connection, reader: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY, payload BLOB)")
    for i in range(COMMITS):
        db.execute("INSERT INTO samples (id, payload) VALUES (?, ?)", (i, pattern(300, seed=i)))
        # A second connection sees each commit: the WAL index in the -shm mmap works on the mount.
        assert reader.execute("SELECT count(*) FROM samples").fetchone()[0] == i + 1


def cut_under(disk: PowerCutMount, *connections: sqlite3.Connection) -> None:
    """Cut with the connections open, then drop them: their files are on the dead mount."""
    disk.cut()
    for db in connections:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    disk.start()


def test_sqlite_wal_without_fsync_loses_commits(disk: PowerCutMount) -> None:
    path = disk.mountpoint / "t.sqlite3"
    with contextlib.closing(open_wal(path, "FULL")) as setup:
        setup.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, payload BLOB)")  # durable
        db, reader = open_wal(path, "OFF"), sqlite3.connect(path)
        commit_rows(db, reader)
        cut_under(disk, db, reader, setup)

    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [row[0] for row in db.execute("SELECT id FROM samples")]
    assert COMMITS - 1 not in ids
    assert ids == []  # nothing after the table's own (fsynced) commit was ever synced


def test_sqlite_wal_with_full_sync_keeps_every_commit(disk: PowerCutMount) -> None:
    path = disk.mountpoint / "t.sqlite3"
    db, reader = open_wal(path, "FULL"), sqlite3.connect(path)
    commit_rows(db, reader)
    assert disk.stats().fsyncs + disk.stats().fdatasyncs >= COMMITS
    cut_under(disk, db, reader)

    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT id, payload FROM samples ORDER BY id").fetchall()
    assert rows == [(i, pattern(300, seed=i)) for i in range(COMMITS)]
