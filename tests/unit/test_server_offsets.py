from aiokafka import ConsumerRecord, TopicPartition

from agents.worker.server import _next_offsets


def record(partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic="t", partition=partition, offset=offset, timestamp=0,
                          timestamp_type=0, key=None, value=b"", checksum=None,
                          serialized_key_size=0, serialized_value_size=0, headers=())


def test_commits_one_past_the_last_record_of_each_partition():
    offsets = _next_offsets([record(0, 5), record(1, 9), record(0, 6), record(0, 7)])
    assert {tp: m.offset for tp, m in offsets.items()} == {TopicPartition("t", 0): 8,
                                                           TopicPartition("t", 1): 10}
