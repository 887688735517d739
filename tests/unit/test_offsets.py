import dataclasses

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from pipeline.offsets import OffsetLedger, Release, next_offsets, unrevoked

P0, P1 = ("t", 0), ("t", 1)


def record(partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic="t", partition=partition, offset=offset, timestamp=0,
                          timestamp_type=0, key=None, value=b"", checksum=None,
                          serialized_key_size=0, serialized_value_size=0, headers=())


def test_commits_one_past_the_last_record_of_each_partition():
    offsets = next_offsets([record(0, 5), record(1, 9), record(0, 6), record(0, 7)])
    assert offsets == {P0: 8, P1: 10}
    assert offsets == {TopicPartition("t", 0): 8, TopicPartition("t", 1): 10}  # aiokafka's keys match


def test_a_rebalance_drops_the_queued_records_of_the_revoked_partitions_only():
    queued = [(1.0, record(0, 5)), (1.0, record(1, 9)), (2.0, record(0, 6))]
    kept = unrevoked(queued, {TopicPartition("t", 0)})
    assert kept == [(1.0, queued[1][1])]
    assert unrevoked(queued, set()) == queued


def test_a_flush_is_due_every_interval_of_the_clock_passed_in():
    ledger = OffsetLedger(flush_every=0.5)
    assert ledger.due(100.0)
    ledger.flush(100.0)
    assert not ledger.due(100.4)
    assert ledger.due(100.5)


def test_a_flush_takes_what_was_served_since_the_last_one():
    ledger = OffsetLedger(flush_every=0.5)
    ledger.served({P0: 8})
    ledger.served({P0: 12, P1: 3})  # a later batch replaces the partition's offset
    assert ledger.flush(1.0) == {P0: 12, P1: 3}
    assert ledger.flush(2.0) == {}


def test_offsets_are_released_only_once_every_earlier_hand_off_is_acknowledged():
    ledger = OffsetLedger(flush_every=0.5)
    batch = ledger.sent()  # a batch's outputs: no offsets of their own
    first = ledger.sent({P0: 8})  # the flush after it
    second = ledger.sent({P0: 12, P1: 3})
    assert ledger.in_flight == 3
    assert ledger.acknowledged(second) == ()  # acked out of order: held back
    assert ledger.acknowledged(first) == ()  # the batch before is still out
    assert ledger.to_commit() == {}
    assert ledger.acknowledged(batch) == (Release(first, {P0: 8}), Release(second, {P0: 12, P1: 3}))
    assert ledger.in_flight == 0
    assert ledger.to_commit() == {P0: 12, P1: 3}  # one commit carries both, the later wins
    assert ledger.to_commit() == {}


def test_a_batch_acknowledged_releases_nothing_itself():
    ledger = OffsetLedger(flush_every=0.5)
    assert ledger.acknowledged(ledger.sent()) == ()
    assert ledger.acknowledged(ledger.sent({})) == ()
    assert ledger.to_commit() == {}


def test_an_unknown_ticket_is_refused():
    ledger = OffsetLedger(flush_every=0.5)
    ticket = ledger.sent({P0: 1})
    ledger.acknowledged(ticket)
    with pytest.raises(ValueError, match="not in flight"):
        ledger.acknowledged(ticket)


def test_a_failed_commit_is_tried_again_under_what_was_released_since():
    ledger = OffsetLedger(flush_every=0.5)
    ledger.acknowledged(ledger.sent({P0: 8, P1: 2}))
    failed = ledger.to_commit()
    ledger.acknowledged(ledger.sent({P0: 12}))
    ledger.commit_failed(failed)
    assert ledger.to_commit() == {P0: 12, P1: 2}


def test_a_partition_resumes_from_no_earlier_than_this_workers_own_commit():
    ledger = OffsetLedger(flush_every=0.5)
    assert ledger.resume_from(P0, None) is None  # never committed here: the group decides
    ledger.committed({P0: 12})
    assert ledger.resume_from(P0, None) == 12
    assert ledger.resume_from(P0, 8) == 12  # the group's answer is stale
    assert ledger.resume_from(P0, 12) is None
    assert ledger.resume_from(P0, 20) is None  # another worker committed later
    assigned = {TopicPartition("t", 0), TopicPartition("t", 1)}
    resumable = ledger.resumable(assigned)
    assert resumable == [TopicPartition("t", 0)] and isinstance(resumable[0], TopicPartition)


def test_a_rewind_drops_what_was_served_since_the_flush():
    ledger = OffsetLedger(flush_every=0.5)
    ledger.served({P0: 8})
    ledger.rewind()
    assert ledger.flush(1.0) == {}


def test_a_release_is_a_frozen_value():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Release(0, {P0: 1}).ticket = 1  # type: ignore[misc]
