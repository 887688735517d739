"""`bench --profile`: a function's own time goes to the stage its code belongs to; and
the CPU time per request every case reports."""

import cProfile

import orjson
import pytest

from agents.dev.bench_profile import OTHER, WAITING, Profile, stage_of


def test_code_is_put_in_its_stage_the_first_that_matches():
    assert stage_of("/repo/pipeline/decode.py", "decode_batch") == "decode"
    assert stage_of("~", "<built-in method orjson.loads>") == "decode"
    assert stage_of("~", "<built-in method orjson.dumps>") == "output building"
    assert stage_of("~", "<method 'produce' of 'cimpl.Producer' objects>") == "Kafka client (librdkafka)"
    assert stage_of("/repo/agents/kafka/librdkafka.py", "send") == "Kafka client (librdkafka)"
    assert stage_of("/venv/site-packages/aiokafka/producer/producer.py", "send") == \
        "drift counting and Faust"
    assert stage_of("/repo/agents/worker/checkpoint.py", "commit") == "commit"
    assert stage_of("/repo/agents/worker/server.py", "_serve_head") == "serving loop"
    assert stage_of("~", "<method 'poll' of 'select.epoll' objects>") == WAITING
    assert stage_of("/usr/lib/python3.11/asyncio/events.py", "_run") == "event loop (asyncio)"
    assert stage_of("/elsewhere/thing.py", "f") == OTHER


def test_a_real_profile_is_read_into_stages_per_request(tmp_path):
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20_000):
        orjson.dumps(orjson.loads(b'{"id": "r-1", "features": {"a": 1.0}}'))
    profile.disable()
    path = tmp_path / "worker.pstats"
    profile.dump_stats(path)
    read = Profile.read(path, model_thread_s=0.5, requests=1000)
    assert read.stages["decode"] > 0 and read.stages["output building"] > 0
    per = read.us_per_request()
    assert per["model thread"] == 500.0 and WAITING not in per
    assert per["decode"] == read.stages["decode"] / 1000 * 1e6
    table = read.table()
    assert "decode" in table and "model thread" in table


def test_cpu_per_request_counts_from_the_first_answer_to_the_last():
    import os

    from agents.dev.bench import _per_answer, cpu_seconds

    used = cpu_seconds([os.getpid()])
    sum(i * i for i in range(2_000_000))  # spend some CPU
    assert used is not None and cpu_seconds([os.getpid()]) > used
    assert cpu_seconds([2**22 + 7]) is None  # no such process
    assert _per_answer((100, 1.0), 1100, 1.5) == 500.0  # 0.5 s over 1,000 answers
    assert _per_answer(None, 1100, 1.5) is None  # all answered before the first look
    assert _per_answer((1100, 1.0), 1100, 1.5) is None
    assert _per_answer((100, 1.0), 1100, 1.05) is None  # five clock ticks: mostly rounding


def test_a_workers_cpu_splits_by_thread_into_main_librdkafka_and_the_rest():
    import os
    import threading

    from agents.dev.bench import _by_thread, thread_cpu_seconds

    before = thread_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # the main thread's
    side = threading.Thread(target=lambda: sum(i * i for i in range(2_000_000)))
    side.start()
    side.join()
    after = thread_cpu_seconds(os.getpid())
    assert before is not None and after is not None and set(after) == {"main thread", "librdkafka"}
    assert after["main thread"] > before["main thread"] and after["librdkafka"] == before["librdkafka"]
    split = _by_thread({"main thread": 1.0, "librdkafka": 0.5}, {"main thread": 1.6, "librdkafka": 0.7},
                       per_request=1000.0, answers=1000)
    assert split == pytest.approx({"main thread": 600.0, "librdkafka": 200.0, "other threads": 200.0})
    assert _by_thread(None, after, 1000.0, 1000) is None
