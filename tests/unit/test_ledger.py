from pipeline.ledger import Fate, Output, reconcile

REQUESTS = [("r", 0, i) for i in range(4)]


def prediction(offset, value=b"p"):
    return Output(("r", 0, offset), Fate.PREDICTION, value)


def dead_letter(offset, value=b"d"):
    return Output(("r", 0, offset), Fate.DEAD_LETTER, value)


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


def test_differing_duplicates_break_the_ledger():
    report = reconcile(REQUESTS, [prediction(i) for i in range(4)] + [prediction(2, b"other")])
    assert not report.holds and not report.duplicates_identical


def test_outputs_of_other_requests_are_strays():
    report = reconcile(REQUESTS[:2], [prediction(0), prediction(1), prediction(3)])
    assert report.holds and report.strays == 1
