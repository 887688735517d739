from pathlib import Path

import pytest

from pipeline.config import ConfigError, Settings


def test_defaults_use_the_local_broker():
    s = Settings.from_env({})
    assert s.uses_local_broker and s.bootstrap == "127.0.0.1:9092"
    assert s.topics.requests == "streamserve.requests"
    assert s.topics.deadletter == "streamserve.deadletter"


def test_environment_overrides():
    s = Settings.from_env({"STREAMSERVE_BROKER": "k1:9092,k2:9092", "STREAMSERVE_MAX_BATCH": "128",
                           "STREAMSERVE_REGISTRY": "/models", "STREAMSERVE_TOPIC_PREFIX": "t1"})
    assert not s.uses_local_broker and s.bootstrap == "k1:9092,k2:9092"
    assert s.max_batch == 128 and s.registry == Path("/models")
    assert s.topics.predictions == "t1.predictions"


@pytest.mark.parametrize("env,says", [
    ({"STREAMSERVE_MAX_BATCH": "lots"}, "STREAMSERVE_MAX_BATCH='lots' must be a whole number"),
    ({"STREAMSERVE_MAX_BATCH": "0"}, "STREAMSERVE_MAX_BATCH must be between 1 and 4096"),
    ({"STREAMSERVE_TOPIC_PREFIX": "a b"}, "STREAMSERVE_TOPIC_PREFIX must be non-empty"),
    ({"STREAMSERVE_LOCAL_BROKER_PORT": "70000"}, "STREAMSERVE_LOCAL_BROKER_PORT must be a port"),
    ({"STREAMSERVE_BROKER": "  "}, "STREAMSERVE_BROKER must be host:port"),
])
def test_invalid_values_name_the_variable(env, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        Settings.from_env(env)


def test_every_setting_is_documented():
    docs = Settings.documentation()
    assert all(env.startswith("STREAMSERVE_") and len(doc) > 20 for env, _, doc in docs)
