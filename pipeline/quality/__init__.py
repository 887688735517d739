"""Ground truth: labels joined with the answers they judge, and how good those answers were.

The flow::

    labels topic:  decode_label(key, value) -> Label | LabelRefusal
    worker:        Kept(model, version, route, time, predicted, probabilities | value)
    the wire:      KeptAnswers -> kept_messages(...) / label_message(...)  (join_partition(id))
    join (per id): Entry.on_prediction(kept, offset) / Entry.on_label(label, arrived, offset)
                   Entry.expire(now, horizon, wait) -> (drop?, [Judged])
    figures:       Book.change(entry) (a partition's sums follow its entries) -> reports()
                   merge_reports(reports of every partition) -> Scores per version and route
                   Scores.report(regressor) -> accuracy, log loss, Brier, ECE, MAE...
    verdicts:      below_training(...) / canary_worse(...) -> Finding (exact tests)

Modules: ``labels`` (the label message), ``outcomes`` (what became of a label),
``wire`` (the join topic's messages), ``join`` (one request id's state), ``scores`` (the
sums and figures), ``book`` (a partition's sums), ``significance`` (the tests behind
alerts and canary verdicts).
"""

from pipeline.quality.book import Book, merge_reports
from pipeline.quality.join import Entry, Judged, Kept
from pipeline.quality.labels import Label, LabelRefusal, decode_label, encode_label
from pipeline.quality.outcomes import Outcome
from pipeline.quality.scores import Scores
from pipeline.quality.significance import Finding, below_training, canary_worse

__all__ = ["Book", "Entry", "Finding", "Judged", "Kept", "Label", "LabelRefusal", "Outcome", "Scores",
           "below_training", "canary_worse", "decode_label", "encode_label",
           "merge_reports"]
