"""Ground truth: labels joined with the answers they judge, and how good those answers were.

The flow::

    labels topic:  decode_label(key, value) -> Label | LabelRefusal
    worker:        Kept(model, version, route, time, predicted, probabilities | value)
    join (per id): Entry.on_prediction(kept) / Entry.on_label(label) -> [Judged]
                   Entry.expire(now, horizon, wait) -> (drop?, [Judged])
    scoring:       Scores.add(kept, truth, classes, delay)   (sums: windows add up)
                   Scores.report(regressor) -> accuracy, log loss, Brier, ECE, MAE...
    verdicts:      below_training(...) / canary_worse(...) -> Finding (exact tests)

Modules: ``labels`` (the label message), ``outcomes`` (what became of a label),
``join`` (one request id's state), ``scores`` (the sums and figures), ``significance``
(the tests behind alerts and canary verdicts).
"""

from pipeline.quality.join import Entry, Judged, Kept
from pipeline.quality.labels import Label, LabelRefusal, decode_label
from pipeline.quality.outcomes import Outcome
from pipeline.quality.scores import Scores
from pipeline.quality.significance import Finding, below_training, canary_worse

__all__ = ["Entry", "Finding", "Judged", "Kept", "Label", "LabelRefusal", "Outcome", "Scores",
           "below_training", "canary_worse", "decode_label"]
