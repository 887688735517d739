"""Reading the control topic's records: one that cannot be read is skipped, never fatal
(review section 9: one such record stopped every worker start and lifecycle command)."""

import orjson

from agents.kafka.control import spec_of
from pipeline.routing import DeploymentSpec


def test_a_readable_record_is_its_spec():
    spec = DeploymentSpec("iris", "2", revision=4)
    assert spec_of(orjson.dumps(spec.to_json()), 0) == spec


def test_an_unreadable_record_is_skipped_with_its_offset_in_the_log(caplog):
    newer = b'{"model":"iris","stable":"1","revision":99,"note":1}'  # a newer release's key
    for offset, value in enumerate([newer, b"not json", b"[1, 2]", b'"iris"']):
        assert spec_of(value, offset) is None
    assert "control record at offset 0 cannot be read" in caplog.text


def test_a_tombstone_holds_no_spec():
    assert spec_of(None, 3) is None
