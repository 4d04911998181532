"""Journal: fsync'ed appends with group commit, crash replay (torn tail), compaction, one owner."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from proxy.store.journal import Journal, JournalLocked, record_from_dict, record_to_dict
from tests.unit.proxy.store.conftest import RecordFactory


class CountingSync:
    """An injectable fsync that counts its calls (no timing involved)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fsync(fd)


def test_record_dict_round_trip(make_record: RecordFactory) -> None:
    rec = make_record(extra={"enforcement": "bypassed"}, run="r1")
    assert record_from_dict(record_to_dict(rec)) == rec
    assert record_from_dict({**record_to_dict(rec), "added_in_v9": 1}) == rec


async def test_append_then_replay_in_a_new_process(tmp_path: Path, make_record: RecordFactory) -> None:
    records = [make_record() for _ in range(5)]
    journal = Journal(tmp_path / "j")
    for rec in records:
        await journal.append(rec)
    await journal.close()  # nothing confirmed: the records stay on disk
    again = Journal(tmp_path / "j")
    assert again.replay() == records
    assert again.unconfirmed == 5
    await again.close()


async def test_torn_last_line_and_garbage_are_skipped(tmp_path: Path, make_record: RecordFactory) -> None:
    journal = Journal(tmp_path / "j")
    good = [make_record(), make_record()]
    for rec in good:
        await journal.append(rec)
    await journal.close()
    [segment] = journal.segment_files()
    with segment.open("ab") as f:  # what kill -9 mid-write leaves: a partial record, no newline
        f.write(b'{"request_id": "req-torn", "started_at": "2026-')
    again = Journal(tmp_path / "j")
    assert again.replay() == good
    await again.close()
    with segment.open("ab") as f:
        f.write(b"\x00\x00garbage\n")
    third = Journal(tmp_path / "j")
    assert third.replay() == good
    await third.close()


async def test_new_appends_never_follow_a_torn_line(tmp_path: Path, make_record: RecordFactory) -> None:
    first = Journal(tmp_path / "j")
    await first.append(make_record())
    await first.close()
    [old] = first.segment_files()
    with old.open("ab") as f:
        f.write(b'{"partial')
    second = Journal(tmp_path / "j")
    second.replay()
    late = make_record()
    await second.append(late)
    await second.close()
    assert len(second.segment_files()) == 2  # the late record went to a fresh segment
    third = Journal(tmp_path / "j")
    assert third.replay()[-1] == late
    await third.close()


async def test_group_commit_uses_far_fewer_fsyncs_than_records(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    sync = CountingSync()
    journal = Journal(tmp_path / "j", sync=sync)
    records = [make_record() for _ in range(200)]
    await asyncio.gather(*(journal.append(rec) for rec in records))
    assert journal.fsync_count == sync.calls
    assert 1 <= sync.calls <= 10, sync.calls  # one for the new segment's directory, one per group
    await journal.close()
    again = Journal(tmp_path / "j")
    assert sorted(r.request_id for r in again.replay()) == sorted(r.request_id for r in records)
    await again.close()


async def test_append_returns_only_after_fsync(tmp_path: Path, make_record: RecordFactory) -> None:
    synced: list[int] = []
    journal = Journal(tmp_path / "j", sync=lambda fd: synced.append(fd))
    await journal.append(make_record())
    assert synced  # the record's fsync happened before append returned
    journal_nosync = Journal(tmp_path / "k", fsync=False, sync=lambda fd: synced.append(-1))
    await journal_nosync.append(make_record())
    assert -1 not in synced
    await journal.close()
    await journal_nosync.close()


async def test_confirm_compacts_only_confirmed_records(tmp_path: Path, make_record: RecordFactory) -> None:
    journal = Journal(tmp_path / "j")
    a, b = make_record(), make_record()
    await journal.append(a)
    await journal.append(b)
    [segment] = journal.segment_files()
    await journal.confirm([a.request_id])
    assert segment.stat().st_size > 0 and journal.unconfirmed == 1  # b is not in SQL yet
    await journal.confirm([b.request_id])
    assert segment.stat().st_size == 0 and journal.unconfirmed == 0
    c = make_record()
    await journal.append(c)  # the truncated segment is reused
    await journal.close()
    again = Journal(tmp_path / "j")
    assert again.replay() == [c]
    await again.close()


async def test_rotation_deletes_old_segments_once_confirmed(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=1)  # every append opens a new segment
    records = [make_record() for _ in range(4)]
    for rec in records:
        await journal.append(rec)
    assert len(journal.segment_files()) == 4
    await journal.confirm([r.request_id for r in records[:2]])
    assert len(journal.segment_files()) == 2
    await journal.confirm([r.request_id for r in records[2:]])
    assert len(journal.segment_files()) == 1  # the current one, truncated
    await journal.close()
    assert journal.segment_files() == []


async def test_replayed_segments_are_deleted_after_confirm(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    first = Journal(tmp_path / "j")
    rec = make_record()
    await first.append(rec)
    await first.close()
    second = Journal(tmp_path / "j")
    assert second.replay() == [rec]
    await second.confirm([])
    assert len(second.segment_files()) == 1  # not in SQL yet: kept
    await second.confirm([rec.request_id])
    assert second.segment_files() == []
    await second.close()


async def test_one_owner_per_journal_path(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    with pytest.raises(JournalLocked):
        Journal(tmp_path / "j")
    await journal.close()
    await Journal(tmp_path / "j").close()  # released by close


async def test_a_cancelled_appender_does_not_lose_the_shared_write(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    journal = Journal(tmp_path / "j")
    rec = make_record()
    task = asyncio.create_task(journal.append(rec))
    await asyncio.sleep(0)
    task.cancel()
    await journal.append(make_record())
    await journal.close()
    again = Journal(tmp_path / "j")
    assert rec in again.replay()
    await again.close()
