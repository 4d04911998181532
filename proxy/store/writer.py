"""Moves call records from the hot path to SQL: durable in the journal first, then batched inserts.

Contract:
- `record(rec)` returns once `rec` is fsync'ed in the journal; the SQL insert happens later, in a
  background task, in batches of up to `batch_max` every `flush_interval` seconds (sooner when full).
- A batch is one transaction; a batch that fails stays queued (and in the journal) and is retried with
  backoff, so SQL being down loses nothing and, inserts being idempotent, duplicates nothing.
- `start()` first replays what earlier runs left in the journal; `close()` flushes, then stops.
- The writer owns neither the store nor the journal: whoever opened them closes them, after `close()`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from proxy.store.db import Store
from proxy.store.journal import Journal
from proxy.store.records import CallRecord

log = logging.getLogger(__name__)

BatchHook = Callable[[list[CallRecord]], Awaitable[None] | None]


class UsageWriter:
    """The one path from CallRecord to SQL. `on_batch` receives each batch's *newly* inserted records
    after its commit (replays never re-deliver a call); its errors are logged, never retried."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        *,
        batch_max: int = 500,
        flush_interval: float = 0.2,
        on_batch: BatchHook | None = None,
        retry_backoff: tuple[float, float] = (0.1, 10.0),
    ) -> None:
        self._store = store
        self._journal = journal
        self._batch_max = batch_max
        self._flush_interval = flush_interval
        self._on_batch = on_batch
        self._backoff_min, self._backoff_max = retry_backoff
        self._buffer: list[CallRecord] = []
        # Records leave the buffer in order, so two counters tell `flush` when its records are done.
        self._accepted = 0
        self._done = 0
        self._progress = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pending(self) -> int:
        """Records accepted but not yet committed to SQL."""
        return len(self._buffer)

    async def start(self) -> None:
        """Replay the journal into SQL (idempotently), then start the background batch task."""
        replayed = self._journal.replay()
        if replayed:
            log.info("journal replay: %d record(s) from earlier runs", len(replayed))
        self._enqueue(replayed)
        try:
            await self._drain(retry=False)
        except Exception as exc:  # SQL down at start: the background task keeps retrying
            log.warning("journal replay deferred, SQL unavailable: %s", _describe(exc))
        await self._journal.confirm(())  # forgets empty or torn-only segments of earlier runs
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def record(self, rec: CallRecord) -> None:
        """Return once `rec` is durable in the journal. If the journal fails, the record is still
        queued for SQL (only its crash-safety is lost) and JournalError is raised for the caller to log."""
        try:
            await self._journal.append(rec)
        finally:
            self._enqueue([rec])

    def _enqueue(self, records: Sequence[CallRecord]) -> None:
        self._buffer.extend(records)
        self._accepted += len(records)
        if len(self._buffer) >= self._batch_max:
            self._wake.set()

    async def flush(self) -> None:
        """Return once every record accepted before this call is committed to SQL (waits out outages)."""
        target = self._accepted
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def close(self, flush_timeout: float | None = None) -> None:
        """Flush, then stop. After `flush_timeout` seconds (SQL down) stop anyway: the rest stays in
        the journal and is replayed by the next start."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.flush(), flush_timeout)
        except TimeoutError:
            log.error("usage writer closed with %d record(s) not in SQL (kept in the journal)", self.pending)
        self._stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._drain(retry=True)
            except Exception:  # never let the task die: `flush` callers would wait forever
                log.exception("usage writer iteration failed")
                await asyncio.sleep(self._backoff_min)

    async def _drain(self, *, retry: bool) -> None:
        """Write what was accepted before this call, in batches of at most `batch_max`.

        Records arriving meanwhile wait for the next wake-up (a full batch, a flush, or `flush_interval`):
        draining them at once would degrade into one-row inserts under steady load, and a one-row insert
        costs ~25x the CPU per row of a 500-row one.
        """
        backoff = self._backoff_min
        target = self._accepted
        while self._buffer and self._done < target:
            batch = self._buffer[: self._batch_max]
            try:
                inserted = await self._insert(batch)
            except Exception as exc:
                if not retry:
                    raise
                log.warning(
                    "usage batch of %d not written, retrying in %.1fs: %s",
                    len(batch),
                    backoff,
                    _describe(exc),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            backoff = self._backoff_min
            del self._buffer[: len(batch)]
            try:
                await self._journal.confirm(r.request_id for r in inserted.committed)
            except OSError as exc:  # compaction only; the rows are safe in SQL and replay is idempotent
                log.warning("journal compaction failed: %s", _describe(exc))
            async with self._progress:
                self._done += len(batch)
                self._progress.notify_all()
            if inserted.new:
                await self._call_hook(inserted.new)

    async def _insert(self, batch: list[CallRecord]) -> _Inserted:
        try:
            new = await self._store.insert_new_calls(batch)
            return _Inserted(new=new, committed=batch)
        except Exception as exc:
            if not _is_bad_record(exc):
                raise
            # Some record SQL will never accept: insert one by one so it cannot hold up the others.
            log.error("usage batch rejected (%s); isolating the bad record(s)", _describe(exc))
        result = _Inserted(new=[], committed=[])
        for rec in batch:
            try:
                result.new.extend(await self._store.insert_new_calls([rec]))
                result.committed.append(rec)
            except Exception as exc:
                if not _is_bad_record(exc):
                    raise
                # Dropped from the queue but never confirmed: it stays in the journal for a fixed release.
                log.error("usage record %s rejected by SQL: %s", rec.request_id, _describe(exc))
        return result

    async def _call_hook(self, records: list[CallRecord]) -> None:
        if self._on_batch is None:
            return
        try:
            result = self._on_batch(records)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_batch hook failed for %d record(s)", len(records))


class _Inserted:
    __slots__ = ("new", "committed")

    def __init__(self, new: list[CallRecord], committed: list[CallRecord]) -> None:
        self.new = new  # first-time rows
        self.committed = committed  # everything now known to be in SQL (new or already there)


def _is_bad_record(exc: BaseException) -> bool:
    """True when the data itself was refused (retrying cannot help); False for outages and schema
    problems (connection lost, server down, missing table), which are retried until they pass."""
    if getattr(exc, "connection_invalidated", False):
        return False
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False
    # StatementError outside DBAPIError: a value failed to bind (e.g. a naive datetime).
    return isinstance(exc, StatementError | TypeError | ValueError)


def _describe(exc: BaseException) -> str:
    # First line only: SQLAlchemy appends the statement; parameters are hidden by the engine.
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:300]}"
