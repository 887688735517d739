import json
from dataclasses import fields, replace

import numpy as np
import pytest

from pipeline.registry import (
    FORMAT_VERSION,
    Manifest,
    ManifestDraft,
    Registry,
    RegistryError,
    fingerprint,
)
from pipeline.schema import Feature, InputSchema, OutputSchema


def draft(model="iris"):
    return ManifestDraft(
        model=model,
        architecture="mlp",
        hyperparameters={"hidden": (16,), "l2": 1e-3},
        inputs=InputSchema((Feature("a", minimum=0.0, maximum=1.5), Feature("b"))),
        outputs=OutputSchema(("no", "yes")),
        metrics={"test_accuracy": 1},
        lineage={"data_fingerprint": fingerprint(np.zeros(3)), "seed": 0},
        reference={},
    )


DRAFT_FIELDS = [f.name for f in fields(ManifestDraft)]
PARAMS = {"w0": np.arange(6, dtype=np.float32).reshape(2, 3), "b0": np.zeros(3, np.float32)}


def test_round_trip(tmp_path):
    registry = Registry(tmp_path)
    registered = registry.register(draft(), PARAMS)
    assert registered.version == "1"
    assert registry.manifest("iris", "1") == registered
    assert registered.hyperparameters == {"hidden": [16], "l2": 1e-3}  # stored as JSON stores it
    assert registered.inputs.features[1].maximum == float("inf")
    loaded = registry.load_params("iris", "1")
    assert loaded.keys() == PARAMS.keys()
    for name, array in PARAMS.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
    on_disk = json.loads((tmp_path / "iris" / "1" / "manifest.json").read_text())
    assert on_disk["format_version"] == FORMAT_VERSION
    assert Manifest.from_json(on_disk) == registered


def test_versions_count_up_in_numeric_order(tmp_path):
    registry = Registry(tmp_path)
    assert registry.latest("iris") is None
    for _ in range(11):
        registry.register(draft(), PARAMS)
    registry.register(draft("other"), PARAMS)
    assert registry.versions("iris") == [str(v) for v in range(1, 12)]
    assert registry.latest("iris") == "11"
    assert registry.models() == ["iris", "other"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "iris").iterdir())  # no leftovers


def test_an_existing_version_is_never_overwritten(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    registry.register(draft(), PARAMS)
    registry.register(draft(), PARAMS)
    before = (tmp_path / "iris" / "2" / "params.npz").read_bytes()
    # A concurrent registration that also computed version 2 must lose, not overwrite.
    monkeypatch.setattr(Registry, "latest", lambda self, model: "1")
    with pytest.raises(RegistryError, match="never overwritten"):
        registry.register(draft(), {"w0": np.ones(1, np.float32)})
    assert (tmp_path / "iris" / "2" / "params.npz").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "iris").iterdir()) == ["1", "2"]


def test_a_modified_artifact_is_refused(tmp_path):
    registry = Registry(tmp_path)
    registry.register(draft(), PARAMS)
    path = tmp_path / "iris" / "1" / "params.npz"
    np.savez(path, w0=np.ones((2, 3), np.float32), b0=np.zeros(3, np.float32))
    with pytest.raises(RegistryError, match=r"iris version 1: params\.npz .* modified"):
        registry.load_params("iris", "1")


def test_unknown_model_and_version_say_what_exists(tmp_path):
    registry = Registry(tmp_path)
    registry.register(draft(), PARAMS)
    with pytest.raises(RegistryError, match=r"unknown model 'irsi'.*known models: iris.*models train irsi"):
        registry.manifest("irsi", "1")
    with pytest.raises(RegistryError, match=r"no version '7' \(known versions: 1\)"):
        registry.load_params("iris", "7")


def test_model_names_cannot_leave_the_registry(tmp_path):
    registry = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="not a model name"):
        registry.versions("../etc")
    with pytest.raises(RegistryError, match="not a model name"):
        draft("a/b")


def test_a_moved_version_folder_is_refused(tmp_path):
    registry = Registry(tmp_path)
    registry.register(draft(), PARAMS)
    (tmp_path / "iris" / "1").rename(tmp_path / "iris" / "5")
    with pytest.raises(RegistryError, match="moved or copied"):
        registry.manifest("iris", "5")


def test_manifest_fields_must_be_plain_json():
    with pytest.raises(RegistryError, match="finite"):
        replace(draft(), metrics={"loss": float("nan")})
    with pytest.raises(RegistryError, match="plain JSON"):
        replace(draft(), lineage={"when": object()})
    with pytest.raises(RegistryError, match="positive whole number"):
        Manifest(**{f: getattr(draft(), f) for f in DRAFT_FIELDS}, version="v1", param_hashes={})


def test_fingerprint_sees_dtype_shape_and_values():
    x = np.arange(6, dtype=np.float32)
    assert fingerprint(x) == fingerprint(x.copy())
    assert len({fingerprint(x), fingerprint(x.reshape(2, 3)), fingerprint(x.astype(np.float64)),
                fingerprint(x + 1)}) == 4
