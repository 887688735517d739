import struct

import pytest
from aiokafka.errors import IncompatibleBrokerVersion

from agents.cli.main import main
from agents.ops.broker_quotas import (
    MATCH_DEFAULT,
    MATCH_EXACT,
    AlterClientQuotasRequest,
    AlterClientQuotasRequest_v0,
    AlterClientQuotasResponse_v0,
    DescribeClientQuotasRequest,
    DescribeClientQuotasRequest_v0,
    DescribeClientQuotasResponse_v0,
)
from pipeline.broker_quotas import (
    ClientQuota,
    QuotaError,
    describe_entity,
    entity,
    quota_values,
    render,
)

VERSIONS = {48: (0, 1), 49: (0, 1)}  # what a Kafka 3.9 broker announces


def string(text: str | None) -> bytes:
    """Kafka's (nullable) STRING: int16 length, -1 for null, then UTF-8 bytes."""
    return struct.pack(">h", -1) if text is None else struct.pack(">h", len(text)) + text.encode()


def test_alter_is_encoded_as_kafka_reads_version_0():
    request = AlterClientQuotasRequest([
        ([("user", "alice")], [("producer_byte_rate", 1024.0, False),
                               ("consumer_byte_rate", 0.0, True)]),
        ([("client-id", None)], [("request_percentage", 50.0, False)]),
    ]).prepare(VERSIONS)
    assert isinstance(request, AlterClientQuotasRequest_v0) and request.API_KEY == 49
    expected = (struct.pack(">i", 2)
                + struct.pack(">i", 1) + string("user") + string("alice")
                + struct.pack(">i", 2)
                + string("producer_byte_rate") + struct.pack(">d?", 1024.0, False)
                + string("consumer_byte_rate") + struct.pack(">d?", 0.0, True)
                + struct.pack(">i", 1) + string("client-id") + string(None)
                + struct.pack(">i", 1)
                + string("request_percentage") + struct.pack(">d?", 50.0, False)
                + struct.pack(">?", False))
    assert request.encode() == expected


def test_describe_is_encoded_as_kafka_reads_version_0():
    request = DescribeClientQuotasRequest([("user", MATCH_EXACT, "alice"),
                                           ("client-id", MATCH_DEFAULT, None)], strict=True)
    encoded = request.prepare(VERSIONS)
    assert isinstance(encoded, DescribeClientQuotasRequest_v0) and encoded.API_KEY == 48
    assert encoded.encode() == (struct.pack(">i", 2) + string("user") + struct.pack(">b", 0)
                                + string("alice") + string("client-id") + struct.pack(">b", 1)
                                + string(None) + struct.pack(">?", True))
    assert DescribeClientQuotasRequest([], strict=False).prepare(VERSIONS).encode() == \
        struct.pack(">i?", 0, False)


def test_a_broker_without_the_apis_is_told_apart():
    with pytest.raises(IncompatibleBrokerVersion):
        DescribeClientQuotasRequest([], strict=False).prepare({})


def test_responses_are_decoded():
    described = (struct.pack(">ih", 7, 0) + string(None) + struct.pack(">i", 1)
                 + struct.pack(">i", 2) + string("user") + string("alice")
                 + string("client-id") + string(None)
                 + struct.pack(">i", 1) + string("producer_byte_rate") + struct.pack(">d", 2048.0))
    response = DescribeClientQuotasResponse_v0.decode(described)
    assert (response.throttle_time_ms, response.error_code, response.error_message) == (7, 0, None)
    assert response.entries == [([("user", "alice"), ("client-id", None)],
                                 [("producer_byte_rate", 2048.0)])]
    altered = (struct.pack(">ii", 0, 1) + struct.pack(">h", 42) + string("bad quota")
               + struct.pack(">i", 1) + string("user") + string("bob"))
    assert AlterClientQuotasResponse_v0.decode(altered).entries == \
        [(42, "bad quota", [("user", "bob")])]


def test_entities_name_users_client_ids_and_defaults():
    assert entity(user="alice") == (("user", "alice"),)
    assert entity(user="User:alice") == (("user", "alice"),)  # as principals are written
    assert entity(user="<default>") == (("user", None),)
    both = entity(user="alice", client_id="web")
    assert both == (("client-id", "web"), ("user", "alice"))
    assert describe_entity(both) == "user=alice,client-id=web"
    assert describe_entity(entity(client_id="<default>")) == "client-id=<default>"
    with pytest.raises(QuotaError, match="--user NAME .* --client-id ID"):
        entity()
    with pytest.raises(QuotaError, match="must not be empty"):
        entity(user=" ")


def test_values_are_checked():
    assert quota_values(1024) == {"producer_byte_rate": 1024.0}
    assert quota_values(consumer_byte_rate=10, request_percentage=12.5) == \
        {"consumer_byte_rate": 10.0, "request_percentage": 12.5}
    with pytest.raises(QuotaError, match="at least one of --producer-byte-rate"):
        quota_values()
    with pytest.raises(QuotaError, match="--producer-byte-rate must be a positive number"):
        quota_values(0)
    with pytest.raises(QuotaError, match="--consumer-byte-rate must be a whole number"):
        quota_values(consumer_byte_rate=1.5)
    with pytest.raises(QuotaError, match="--request-percentage must be a positive number"):
        quota_values(request_percentage=float("nan"))


def test_quotas_render_as_a_table():
    table = render([ClientQuota(entity(client_id="web"), {"request_percentage": 12.5}),
                    ClientQuota(entity(user="alice"), {"producer_byte_rate": 1048576.0})])
    assert table.splitlines() == [
        "ENTITY         PRODUCER B/S  CONSUMER B/S  REQUEST %",
        "client-id=web  -             -             12.5",
        "user=alice     1048576       -             -"]


@pytest.mark.parametrize("args, message", [
    (["quota", "set", "--user", "alice"], "give at least one of --producer-byte-rate"),
    (["quota", "set", "--producer-byte-rate", "1024"], "name whom the quota holds for"),
    (["quota", "set", "--user", "alice", "--producer-byte-rate", "-5"],
     "--producer-byte-rate must be a positive number"),
    (["quota", "remove"], "name whom the quota holds for"),
])
def test_the_command_line_checks_its_arguments_before_calling_kafka(args, message, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("STREAMSERVE_BROKER", "127.0.0.1:1")  # nothing listens: never reached
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamserve: error: ") and message in err and len(err.splitlines()) == 1


def test_the_command_line_refuses_a_byte_rate_that_is_no_number(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["quota", "set", "--user", "alice", "--producer-byte-rate", "1.5"])
    assert exit_.value.code == 2 and "invalid int value: '1.5'" in capsys.readouterr().err
