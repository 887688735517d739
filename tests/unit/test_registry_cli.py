"""`streamserve models ...` and `streamserve keys ...`, run through ``agents.cli.main.main``."""

import io
import os
import stat
import tarfile

import pytest

from agents.cli.main import main
from pipeline.registry import Registry
from tests.unit.test_registry import PARAMS, draft


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A registry and a key folder of their own; returns the registry's path."""
    monkeypatch.setenv("STREAMSERVE_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMSERVE_SIGNING_KEY", str(tmp_path / "keys" / "signing.key"))
    monkeypatch.setenv("STREAMSERVE_TRUSTED_KEYS", str(tmp_path / "keys"))
    monkeypatch.delenv("STREAMSERVE_ALLOW_UNSIGNED", raising=False)
    return tmp_path / "registry"


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_keys_generate_writes_a_private_key_and_refuses_to_replace_it(tmp_path, env, capsys):
    status, out, _ = run(capsys, "keys", "generate")
    key = tmp_path / "keys" / "signing.key"
    assert status == 0 and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "key id " in out and "it is trusted here" in out
    status, _, err = run(capsys, "keys", "generate", "--out", str(key))
    assert status == 2 and "already exists; keep it" in err
    status, out, _ = run(capsys, "keys", "generate", "--out", str(tmp_path / "elsewhere" / "k.key"))
    assert status == 0 and "copy it there" in out and (tmp_path / "elsewhere" / "k.pub").exists()


def test_sign_verify_list_and_show(env, capsys):
    Registry(env).register(draft(), PARAMS)
    status, out, _ = run(capsys, "models", "list")
    assert status == 0 and "SIGNATURE" in out and "unsigned" in out
    status, _, err = run(capsys, "models", "verify", "iris")
    assert status == 1 and "iris:1 is not signed" in err and "streamserve models sign iris 1" in err

    status, out, _ = run(capsys, "models", "sign", "iris", "1")  # creates the missing key
    assert status == 0 and out.startswith("signed iris:1 with key ")
    status, out, _ = run(capsys, "models", "verify", "iris")
    assert status == 0 and "iris:1 verified: signed by trusted key" in out
    status, out, _ = run(capsys, "models", "list")
    assert "verified " in out
    status, out, _ = run(capsys, "models", "show", "iris")
    assert status == 0 and out.startswith("iris:1 in ")
    for says in ("architecture", "inputs", "2 features: a float32 [0, 1.5], b float32 any value",
                 "outputs", "no, yes", "test_accuracy 1.0000", "lineage.code_revision",
                 "lineage.created_by", "ada@lab", "lineage.data_fingerprint",
                 "sha256 params.npz", "verified (signed by trusted key"):
        assert says in out, says

    (env / "iris" / "1" / "params.npz").write_bytes(b"changed")
    status, _, err = run(capsys, "models", "verify", "iris", "1")
    assert status == 1 and "params.npz does not match the sha256" in err
    status, out, _ = run(capsys, "models", "list")
    assert "tampered_parameters" in out
    status, out, _ = run(capsys, "models", "show", "iris", "1")
    assert "tampered_parameters: iris:1" in out


def test_unknown_models_and_versions_are_user_errors(env, capsys):
    Registry(env).register(draft(), PARAMS)
    status, _, err = run(capsys, "models", "verify", "irsi")
    assert status == 2 and "unknown model 'irsi'" in err
    status, _, err = run(capsys, "models", "show", "iris", "9")
    assert status == 2 and "no version '9'" in err


