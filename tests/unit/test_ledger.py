import orjson

from pipeline.ledger import Fate, ReplyRecord, reconcile

REQUESTS = [("r", 0, i) for i in range(4)]


def prediction(offset, value=b"p"):
    return ReplyRecord(("r", 0, offset), Fate.PREDICTION, value)


def dead_letter(offset, value=b"d"):
    return ReplyRecord(("r", 0, offset), Fate.DEAD_LETTER, value)


def test_one_fate_each_holds_exactly_once():
    report = reconcile(REQUESTS, [prediction(0), prediction(1), dead_letter(2), prediction(3)])
    assert report.holds and report.exactly_once
    assert (report.requests, report.predictions, report.dead_letters) == (4, 3, 1)


def test_a_request_without_output_is_lost():
    report = reconcile(REQUESTS, [prediction(0), prediction(1), dead_letter(2)])
    assert not report.holds and report.lost == (("r", 0, 3),)


def test_a_request_with_both_fates_breaks_the_ledger():
    report = reconcile(REQUESTS, [prediction(0), prediction(1), dead_letter(1), prediction(2),
                                  prediction(3)])
    assert not report.holds and report.both == (("r", 0, 1),)


def test_identical_duplicates_hold_at_least_once_but_not_exactly_once():
    report = reconcile(REQUESTS, [prediction(i) for i in range(4)] + [prediction(2)])
    assert report.holds and not report.exactly_once and report.duplicated == (("r", 0, 2),)
    assert report.identical_duplicates == 1


def answered(label, latency_ms, version="1", probabilities=(0.25, 0.75)):
    return orjson.dumps({"id": "x", "model_name": "m", "model_version": version,
                         "parameters": {"latency_ms": latency_ms},
                         "outputs": [{"name": "probabilities", "shape": [1, len(probabilities)],
                                      "datatype": "FP32", "data": list(probabilities)},
                                     {"name": "label", "shape": [1], "datatype": "BYTES",
                                      "data": [label]}]})


def test_a_repeat_served_differently_with_the_same_answer_holds():
    outputs = [prediction(i, answered("a", 1.0)) for i in range(4)] + [prediction(2, answered("a", 7.5))]
    report = reconcile(REQUESTS, outputs)
    assert report.holds and report.duplicated == (("r", 0, 2),) and report.identical_duplicates == 0


def test_a_repeat_computed_in_another_batch_size_differs_in_float_noise_only():
    noisy = answered("a", 3.0, probabilities=(0.25 + 3e-8, 0.75 - 3e-8))
    report = reconcile(REQUESTS, [prediction(i, answered("a", 1.0)) for i in range(4)] + [prediction(2, noisy)])
    assert report.holds and report.duplicated == (("r", 0, 2),)


def test_a_repeat_with_another_answer_breaks_the_ledger():
    for other in (answered("b", 1.0), answered("a", 1.0, version="2"), b"not json",
                  answered("a", 1.0, probabilities=(0.3, 0.7))):
        report = reconcile(REQUESTS, [prediction(i, answered("a", 1.0)) for i in range(4)]
                           + [prediction(2, other)])
        assert not report.holds and report.conflicting == (("r", 0, 2),)


def test_a_dead_letter_repeated_with_another_reason_conflicts():
    first = orjson.dumps({"reason": "deadline_exceeded", "error": "late by 3 ms"})
    same = orjson.dumps({"reason": "deadline_exceeded", "error": "late by 9 ms"})
    other = orjson.dumps({"reason": "model_error", "error": "boom"})
    assert reconcile(REQUESTS[2:3], [dead_letter(2, first), dead_letter(2, same)]).holds
    assert not reconcile(REQUESTS[2:3], [dead_letter(2, first), dead_letter(2, other)]).holds


def test_outputs_of_other_requests_are_strays():
    report = reconcile(REQUESTS[:2], [prediction(0), prediction(1), prediction(3)])
    assert report.holds and report.strays == 1


def test_an_answer_without_its_requests_id_fails_the_ledger():
    """Reliability review section 5: dead letters of a batch that failed whole lost their
    ids (clients waiting by id timed out), yet the ledger, matching by position, held."""
    named = orjson.dumps({"id": "r-0", "reason": "model_error", "error": "boom"})
    unnamed = orjson.dumps({"id": None, "reason": "model_error", "error": "boom"})
    too_large = orjson.dumps({"id": None, "reason": "too_large", "error": "big"})
    ids = {("r", 0, 0): "r-0"}
    assert reconcile(REQUESTS[:1], [dead_letter(0, named)], ids).holds
    report = reconcile(REQUESTS[:1], [dead_letter(0, unnamed)], ids)
    assert not report.holds and report.misnamed == (("r", 0, 0),)
    assert reconcile(REQUESTS[:1], [dead_letter(0, too_large)], ids).holds  # read no id
    other = orjson.dumps({"id": "r-9", "model_name": "m", "outputs": []})
    assert not reconcile(REQUESTS[:1], [prediction(0, other)], ids).holds
