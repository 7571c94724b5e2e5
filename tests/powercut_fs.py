"""A power-cut simulator: a FUSE pass-through file system whose unsynced writes die with it.

``python -m tests.powercut_fs BACKING_DIR MOUNTPOINT`` serves BACKING_DIR at MOUNTPOINT in the
foreground; tests drive it through :class:`PowerCutMount`. SIGKILL of the server is the power cut.

The model (LazyFS's, in short):

* File data lives in a page cache in the server's memory: ``write``, ``truncate``/``ftruncate``
  and ``open(O_TRUNC)`` change a per-inode overlay (4 KiB pages copied on first write, a pending
  size) keyed by the backing inode, so renames and hard links carry it. Reads and ``stat`` see it.
* ``fsync``/``fdatasync`` of a file writes that file's overlay to the backing file, ``os.fsync``s
  it and drops the overlay. ``close`` makes nothing durable (nor does unlinking the last link).
* Metadata (create, mkdir, unlink, rename, link, symlink, chmod, chown, utimens) reaches the
  backing directory at once: after a cut, a file renamed before its data was fsynced is there,
  empty or old. ``fsyncdir`` therefore has nothing to do.
* SIGKILL loses every overlay; SIGTERM, SIGINT or an unmount writes them back first (a clean
  shutdown syncs).
* A file unlinked while open lives on as ``.fuse_hidden*`` (libfuse's way) until closed; the next
  start deletes those a cut left, as a journaling file system frees orphan inodes.
* ``/.powercut-stats`` (read-only, not listed) is JSON, see :class:`PowerCutStats`.

The mount has no writeback cache, so every ``write(2)`` reaches the server at once and the kernel
holds dirty data only in shared mmaps (SQLite's ``-shm``), written back on ``msync``, ``fsync``,
``close`` or invalidation; either way it dies with the mount. Posix locks stay in the kernel.

Linux only (``/proc/self/fd``, ``/proc/self/mountinfo``, ``fusermount3``).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

#: The overlay's page size: a first write to a page copies all of it, fsync writes whole pages.
PAGE_BYTES = 4096
#: The statistics file, at the mount root.
STATS_NAME = ".powercut-stats"
_STATS_PATH = "/" + STATS_NAME
# File handles of open statistics files: far above any descriptor number (handles of backing files
# are their descriptors).
_STATS_FH_BASE = 1 << 40
# An inode number for the statistics file unlikely to be a backing file's.
_STATS_INO = (1 << 62) + 1
# libfuse's names for files unlinked while open (renamed until their last close).
_HIDDEN_PREFIX = ".fuse_hidden"
# fuse_common.h (libfuse 3): the kernel caches writes and sends them later; we must not want it.
_FUSE_CAP_WRITEBACK_CACHE = 1 << 16
# fuse.h: special tv_nsec values libfuse passes on to utimens.
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_PR_SET_PDEATHSIG = 1
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

_InodeKey = tuple[int, int]  # (st_dev, st_ino) of the backing file


class PowerCutError(RuntimeError):
    """The power-cut file system could not be started, stopped or read."""


@dataclass(frozen=True)
class PowerCutStats:
    """What the server has seen since it started (the contents of ``.powercut-stats``)."""

    fsyncs: int  # fsync(2) calls on files
    fdatasyncs: int  # fdatasync(2) calls on files
    fsyncdirs: int  # fsync calls on directories (no-ops)
    writes: int  # write requests (including mmap write-back)
    written_bytes: int  # bytes in those requests
    pending_files: int  # files with unsynced data or size changes, lost at a cut
    pending_pages: int  # unsynced pages, over all files
    pending_bytes: int  # pending_pages * PAGE_BYTES
    durable_bytes: int  # bytes written to backing files by fsync, fdatasync or a clean stop

    @classmethod
    def from_json(cls, text: str | bytes) -> PowerCutStats:
        """Parse the statistics file's JSON."""
        data = json.loads(text)
        return cls(**{f.name: int(data[f.name]) for f in dataclasses.fields(cls)})


# --- the server's model ---------------------------------------------------------------------------


class _FileInfo(Protocol):
    """The fields of libfuse's ``struct fuse_file_info`` used here."""

    fh: int
    flags: int
    direct_io: int


