"""The local durability journal: a call's record is on disk (fsync'ed) before the client's last byte.

Newline-delimited JSON records (orjson never emits a raw newline inside a record) in numbered segment
files `<path>.00000001`, `<path>.00000002`, ... beside a `<path>.lock` file.

Contract:
- `append` returns only once the record is written and fsync'ed. Concurrent appends are group-committed:
  one background task writes everything pending and does one fsync (in a worker thread) for all of them.
- `replay` returns the records left by earlier runs (a torn last line, as a crash leaves it, is skipped).
- `confirm(ids)` is called once those records are committed to SQL; only then may the journal forget
  them: a segment is deleted (or the current one truncated) when every record in it is confirmed.
  Nothing unconfirmed is ever deleted, so a `kill -9` at any point loses nothing; a record confirmed
  but not yet forgotten is simply replayed again (the SQL insert is idempotent).
- One process per journal path: an exclusive flock on `<path>.lock` (released by `close()` or death).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.store.records import CallRecord

log = logging.getLogger(__name__)

_FIELDS = tuple(f.name for f in dataclasses.fields(CallRecord))
_TIME_FIELDS = ("started_at", "ended_at")
DEFAULT_SEGMENT_BYTES = 16 << 20


class JournalError(Exception):
    """The journal could not make a record durable (disk full, I/O error, closed)."""


class JournalLocked(JournalError):
    """Another process holds this journal path; give each replica its own `store.journal_path`."""


def record_to_dict(rec: CallRecord) -> dict[str, Any]:
    """CallRecord -> plain dict (datetimes stay datetimes; orjson writes them as ISO 8601)."""
    return {name: getattr(rec, name) for name in _FIELDS}


def record_from_dict(data: dict[str, Any]) -> CallRecord:
    """dict -> CallRecord; keys this version does not know (written by a newer one) are ignored."""
    kwargs = {name: data[name] for name in _FIELDS if name in data}
    for name in _TIME_FIELDS:
        if isinstance(kwargs.get(name), str):
            kwargs[name] = datetime.fromisoformat(kwargs[name])
    return CallRecord(**kwargs)


@dataclasses.dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    pending: set[str]  # request ids written here and not yet confirmed in SQL
    size: int = 0


class Journal:
    """Append-only, group-committed, segment-rotated journal of CallRecords (see the module contract).

    `sync` is the fsync function (injectable so tests can count calls); `fsync_count` counts its calls.
    Whoever creates the journal closes it, after the UsageWriter using it has been closed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._sync_fn = sync
        self._segment_bytes = segment_bytes
        self._lock_fd = _acquire_lock(self.path.with_name(self.path.name + ".lock"))
        self._pattern = re.compile(re.escape(self.path.name) + r"\.(\d{8,})")
        # Segments found now belong to earlier runs: `replay` reads them; new writes never touch them
        # (their last line may be torn, and appending after it would corrupt the next record).
        self._previous = sorted(self._scan_disk())
        self._next_seq = max((seq for seq, _ in self._previous), default=0) + 1
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._rotate = False
        self._queue: list[tuple[bytes, str, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.fsync_count = 0

    @property
    def unconfirmed(self) -> int:
        """Records on disk (replayed or appended) not yet confirmed in SQL."""
        return sum(len(seg.pending) for seg in self._segments.values())

    def segment_files(self) -> list[Path]:
        """Segment files currently on disk, oldest first."""
        return [path for _, path in sorted(self._scan_disk())]

    async def append(self, rec: CallRecord) -> None:
        """Return once `rec` is written and fsync'ed; raises JournalError if it could not be."""
        if self._closing:
            raise JournalError("journal is closed")
        line = orjson.dumps(record_to_dict(rec), option=orjson.OPT_UTC_Z) + b"\n"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((line, rec.request_id, fut))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._group_commit(), name="journal-group-commit")
        # shield: a cancelled caller must not cancel a write other appenders share.
        await asyncio.shield(fut)

    async def _group_commit(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue, []
            error: BaseException | None = None
            async with self._io_lock:
                try:
                    segment = await self._writable_segment()
                    await asyncio.to_thread(self._write_sync, segment, b"".join(b[0] for b in batch))
                    segment.pending.update(b[1] for b in batch)
                except Exception as exc:  # reported to every appender of this batch
                    self._rotate = True  # the segment may end in a partial line: never append after it
                    error = exc
                    log.error("journal write failed: %s: %s", type(exc).__name__, exc)
            for _, _, fut in batch:
                if fut.done():
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(JournalError(f"journal write failed: {type(error).__name__}"))

    async def _writable_segment(self) -> _Segment:
        current = self._current
        if current is not None and not self._rotate and current.size < self._segment_bytes:
            return current
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        path = self.path.with_name(f"{self.path.name}.{seq:08d}")
        new_fd = await asyncio.to_thread(self._create_sync, path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._rotate = new_fd, False
        self._current = self._segments[seq] = _Segment(seq, path, set())
        return self._current

    def _create_sync(self, path: Path) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        if self._fsync:
            # The new directory entry must be durable before any record in the file is reported so.
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                self._do_sync(dir_fd)
            finally:
                os.close(dir_fd)
        return fd

    def _write_sync(self, segment: _Segment, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            segment.size += written
            view = view[written:]
        if self._fsync:
            self._do_sync(self._fd)

    def _do_sync(self, fd: int) -> None:
        self._sync_fn(fd)
        self.fsync_count += 1

    def replay(self) -> list[CallRecord]:
        """Records left by earlier runs, oldest first. Unreadable lines are logged and skipped."""
        records: list[CallRecord] = []
        for seq, path in self._previous:
            try:
                found = _read_segment(path)
            except FileNotFoundError:
                continue  # already compacted
            records.extend(found)
            self._segments[seq] = _Segment(seq, path, {r.request_id for r in found})
        return records

    async def confirm(self, request_ids: Iterable[str]) -> None:
        """These records are committed in SQL: forget them, deleting segments nothing else needs."""
        ids = set(request_ids)
        async with self._io_lock:
            for seg in self._segments.values():
                seg.pending -= ids
            current = self._current
            done = [s for s in self._segments.values() if s is not current and not s.pending]
            truncate = current is not None and not current.pending and current.size > 0
            if not done and not truncate:
                return
            await asyncio.to_thread(self._compact_sync, [s.path for s in done], truncate)
            for seg in done:
                del self._segments[seg.seq]
            if truncate and current is not None:
                current.size = 0

    def _compact_sync(self, paths: list[Path], truncate_current: bool) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        if truncate_current and self._fd is not None:
            # No fsync needed: if the truncation is lost in a crash, the records replay idempotently.
            os.ftruncate(self._fd, 0)

    async def close(self) -> None:
        """Write what is queued, then release the files; an empty current segment is removed."""
        if self._closing and self._lock_fd < 0:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        async with self._io_lock:
            current = self._current
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if current is not None and not current.pending:
                current.path.unlink(missing_ok=True)
                del self._segments[current.seq]
            self._current = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    def _scan_disk(self) -> list[tuple[int, Path]]:
        found = []
        for entry in self.path.parent.iterdir():
            match = self._pattern.fullmatch(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
        return found


def _read_segment(path: Path) -> list[CallRecord]:
    lines = path.read_bytes().split(b"\n")
    # Everything after the last newline is a record whose write a crash interrupted: never acknowledged.
    if lines[-1]:
        log.warning("journal %s: torn last record ignored (%d bytes)", path.name, len(lines[-1]))
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            records.append(record_from_dict(orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            log.warning("journal %s line %d unreadable, skipped: %s", path.name, number, type(exc).__name__)
    return records


def _acquire_lock(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalLocked(f"journal {lock_path} is in use by another process") from None
    return fd
