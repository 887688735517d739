import pytest

from pipeline.catalog import Catalog
from pipeline.rejections import Reason
from pipeline.schema import Feature, InputSchema

SCHEMA = InputSchema((Feature("a"),))


def test_default_and_pinned_versions():
    catalog = Catalog({"m": {"1": SCHEMA, "2": SCHEMA}}, {"m": "2"})
    assert catalog.resolve("m", None) == ("2", SCHEMA)
    assert catalog.resolve("m", "1") == ("1", SCHEMA)
    assert catalog.resolve("m", "3").reason is Reason.UNKNOWN_VERSION
    assert catalog.resolve("x", None).reason is Reason.UNKNOWN_MODEL


def test_default_must_exist():
    with pytest.raises(ValueError, match="m:9 is not in the catalog"):
        Catalog({"m": {"1": SCHEMA}}, {"m": "9"})