@dataclass
class _Handle:
    fd: int  # descriptor of the backing file, also the FUSE file handle
    key: _InodeKey


@dataclass
class _Overlay:
    """A file's unsynced state: pages that differ from the backing file, and its logical size."""

    fd: int  # own read-write descriptor of the backing inode, kept until synced or forgotten
    size_bytes: int
    # A pending truncation cut the backing file here: its bytes beyond read as zeros.
    backing_valid_bytes: int
    mtime_ns: int
    pages: dict[int, bytearray] = field(default_factory=dict)

    def read(self, offset: int, size: int) -> bytes:
        """The logical contents of ``[offset, offset + size)``, cut at the logical size."""
        end = min(offset + size, self.size_bytes)
        parts: list[bytes] = []
        position = offset
        while position < end:
            index = position // PAGE_BYTES
            page_start = index * PAGE_BYTES
            chunk_end = min(page_start + PAGE_BYTES, end)
            page = self.pages.get(index)
            if page is not None:
                parts.append(bytes(page[position - page_start : chunk_end - page_start]))
            else:
                # Pages outside the overlay come from the backing file, a run of them in one read.
                while chunk_end < end and chunk_end // PAGE_BYTES not in self.pages:
                    chunk_end = min(chunk_end + PAGE_BYTES, end)
                parts.append(self._read_backing(position, chunk_end))
            position = chunk_end
        return b"".join(parts)

    def write(self, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset`` into the overlay, growing the logical size if needed."""
        end = offset + len(data)
        view = memoryview(data)
        position = offset
        while position < end:
            index = position // PAGE_BYTES
            page_start = index * PAGE_BYTES
            chunk_end = min(page_start + PAGE_BYTES, end)
            page = self.pages.get(index)
            if page is None:
                page = bytearray(PAGE_BYTES)
                if chunk_end - position < PAGE_BYTES:
                    # Copied on first write; bytes past the logical size stay zero, as an extension needs.
                    current = self.read(page_start, PAGE_BYTES)
                    page[: len(current)] = current
                self.pages[index] = page
            page[position - page_start : chunk_end - page_start] = view[position - offset : chunk_end - offset]
            position = chunk_end
        self.size_bytes = max(self.size_bytes, end)
        self.mtime_ns = time.time_ns()

    def truncate(self, length: int) -> None:
        """Set the logical size; bytes cut off read as zeros if the file grows again."""
        if length < self.size_bytes:
            for index in [i for i in self.pages if i * PAGE_BYTES >= length]:
                del self.pages[index]
            tail = length % PAGE_BYTES
            page = self.pages.get(length // PAGE_BYTES)
            if tail and page is not None:
                page[tail:] = bytes(PAGE_BYTES - tail)
            self.backing_valid_bytes = min(self.backing_valid_bytes, length)
        self.size_bytes = length
        self.mtime_ns = time.time_ns()

    def apply(self, datasync: bool) -> int:
        """Make the overlay durable in the backing file; returns the bytes written."""
        if self.backing_valid_bytes < os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, self.backing_valid_bytes)
        written_bytes = 0
        for start, data in self._runs():
            _pwrite_fully(self.fd, data, start)
            written_bytes += len(data)
        st = os.fstat(self.fd)
        if st.st_size != self.size_bytes:
            os.ftruncate(self.fd, self.size_bytes)
        # The mtime the file had in the page cache, not the moment of this write-back.
        os.utime(self.fd, ns=(st.st_atime_ns, self.mtime_ns))
        (os.fdatasync if datasync else os.fsync)(self.fd)
        return written_bytes

    def _read_backing(self, start: int, end: int) -> bytes:
        valid_end = min(end, self.backing_valid_bytes)
        data = _pread_fully(self.fd, valid_end - start, start) if valid_end > start else b""
        return data + bytes(end - start - len(data))

    def _runs(self) -> Iterator[tuple[int, bytes]]:
        # Consecutive pages as one write each, the last cut at the logical size.
        indices = sorted(self.pages)
        first = 0
        while first < len(indices):
            last = first
            while last + 1 < len(indices) and indices[last + 1] == indices[last] + 1:
                last += 1
            start = indices[first] * PAGE_BYTES
            end = min((indices[last] + 1) * PAGE_BYTES, self.size_bytes)
            yield start, b"".join(self.pages[i] for i in indices[first : last + 1])[: end - start]
            first = last + 1


@dataclass
class _Counters:
    fsyncs: int = 0
    fdatasyncs: int = 0
    fsyncdirs: int = 0
    writes: int = 0
    written_bytes: int = 0
    durable_bytes: int = 0


def _pread_fully(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            break
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return b"".join(parts)


def _pwrite_fully(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _key(st: os.stat_result) -> _InodeKey:
    return (st.st_dev, st.st_ino)


def _reopen_read_write(fd: int) -> int:
    # Through /proc, so a handle opened read-only, or a file already unlinked, still gets one.
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return os.dup(fd)


def _entry_type(entry: os.DirEntry[str]) -> int:
    # The file type from the directory entry itself (no stat); only these bits reach the kernel.
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT & entry.stat(follow_symlinks=False).st_mode


def _fuse_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class PowerCutFileSystem:
    """The FUSE operations (mfusepy, ``raw_fi=True``): pass-through to ``backing_root`` with an
    in-memory page overlay per file.

    Each method is the libfuse operation of its name (contracts in ``mfusepy.Operations``). Not
    derived from that class, so this module imports where libfuse is missing; mfusepy registers
    only the operations a class defines. One lock guards all state: libfuse calls from several
    threads.
    """

    use_ns = True  # mfusepy: times as integer nanoseconds

    def __init__(self, backing_root: str) -> None:
        self._root = os.path.realpath(backing_root)
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._overlays: dict[_InodeKey, _Overlay] = {}
        self._stats_snapshots: dict[int, bytes] = {}
        self._next_stats_fh = _STATS_FH_BASE
        self._counters = _Counters()
        #: Set once a clean stop has written everything back.
        self.stopped_cleanly = False

    # --- lifecycle

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Mount-time settings: backing inode numbers, no writeback cache, no kept page cache."""
        if conn is not None:
            conn.want &= ~_FUSE_CAP_WRITEBACK_CACHE
        if config is not None:
            config.use_ino = 1
            # Not hard_remove: the kernel's fstat of a file unlinked while open would then fail with
            # ESTALE (Python's TemporaryFile does just that). libfuse renames such a file to
            # .fuse_hidden* until its last close instead; see _remove_orphans.
            config.hard_remove = 0
            config.kernel_cache = 0
            config.auto_cache = 0
            config.direct_io = 0  # shared mmaps (SQLite's -shm) need the page cache

    def destroy(self, path: str | None) -> None:
        """A clean stop (signal or unmount): write every overlay back, like a shutdown's sync."""
        with self._lock:
            self._flush_all()
            for handle in self._handles.values():
                os.close(handle.fd)
            self._handles.clear()
            self.stopped_cleanly = True

    # --- statistics

    def stats(self) -> PowerCutStats:
        """The counters and pending state now."""
        with self._lock:
            return self._stats()

    # --- attributes and names

    def getattr(self, path: str | None, fi: _FileInfo | None = None) -> dict[str, Any]:
        """``stat``: the backing file's attributes with the pending size and mtime."""
        if path == _STATS_PATH:
            now_ns = time.time_ns()
            return {
                "st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": 0, "st_ino": _STATS_INO,
                "st_uid": os.getuid(), "st_gid": os.getgid(),
                "st_atime": now_ns, "st_mtime": now_ns, "st_ctime": now_ns,
            }  # fmt: skip
        with self._lock:
            handle = self._handles.get(fi.fh) if fi is not None else None
            st = os.fstat(handle.fd) if handle is not None else os.lstat(self._backing(path))
            attrs = {
                "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_rdev": st.st_rdev,
                "st_size": st.st_size, "st_blocks": st.st_blocks, "st_blksize": st.st_blksize,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
            }  # fmt: skip
            overlay = self._overlays.get(_key(st))
            if overlay is not None:
                attrs["st_size"] = overlay.size_bytes
                attrs["st_blocks"] = (overlay.size_bytes + 511) // 512
                attrs["st_mtime"] = overlay.mtime_ns
                attrs["st_ctime"] = max(st.st_ctime_ns, overlay.mtime_ns)
            return attrs

    def access(self, path: str, amode: int) -> int:
        if path == _STATS_PATH:
            if amode & (os.W_OK | os.X_OK):
                raise _fuse_error(errno.EACCES)
            return 0
        if not os.access(self._backing(path), amode):
            raise _fuse_error(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino the kernel takes d_ino from here, and readdir(3) skips entries whose d_ino is 0.
        backing = self._backing(path)
        entries = [(name, os.lstat(os.path.join(backing, name))) for name in (".", "..")]
        listed = [(name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0) for name, st in entries]
        with os.scandir(backing) as scan:
            for entry in scan:
                listed.append((entry.name, {"st_ino": entry.inode(), "st_mode": _entry_type(entry)}, 0))
        return listed

    def readlink(self, path: str) -> str:
        return os.readlink(self._backing(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._root)
        names = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                 "f_favail", "f_flag", "f_namemax")  # fmt: skip
        return {name: getattr(sv, name) for name in names}

    def mknod(self, path: str, mode: int, dev: int) -> int:
        os.mknod(self._backing(path), mode, dev)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._backing(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._backing(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        """Create the link ``target`` pointing at ``source``."""
        os.symlink(source, self._backing(target))
        return 0

    def link(self, target: str, source: str) -> int:
        """Create the hard link ``target`` to the existing ``source``."""
        os.link(self._backing(source), self._backing(target), follow_symlinks=False)
        return 0

    def unlink(self, path: str) -> int:
        with self._lock:
            backing = self._backing(path)
            key = _key(os.lstat(backing))
            os.unlink(backing)
            self._forget_if_gone(key)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._lock:
            old_backing, new_backing = self._backing(old), self._backing(new)
            try:
                replaced: _InodeKey | None = _key(os.lstat(new_backing))
            except FileNotFoundError:
                replaced = None
            os.rename(old_backing, new_backing)
            if replaced is not None and replaced != _key(os.lstat(new_backing)):
                self._forget_if_gone(replaced)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._backing(path), stat.S_IMODE(mode))
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._backing(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        backing = self._backing(path)
        if times is None:
            os.utime(backing, follow_symlinks=False)
            return 0
        # mfusepy folds timespecs into nanoseconds, so UTIME_NOW and UTIME_OMIT arrive as small numbers.
        st = os.lstat(backing)
        now_ns = time.time_ns()
        resolved = [
            now_ns if ns == _UTIME_NOW else current if ns == _UTIME_OMIT else ns
            for ns, current in zip(times, (st.st_atime_ns, st.st_mtime_ns), strict=True)
        ]
        with self._lock:
            os.utime(backing, ns=(resolved[0], resolved[1]), follow_symlinks=False)
            overlay = self._overlays.get(_key(st))
            if overlay is not None:
                overlay.mtime_ns = resolved[1]
        return 0

    # --- file data

    def create(self, path: str, mode: int, fi: _FileInfo) -> int:
        with self._lock:
            fd = self._open_backing(self._backing(path), fi.flags | os.O_CREAT, mode)
            self._register(fd, fi)
        return 0

    def open(self, path: str | None, fi: _FileInfo) -> int:
        with self._lock:
            if path == _STATS_PATH:
                if fi.flags & os.O_ACCMODE != os.O_RDONLY:
                    raise _fuse_error(errno.EACCES)
                fi.fh = self._next_stats_fh
                self._next_stats_fh += 1
                # Bypass the page cache: the contents change while the size stays 0.
                fi.direct_io = 1
                stats_json = json.dumps(dataclasses.asdict(self._stats()), indent=1) + "\n"
                self._stats_snapshots[fi.fh] = stats_json.encode()
                return 0
            fd = self._open_backing(self._backing(path), fi.flags, 0)
            self._register(fd, fi)
        return 0

    def read(self, path: str | None, size: int, offset: int, fi: _FileInfo) -> bytes:
        with self._lock:
            snapshot = self._stats_snapshots.get(fi.fh)
            if snapshot is not None:
                return snapshot[offset : offset + size]
            handle = self._handles[fi.fh]
            overlay = self._overlays.get(handle.key)
            if overlay is None:
                return os.pread(handle.fd, size, offset)
            return overlay.read(offset, size)

    def write(self, path: str | None, data: bytes, offset: int, fi: _FileInfo) -> int:
        with self._lock:
            handle = self._handles[fi.fh]
            self._overlay_for(handle.key, handle.fd).write(data, offset)
            self._counters.writes += 1
            self._counters.written_bytes += len(data)
        return len(data)

    def truncate(self, path: str | None, length: int, fi: _FileInfo | None = None) -> int:
        with self._lock:
            handle = self._handles.get(fi.fh) if fi is not None else None
            if handle is not None:
                self._overlay_for(handle.key, handle.fd).truncate(length)
                return 0
            fd = os.open(self._backing(path), os.O_RDWR | os.O_CLOEXEC)
            try:
                self._overlay_for(_key(os.fstat(fd)), fd).truncate(length)
            finally:
                os.close(fd)
        return 0

    def fsync(self, path: str | None, datasync: int, fi: _FileInfo) -> int:
        with self._lock:
            if datasync:
                self._counters.fdatasyncs += 1
            else:
                self._counters.fsyncs += 1
            handle = self._handles.get(fi.fh)
            if handle is not None and handle.key in self._overlays:
                self._apply(handle.key, datasync=bool(datasync))
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        # Metadata is on the backing directory already.
        with self._lock:
            self._counters.fsyncdirs += 1
        return 0

    def release(self, path: str | None, fi: _FileInfo) -> int:
        with self._lock:
            if self._stats_snapshots.pop(fi.fh, None) is not None:
                return 0
            handle = self._handles.pop(fi.fh, None)
            if handle is not None:
                os.close(handle.fd)
                self._forget_if_gone(handle.key)
        return 0

    # --- helpers (the caller holds the lock)

    def _backing(self, path: str | None) -> str:
        if path is None:
            raise _fuse_error(errno.ESTALE)
        if path == _STATS_PATH:
            raise _fuse_error(errno.EPERM)
        # The kernel resolves "..": paths stay below the root.
        return os.path.join(self._root, path.lstrip("/"))

    def _open_backing(self, backing: str, flags: int, mode: int) -> int:
        # Truncation and appends are ours to model; reading the backing file must always work.
        wanted = flags & os.O_ACCMODE
        rest = flags & ~(os.O_ACCMODE | os.O_TRUNC | os.O_APPEND | os.O_DIRECT | os.O_NOCTTY)
        try:
            fd = os.open(backing, rest | os.O_RDWR | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fd = os.open(backing, rest | wanted | os.O_CLOEXEC, mode)
        if flags & os.O_TRUNC:
            st = os.fstat(fd)
            if _key(st) in self._overlays or st.st_size:
                self._overlay_for(_key(st), fd).truncate(0)
        return fd

    def _register(self, fd: int, fi: _FileInfo) -> None:
        self._handles[fd] = _Handle(fd=fd, key=_key(os.fstat(fd)))
        fi.fh = fd

    def _overlay_for(self, key: _InodeKey, fd: int) -> _Overlay:
        overlay = self._overlays.get(key)
        if overlay is None:
            size_bytes = os.fstat(fd).st_size
            overlay = _Overlay(
                fd=_reopen_read_write(fd), size_bytes=size_bytes, backing_valid_bytes=size_bytes,
                mtime_ns=time.time_ns(),
            )  # fmt: skip
            self._overlays[key] = overlay
        return overlay

    def _apply(self, key: _InodeKey, datasync: bool) -> None:
        overlay = self._overlays[key]
        self._counters.durable_bytes += overlay.apply(datasync)
        del self._overlays[key]
        os.close(overlay.fd)

    def _flush_all(self) -> None:
        for key in list(self._overlays):
            self._apply(key, datasync=False)

    def _forget_if_gone(self, key: _InodeKey) -> None:
        # Unsynced data of a file with no name left and no open handle can never be read again.
        overlay = self._overlays.get(key)
        if overlay is None or any(handle.key == key for handle in self._handles.values()):
            return
        if os.fstat(overlay.fd).st_nlink == 0:
            del self._overlays[key]
            os.close(overlay.fd)

    def _stats(self) -> PowerCutStats:
        pages = sum(len(overlay.pages) for overlay in self._overlays.values())
        return PowerCutStats(
            fsyncs=self._counters.fsyncs,
            fdatasyncs=self._counters.fdatasyncs,
            fsyncdirs=self._counters.fsyncdirs,
            writes=self._counters.writes,
            written_bytes=self._counters.written_bytes,
            pending_files=len(self._overlays),
            pending_pages=pages,
            pending_bytes=pages * PAGE_BYTES,
            durable_bytes=self._counters.durable_bytes,
        )


def _fuse_class() -> type:
    """mfusepy's FUSE with two libfuse 3 callbacks it simplifies fixed (imported late: libfuse)."""
    import mfusepy

    class _PowerCutFuse(mfusepy.FUSE):  # type: ignore[misc]
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            # mfusepy drops the flags; RENAME_NOREPLACE or RENAME_EXCHANGE done as a plain rename
            # would overwrite, so refuse them (callers fall back to a plain rename).
            if flags:
                return -errno.EINVAL
            return int(super().rename_fuse_3(old, new, flags))

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            # mfusepy drops the file info of ftruncate; the handle finds files renamed or unlinked.
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return int(self.operations.truncate(decoded, length, fip.contents if fip else None))

    return _PowerCutFuse


def _remove_orphans(backing: str) -> list[str]:
    """Delete the ``.fuse_hidden*`` files a cut left behind (files unlinked while open).

    A journaling file system frees such orphan inodes when it mounts after a power cut.
    """
    removed = []
    for directory, _, names in os.walk(backing):
        for name in names:
            if name.startswith(_HIDDEN_PREFIX):
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


def serve(backing: str, mountpoint: str, *, debug: bool = False) -> None:
    """Mount and serve until a signal or an unmount; a clean end writes all pending data back."""
    _remove_orphans(backing)
    operations = PowerCutFileSystem(backing)
    # auto_unmount: fusermount3 stays behind and unmounts when the server dies (no stale mount
    # if nobody cleans up). No writeback_cache, no kernel_cache, no direct_io: see the docstring.
    try:
        _fuse_class()(
            operations, mountpoint, raw_fi=True, foreground=True, debug=debug,
            fsname="powercut", subtype="powercut", auto_unmount=True,
        )  # fmt: skip
    except RuntimeError:
        # libfuse 3 reports a loop ended by SIGTERM or SIGINT as an error (mfusepy raises it).
        if not operations.stopped_cleanly:
            raise


def _exit_with_parent(parent_pid: int) -> None:
    # A test run that dies must not leave a mount: SIGTERM stops the server cleanly.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit("the parent has already exited")


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.powercut_fs BACKING_DIR MOUNTPOINT``: serve in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m tests.powercut_fs", description=__doc__.splitlines()[0])
    parser.add_argument("backing", help="directory holding the durable state")
    parser.add_argument("mountpoint", help="empty directory to mount on")
    parser.add_argument("--parent-pid", type=int, help="stop (cleanly) when this parent process exits")
    parser.add_argument("--debug", action="store_true", help="libfuse's request trace on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    # The kernel has applied the caller's umask to every mode it sends; ours must not mask again.
    os.umask(0)
    serve(args.backing, args.mountpoint, debug=args.debug)
    return 0


# --- the controller -------------------------------------------------------------------------------


def _mount_points() -> set[str]:
    # /proc/self/mountinfo, not os.path.ismount: a mount whose server died fails stat(2) with
    # ENOTCONN, which ismount reports as "not a mount point".
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        fields = [line.split(" ", 5)[4] for line in mountinfo]
    # The kernel escapes space, tab, newline and backslash in octal.
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point) for point in fields}


def _is_mounted(path: Path) -> bool:
    """Whether ``path`` (absolute, resolved) is a mount point in this mount namespace."""
    return str(path) in _mount_points()


class PowerCutMount:
    """A power-cut file system over ``backing``, served at ``mountpoint`` by a server process.

    ``start()`` mounts, ``cut()`` pulls the plug (unsynced writes are lost), ``stop()`` shuts down
    cleanly (they are written back); ``start()`` again mounts the same backing directory afresh.
    As a context manager it starts, and on exit stops (or cuts, if stopping fails).
    """

    def __init__(self, backing: Path, mountpoint: Path, *, timeout_seconds: float = 10.0) -> None:
        self.backing = Path(backing).resolve()
        self.mountpoint = Path(mountpoint).resolve()
        if self.backing == self.mountpoint:
            raise ValueError("backing directory and mount point must differ")
        self.timeout_seconds = timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def stats_path(self) -> Path:
        """The statistics file, at the mount root."""
        return self.mountpoint / STATS_NAME

    @property
    def stderr_path(self) -> Path:
        """Where the server's stderr goes: next to the mount point, overwritten at each start."""
        return self.mountpoint.with_name(self.mountpoint.name + ".stderr")

    @property
    def running(self) -> bool:
        """Whether a server started by this controller is serving (until ``cut()`` or ``stop()``)."""
        return self._process is not None

    @property
    def mounted(self) -> bool:
        """Whether anything is mounted at the mount point."""
        return _is_mounted(self.mountpoint)

    def start(self) -> None:
        """Spawn the server and wait until it answers at the mount point.

        The server stops cleanly if the thread that started it exits (``PR_SET_PDEATHSIG``), so
        start from a thread that outlives the mount.
        """
        if self._process is not None:
            raise PowerCutError("already started")
        if self.mounted:
            raise PowerCutError(f"{self.mountpoint} is already a mount point")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tests.powercut_fs", "--parent-pid", str(os.getpid()),
                   str(self.backing), str(self.mountpoint)]  # fmt: skip
        with self.stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                command, cwd=_PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + self.timeout_seconds
        while not self.mounted:
            if self._process.poll() is not None:
                self._fail(f"the server exited with status {self._process.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"not mounted after {self.timeout_seconds} s")
            time.sleep(0.01)
        try:
            # Mounted is not yet serving: this waits for the server to answer.
            os.stat(self.stats_path)
        except OSError as exc:
            self._fail(f"mounted but not answering: {exc}")

    def cut(self) -> None:
        """Pull the plug: SIGKILL the server (its unsynced data dies with it), then unmount."""
        process = self._require_process()
        process.kill()
        process.wait()
        self._process = None
        self._unmount()

    def stop(self) -> None:
        """Shut down cleanly: the server writes everything pending back, unmounts and exits."""
        process = self._require_process()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.timeout_seconds)
        except subprocess.TimeoutExpired:
            self.cut()
            raise PowerCutError(f"the server did not stop in {self.timeout_seconds} s; cut instead") from None
        self._process = None
        self._unmount()
        if process.returncode != 0:
            raise PowerCutError(f"the server exited with status {process.returncode}: {self.server_stderr()}")

    def stats(self) -> PowerCutStats:
        """The server's counters, read through the mount."""
        return PowerCutStats.from_json(self.stats_path.read_bytes())

    def server_stderr(self) -> str:
        """The end of what the latest server wrote to stderr."""
        try:
            return self.stderr_path.read_bytes()[-4000:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is None:
            if self.mounted:
                self._unmount()
            return
        try:
            self.stop()
        except PowerCutError:
            if self._process is not None:
                self.cut()
            if exc is None:
                raise

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise PowerCutError("not started")
        return self._process

    def _unmount(self) -> None:
        # Lazy: files the test still holds open on the dead mount must not keep it busy.
        deadline = time.monotonic() + self.timeout_seconds
        result: subprocess.CompletedProcess[bytes] | None = None
        while self.mounted:
            # After a kill, fusermount3's auto_unmount watchdog may get there first; either is fine.
            result = subprocess.run(
                ["fusermount3", "-u", "-z", "-q", str(self.mountpoint)], capture_output=True, check=False
            )
            if not self.mounted:
                return
            if time.monotonic() > deadline:
                detail = result.stderr.decode(errors="replace").strip()
                raise PowerCutError(f"{self.mountpoint} still mounted after {self.timeout_seconds} s: {detail}")
            time.sleep(0.02)

    def _fail(self, reason: str) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._process = None
        if self.mounted:
            self._unmount()
        raise PowerCutError(f"power-cut file system at {self.mountpoint}: {reason}\n{self.server_stderr()}")


@functools.cache
def fuse_available() -> str | None:
    """Why the power-cut file system cannot run here, or None if it can (a trial mount, once)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError, AttributeError, NotImplementedError) as exc:  # no or too old libfuse, or no Linux
        return f"mfusepy cannot be imported: {exc}"
    with tempfile.TemporaryDirectory(prefix="powercut-probe-") as scratch:
        try:
            with PowerCutMount(Path(scratch) / "backing", Path(scratch) / "mnt") as mount:
                mount.stats()
        except (PowerCutError, OSError) as exc:
            return f"mount refused: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
