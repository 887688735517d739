import datetime
import io
import json
import tarfile
from dataclasses import fields, replace

import numpy as np
import pytest

from pipeline.registry import (
    FORMAT_VERSION,
    LINEAGE_KEYS,
    SENSITIVE_FORMAT_VERSION,
    Manifest,
    ManifestDraft,
    Registry,
    RegistryError,
    fingerprint,
    lineage,
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
        lineage=LINEAGE,
        reference={},
    )


LINEAGE = lineage(np.zeros((3, 2), np.float32), np.array([0, 1, 1]), code_revision="abc123",
                  created_by="ada@lab", seed=0,
                  created_at=datetime.datetime(2026, 11, 30, 6, 0, tzinfo=datetime.timezone(
                      datetime.timedelta(hours=1))))
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


def test_lineage_names_the_data_the_code_the_time_and_who():
    x, y = np.zeros((3, 2), np.float32), np.array([0, 1, 1])
    assert LINEAGE == {"data_fingerprint": fingerprint(x, y), "code_revision": "abc123",
                       "created_at": "2026-11-30T05:00:00+00:00", "created_by": "ada@lab", "seed": 0}
    assert set(LINEAGE_KEYS) <= set(LINEAGE)
    with pytest.raises(RegistryError, match="timezone-aware"):
        lineage(x, y, code_revision="abc", created_by="ada@lab",
                created_at=datetime.datetime(2026, 11, 30))


@pytest.mark.parametrize("change,says", [
    ({"code_revision": None}, "lacks code_revision"),
    ({"created_by": ""}, "lacks created_by"),
    ({"data_fingerprint": "abc"}, "data_fingerprint must be a sha256"),
    ({"created_at": "2026-11-30T06:00:00+01:00"}, "ISO 8601 time in UTC"),
    ({"created_at": "yesterday"}, "ISO 8601 time in UTC"),
])
def test_lineage_is_required(change, says):
    bad = {k: v for k, v in (LINEAGE | change).items() if v is not None}
    with pytest.raises(RegistryError, match=says):
        replace(draft(), lineage=bad)


def test_another_manifest_format_is_refused_clearly(tmp_path):
    registry = Registry(tmp_path)
    registry.register(draft(), PARAMS)
    path = tmp_path / "iris" / "1" / "manifest.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps(document | {"format_version": 3}))
    with pytest.raises(RegistryError, match=r"format_version 3 is not one this streamserve reads "
                                            r"\(1 or 2\); use the streamserve release that wrote it"):
        registry.manifest("iris", "1")


def test_sensitive_marks_round_trip_and_only_marked_manifests_are_format_2(tmp_path):
    registry = Registry(tmp_path)
    plain = registry.register(draft(), PARAMS)
    marked = registry.register(replace(draft(), inputs=draft().inputs.marked(["b"])), PARAMS)
    assert marked.inputs.sensitive == ("b",) and plain.inputs.sensitive == ()
    assert registry.manifest("iris", "2") == marked
    documents = [json.loads((tmp_path / "iris" / v / "manifest.json").read_text()) for v in "12"]
    assert [d["format_version"] for d in documents] == [FORMAT_VERSION, SENSITIVE_FORMAT_VERSION]
    # An unmarked feature is written as before the mark existed: old signatures still match.
    assert [f.get("sensitive") for f in documents[1]["inputs"]["features"]] == [None, True]
    assert "sensitive" not in json.dumps(documents[0])


def test_a_sensitive_mark_that_is_not_a_boolean_is_refused(tmp_path):
    registry = Registry(tmp_path)
    registry.register(draft(), PARAMS)
    path = tmp_path / "iris" / "1" / "manifest.json"
    document = json.loads(path.read_text())
    document["inputs"]["features"][0]["sensitive"] = "yes"
    path.write_text(json.dumps(document))
    with pytest.raises(RegistryError, match="feature 'a': 'sensitive' must be true or false"):
        registry.manifest("iris", "1")


def test_a_sidecar_is_written_before_the_version_appears(tmp_path):
    registry = Registry(tmp_path)
    seen = []

    def sidecar(manifest_bytes):
        seen.append(manifest_bytes)
        assert registry.versions("iris") == []  # not yet visible
        return {"signature.json": b"{}"}

    registry.register(draft(), PARAMS, sidecar=sidecar)
    assert (tmp_path / "iris" / "1" / "signature.json").read_bytes() == b"{}"
    assert seen == [(tmp_path / "iris" / "1" / "manifest.json").read_bytes()]
    with pytest.raises(RegistryError, match="only signature.json"):
        registry.register(draft(), PARAMS, sidecar=lambda _: {"manifest.json": b"{}"})
    assert registry.versions("iris") == ["1"]


def test_export_then_import_keeps_the_version_and_refuses_an_existing_one(tmp_path):
    source, target = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    source.register(draft(), PARAMS)
    source.register(draft(), PARAMS)
    archive = source.export("iris", "2", tmp_path / "iris-2.tar.gz")
    assert source.export("iris", "2", tmp_path / "again.tar.gz").read_bytes() == archive.read_bytes()
    with pytest.raises(RegistryError, match="already exists; remove it or choose another --out"):
        source.export("iris", "2", archive)
    checked = []
    imported = target.import_archive(archive, check=lambda *a: checked.append(a))
    assert imported == source.manifest("iris", "2")
    assert target.versions("iris") == ["2"] and checked[0][1:] == ("iris", "2")
    np.testing.assert_array_equal(target.load_params("iris", "2")["w0"], PARAMS["w0"])
    with pytest.raises(RegistryError, match=r"iris:2 already exists .* never overwritten"):
        target.import_archive(archive, check=lambda *a: None)
    assert sorted(p.name for p in (tmp_path / "b" / "iris").iterdir()) == ["2"]  # no leftovers


def test_a_refused_import_leaves_nothing(tmp_path):
    source, target = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    source.register(draft(), PARAMS)
    archive = source.export("iris", "1", tmp_path / "iris-1.tar.gz")

    def refuse(folder, model, version):
        raise RegistryError("no")

    with pytest.raises(RegistryError, match="no"):
        target.import_archive(archive, check=refuse)
    assert target.models() == [] and not (tmp_path / "b" / "iris").exists()


@pytest.mark.parametrize("entries,says", [
    ({"iris/1/manifest.json": b"{}", "iris/1/../../evil": b"x"}, "unexpected entry"),
    ({"iris/1/manifest.json": b"{}", "iris/1/params.npz": b"", "iris/2/params.npz": b""},
     "exactly one model version"),
    ({"iris/1/manifest.json": b"{}"}, "lacks params.npz"),
    ({"../1/manifest.json": b"{}"}, "does not name a model and version"),
])
def test_import_refuses_what_is_not_an_export(tmp_path, entries, says):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(RegistryError, match=says):
        Registry(tmp_path / "r").import_archive(archive, check=lambda *a: None)
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(RegistryError, match="not a streamserve model export"):
        Registry(tmp_path / "r").import_archive(tmp_path / "junk.tar.gz", check=lambda *a: None)
    assert Registry(tmp_path / "r").models() == []