def test_export_then_import_elsewhere(tmp_path, env, capsys, monkeypatch):
    Registry(env).register(draft(), PARAMS)
    assert run(capsys, "models", "sign", "iris", "1")[0] == 0
    archive = tmp_path / "iris-1.tar.gz"
    status, out, _ = run(capsys, "models", "export", "iris", "1", "--out", str(archive))
    assert status == 0 and f"wrote {archive}: iris:1, verified" in out

    other = tmp_path / "other"
    monkeypatch.setenv("STREAMSERVE_REGISTRY", str(other))
    status, out, _ = run(capsys, "models", "import", str(archive))
    assert status == 0 and f"imported iris:1 into {other}: verified" in out
    status, _, err = run(capsys, "models", "import", str(archive))
    assert status == 2 and "iris:1 already exists" in err

    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as tar, tarfile.open(tampered, "w:gz") as new:
        for member in tar:
            data = tar.extractfile(member).read().replace(b'"no"', b'"NO"')
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    monkeypatch.setenv("STREAMSERVE_REGISTRY", str(tmp_path / "third"))
    status, _, err = run(capsys, "models", "import", str(tampered))
    assert status == 1 and "refused to import" in err
    assert "iris:1: manifest.json was changed after key" in err
    assert Registry(tmp_path / "third").models() == []


def test_an_unsigned_export_is_imported_only_when_allowed(tmp_path, env, capsys, monkeypatch):
    Registry(env).register(draft(), PARAMS)
    archive = tmp_path / "iris-1.tar.gz"
    status, _, err = run(capsys, "models", "export", "iris", "1", "--out", str(archive))
    assert status == 0 and "an importer refuses it" in err
    monkeypatch.setenv("STREAMSERVE_REGISTRY", str(tmp_path / "other"))
    status, _, err = run(capsys, "models", "import", str(archive))
    assert status == 1 and "iris:1 is not signed" in err
    monkeypatch.setenv("STREAMSERVE_ALLOW_UNSIGNED", "on")
    status, out, err = run(capsys, "models", "import", str(archive))
    assert status == 0 and "NOT verified, unsigned" in out and "ALLOW_UNSIGNED is on" in err


def test_train_signs_with_a_key_made_on_a_fresh_machine(tmp_path, env, capsys):
    status, out, _ = run(capsys, "models", "train", "iris")
    assert status == 0 and "registered iris:1" in out and "signed by key" in out
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "signing.key").st_mode) == 0o600
    status, out, _ = run(capsys, "models", "verify", "iris", "1")
    assert status == 0
    lineage = Registry(env).manifest("iris", "1").lineage
    assert "@" in lineage["created_by"] and lineage["code_revision"]
    assert lineage["created_at"].endswith("+00:00") and len(lineage["data_fingerprint"]) == 64


def test_train_marks_sensitive_features_in_the_signed_manifest(env, capsys):
    status, out, _ = run(capsys, "models", "train", "iris", "--sensitive", "petal_width, sepal_width",
                         "--sensitive", "petal_length")
    assert status == 0 and "sensitive: sepal_width, petal_length, petal_width" in out
    assert Registry(env).manifest("iris", "1").inputs.sensitive == (
        "sepal_width", "petal_length", "petal_width")
    assert run(capsys, "models", "verify", "iris", "1")[0] == 0
    status, out, _ = run(capsys, "models", "show", "iris", "1")
    assert "sepal_length float32" in out and "sepal_width float32 [2, 4.4] sensitive" in out


def test_train_refuses_to_mark_a_feature_the_model_lacks(env, capsys):
    status, _, err = run(capsys, "models", "train", "iris", "--sensitive", "petal_size")
    assert status == 2 and "cannot mark 'petal_size' sensitive: the model has no such feature" in err
    assert "its features are sepal_length, sepal_width, petal_length, petal_width" in err
    assert Registry(env).versions("iris") == []


def test_register_keeps_the_metrics_it_is_given_and_refuses_one_that_is_no_number(tmp_path, env, capsys):
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    joblib.dump(LogisticRegression(max_iter=500).fit(iris.data, iris.target), tmp_path / "iris.joblib")
    features = "--features", "a,b,c,d"
    status, out, err = run(capsys, "models", "register", "flowers", str(tmp_path / "iris.joblib"), *features,
                           "--metric", "test_accuracy=0.93", "--metric", "f1=0.9")
    assert status == 0, err
    assert Registry(env).manifest("flowers", "1").metrics == {"test_accuracy": 0.93, "f1": 0.9}
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "models", "register", "flowers", str(tmp_path / "iris.joblib"), *features,
            "--metric", "test_accuracy=high")
    assert exit_.value.code == 2
    assert "'test_accuracy=high' is not NAME=NUMBER" in capsys.readouterr().err
