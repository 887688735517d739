"""The bench's model ceiling for models of any architecture: rows for a model registered
without input ranges, and notes without a FLOP bound but with the library's own rate."""

import numpy as np

from agents.dev.bench_results import Case
from agents.dev.bench_traffic import feature_rows
from pipeline.registry import Manifest
from pipeline.schema import Feature, InputSchema, OutputSchema


def test_rows_are_finite_for_features_without_a_range():
    manifest = Manifest(model="m", architecture="trees:softmax", hyperparameters={},
                        inputs=InputSchema((Feature("a"), Feature("b", minimum=0.0, maximum=1.0))),
                        outputs=OutputSchema(("x", "y")), metrics={},
                        lineage={"data_fingerprint": "0" * 64, "code_revision": "r",
                                 "created_at": "2026-12-06T00:00:00+00:00", "created_by": "u@h"},
                        reference={}, version="1", param_hashes={})
    rows = feature_rows(manifest, 100)
    assert np.isfinite([r["a"] for r in rows]).all()
    assert all(0.0 <= r["b"] <= 1.0 for r in rows)


def test_a_tree_model_is_measured_beside_its_library_not_a_flop_bound():
    case = Case("2 model ceiling", 80_000.0, 0.1, extra={
        "best_bucket": 64, "bucket_1_rps": 3_000.0, "flop_bound_rps": None, "gflops": None,
        "flops_per_row": 0, "library": "xgboost 3.2.0", "library_rps": 160_000.0})
    assert case.notes() == ("rows/s at bucket 64 (3,000 at 1), "
                            "xgboost 3.2.0's own predictor 160,000 rows/s (0.50x)")
