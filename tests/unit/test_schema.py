"""Input schemas: the sensitive mark, its JSON form and its signature."""

import json
import math
from dataclasses import replace

import pytest

from pipeline.registry import Registry
from pipeline.schema import Feature, InputSchema, SchemaError
from pipeline.signing import (
    SignatureError,
    TrustedKeys,
    generate_signing_key,
    register_signed,
    verify_version,
)
from tests.unit.test_registry import PARAMS, draft

SCHEMA = InputSchema((Feature("age", minimum=0.0, maximum=120.0), Feature("income"), Feature("zip")))


def test_a_feature_round_trips_with_and_without_the_mark():
    marked = Feature("age", "float32", 0.0, 120.0, sensitive=True)
    assert marked.to_json() == {"name": "age", "dtype": "float32", "minimum": 0.0, "maximum": 120.0,
                                "sensitive": True}
    assert Feature.from_json(marked.to_json()) == marked
    plain = Feature("income")
    assert plain.to_json() == {"name": "income", "dtype": "float32", "minimum": None, "maximum": None}
    assert Feature.from_json(plain.to_json()) == plain and plain.maximum == math.inf


def test_a_manifest_written_before_the_mark_reads_as_unmarked():
    old = {"features": [{"name": "age", "dtype": "float32", "minimum": 0.0, "maximum": 120.0}]}
    schema = InputSchema.from_json(old)
    assert schema.sensitive == () and schema.to_json() == old


def test_marked_adds_marks_in_schema_order_and_keeps_the_rest():
    marked = SCHEMA.marked(["zip", "age"])
    assert marked.sensitive == ("age", "zip") and SCHEMA.sensitive == ()
    assert marked.marked(["income"]).sensitive == ("age", "income", "zip")
    assert marked.marked([]) == marked and marked.features[0].maximum == 120.0
    assert InputSchema.from_json(marked.to_json()) == marked


def test_marking_a_feature_the_schema_lacks_is_refused_naming_the_features():
    with pytest.raises(SchemaError, match=r"cannot mark 'postcode', 'ssn' sensitive: the model has no "
                                          r"such feature; its features are age, income, zip"):
        SCHEMA.marked(["ssn", "age", "postcode"])


def test_the_mark_is_signed_with_the_manifest(tmp_path):
    key = generate_signing_key(tmp_path / "keys" / "signing.key")
    registry = Registry(tmp_path / "registry")
    register_signed(registry, replace(draft(), inputs=draft().inputs.marked(["b"])), PARAMS, key)
    trusted = TrustedKeys.of(key.public_key())
    assert verify_version(registry, "iris", "1", trusted).manifest.inputs.sensitive == ("b",)
    path = registry.folder("iris", "1") / "manifest.json"
    document = json.loads(path.read_text())
    del document["inputs"]["features"][1]["sensitive"]  # unmarking is tampering
    path.write_text(json.dumps(document))
    with pytest.raises(SignatureError) as caught:
        verify_version(registry, "iris", "1", trusted)
    assert caught.value.reason == "tampered_manifest"
