"""``streamserve models ...`` and ``streamserve keys ...``: the registry and its signatures.

Each command is ``run(settings, args) -> exit status``. A failed verification raises its
``SignatureError`` (what failed, how to fix it; exit 1), ``models verify`` of several
versions a ``CheckFailed`` after naming each that fails; other mistakes raise a
``RegistryError`` (exit 2). ``agents.cli.main`` prints either as one line.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from agents.cli.parsing import Commands, command, group
from models.formats import FORMATS
from pipeline.config import Settings
from pipeline.errors import CheckFailed
from pipeline.registry import (
    PARAMS_FILE,
    SIGNATURE_FILE,
    Manifest,
    Registry,
    RegistryError,
)
from pipeline.schema import KINDS
from pipeline.signing import (
    SignatureError,
    TrustedKeys,
    VerifiedVersion,
    ensure_signing_key,
    generate_signing_key,
    import_version,
    key_id,
    public_key_path,
    sign_version,
    verify_version,
)


def register(commands: Commands) -> None:
    actions = group(commands, "models", "train, list, sign, verify and move model versions",
                    "Train, list, sign, verify, export and import registered model versions.")
    train = command(actions, "train", models_train,
                    "train a built-in model and register a new version, signed with "
                    "STREAMSERVE_SIGNING_KEY (created when missing)")
    train.add_argument("name", help="built-in model: iris, breast_cancer or synthetic32")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--sensitive", action="append", default=[], metavar="FIELD[,FIELD]",
                       help="mark features sensitive: their values never leave a worker in "
                            "clear (hashed with STREAMSERVE_REDACTION_KEY, masked without one)")
    add = command(actions, "register", models_register,
                  "register a model file trained elsewhere (XGBoost, LightGBM, scikit-learn, "
                  "ONNX, jax.export), a classifier or a regressor, as a new signed version, "
                  "checked against its own library")
    add.add_argument("model", help="model name, e.g. fraud")
    add.add_argument("file", type=Path,
                     help="the saved model: XGBoost .json/.ubj, LightGBM .txt, scikit-learn "
                          ".joblib/.pkl (unpickled here only: a file you trust), .onnx, or "
                          "Exported.serialize() bytes with --format jax")
    add.add_argument("--format", choices=sorted(FORMATS), default=None,
                     help="the file's format (default: from its suffix)")
    add.add_argument("--kind", choices=KINDS, default=None,
                     help="classifier (answers probabilities and a label) or regressor "
                          "(answers a value); default: what the file says (XGBoost, LightGBM "
                          "and scikit-learn files do), else classifier")
    add.add_argument("--features", type=_names, default=None, metavar="A,B,...",
                     help="input names in column order (needed when the file names none)")
    add.add_argument("--labels", type=_names, default=None, metavar="L1,L2,...",
                     help="class names in class-index order (default the model's classes, "
                          "or 0,1,...)")
    add.add_argument("--reference", type=Path, default=None, metavar="DATA.csv",
                     help="rows the model is meant for, a header naming the features: "
                          "checked, and kept as the drift reference (without it drift is off)")
    add.add_argument("--params", type=Path, default=None, metavar="PARAMS.npz",
                     help="--format jax: the arrays f(params, x) takes (none: f(x))")
    add.add_argument("--sensitive", action="append", default=[], metavar="FIELD[,FIELD]",
                     help="mark features sensitive, as `models train --sensitive` does")
    add.add_argument("--metric", action="append", default=[], type=_metric, metavar="NAME=VALUE",
                     help="what the model scored on held-out data, kept in its signed manifest, "
                          "e.g. test_accuracy=0.93 (the accuracy alert on labels compares with it); "
                          "repeat for several")
    command(actions, "list", models_list,
            "list registered models and versions, with each one's signature status")
    show = command(actions, "show", models_show,
                   "a version's schema, metrics, lineage, hashes and signature")
    show.add_argument("model", help="model name, e.g. iris")
    show.add_argument("version", nargs="?", help="version (default the newest)")
    sign = command(actions, "sign", models_sign,
                   "sign a registered version with STREAMSERVE_SIGNING_KEY")
    sign.add_argument("model", help="model name, e.g. iris")
    sign.add_argument("version", help="version, e.g. 2")
    check = command(actions, "verify", models_verify,
                    "check signatures against STREAMSERVE_TRUSTED_KEYS and parameters against "
                    "their manifest; exit 1 when one fails")
    check.add_argument("model", help="model name, e.g. iris")
    check.add_argument("version", nargs="?", help="version (default every version)")
    export = command(actions, "export", models_export,
                     "write a version (with its signature) to one .tar.gz file")
    export.add_argument("model", help="model name, e.g. iris")
    export.add_argument("version", help="version, e.g. 2")
    export.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="archive to write, e.g. iris-2.tar.gz (never overwritten)")
    load = command(actions, "import", models_import,
                   "register the version an export holds, after verifying its signature; "
                   "refused when that version exists")
    load.add_argument("file", type=Path, help="a file from `streamserve models export`")

    keys = group(commands, "keys", "model signing keys", "Ed25519 keys that sign model versions.")
    generate = command(keys, "generate", keys_generate,
                       "create a key pair: a private key (mode 0600) and its .pub")
    generate.add_argument("--out", type=Path, default=None, metavar="PATH",
                          help="private key file (default STREAMSERVE_SIGNING_KEY); the public "
                               "key goes beside it, ending in .pub")


def keys_generate(settings: Settings, args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else settings.registry.signing_key
    key = generate_signing_key(out)
    public = public_key_path(out)
    print(f"wrote the private key {out} (mode 0600) and the public key {public}; "
          f"key id {key_id(key.public_key())}")
    print(_trust_note(settings, public))
    return 0


def models_train(settings: Settings, args: argparse.Namespace) -> int:
    from models.train import train_and_register

    sensitive = [name for names in args.sensitive for name in _names(names)]
    manifest = train_and_register(args.name, Registry(settings.registry.root), seed=args.seed,
                                  signing_key=settings.registry.signing_key, sensitive=sensitive)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in manifest.metrics.items())
    signer = key_id(ensure_signing_key(settings.registry.signing_key).public_key())
    marked = (f"; sensitive: {', '.join(manifest.inputs.sensitive)}"
              if manifest.inputs.sensitive else "")
    print(f"registered {manifest.model}:{manifest.version} ({metrics}{marked}) in "
          f"{settings.registry.root}, signed by key {signer} ({settings.registry.signing_key})")
    return 0


def models_register(settings: Settings, args: argparse.Namespace) -> int:
    from models.external import register

    manifest = register(args.model, args.file, settings=settings, format=args.format,
                        kind=args.kind, features=args.features, labels=args.labels, reference=args.reference,
                        params=args.params, metrics=dict(args.metric),
                        sensitive=[n for names in args.sensitive for n in _names(names)])
    check = manifest.lineage["check"]
    signer = key_id(ensure_signing_key(settings.registry.signing_key).public_key())
    print(f"registered {manifest.model}:{manifest.version} ({manifest.architecture} from "
          f"{manifest.hyperparameters['library']}; {manifest.inputs.describe()}, a "
          f"{manifest.outputs.kind} answering {manifest.outputs.describe()}; matches the "
          f"library within {check['max_difference']:.2g} on {check['rows']} rows"
          f"{'' if manifest.reference else _drift_off(manifest)}) in "
          f"{settings.registry.root}, signed by key {signer}")
    return 0


def _metric(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not name.strip() or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=NUMBER, e.g. test_accuracy=0.93")
    return name.strip(), number


def _drift_off(manifest: Manifest) -> str:
    if manifest.inputs.tensor is not None:
        return "; drift is off for tensor inputs"
    return "; no --reference: drift is off"


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def models_list(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry.root)
    names = registry.models()
    if not names:
        print(f"no models in {settings.registry.root}; train one with `streamserve models train iris`")
        return 0
    trusted = TrustedKeys.load(settings.registry.trusted_keys)
    print(f"{'MODEL':<16}{'VERSION':<9}{'ARCHITECTURE':<14}{'FEATURES':<10}{'ACCURACY':<10}"
          f"{'SIGNATURE':<27}CREATED")
    for name in names:
        for version in registry.versions(name):
            status, m = _status(registry, name, version, trusted)
            if m is None:
                print(f"{name:<16}{version:<9}{'':<34}{status}")
                continue
            accuracy = m.metrics.get("test_accuracy")
            print(f"{name:<16}{version:<9}{m.architecture:<14}{len(m.inputs):<10}"
                  f"{'' if accuracy is None else f'{accuracy:.4f}':<10}{status:<27}"
                  f"{m.lineage.get('created_at', '')}")
    return 0


def models_show(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry.root)
    version = args.version or _latest(registry, args.model)
    m = registry.manifest(args.model, version)
    trusted = TrustedKeys.load(settings.registry.trusted_keys)
    try:
        result: VerifiedVersion | SignatureError = verify_version(
            registry, args.model, version, trusted, allow_unsigned=True)
    except SignatureError as e:
        result = e
    rows = [
        ("architecture", f"{m.architecture} "
                         + ", ".join(f"{k} {v}" for k, v in sorted(m.hyperparameters.items()))),
        ("inputs", f"{m.inputs.describe()}: "
                   + ", ".join(f"{f.name} {f.dtype}{f' {list(f.shape)}' if f.shape else ''} "
                               f"{_range(f.minimum, f.maximum)}"
                               + (" sensitive" if f.sensitive else "")
                               for f in m.inputs.features)),
        ("outputs", f"{m.outputs.kind}: {m.outputs.describe()}"),
        ("metrics", ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.metrics.items()))),
        *((f"lineage.{k}", str(v)) for k, v in sorted(m.lineage.items())),
        *((f"sha256 {file}", digest) for file, digest in sorted(m.param_hashes.items())),
        ("signature", _describe(result)),
    ]
    print(f"{m.model}:{m.version} in {settings.registry.root}")
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"  {label:<{width}}{value}")
    return 0


def models_sign(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry.root)
    signature = sign_version(registry, args.model, args.version,
                             ensure_signing_key(settings.registry.signing_key))
    path = registry.folder(args.model, args.version) / SIGNATURE_FILE
    print(f"signed {args.model}:{args.version} with key {signature.key_id} "
          f"({settings.registry.signing_key}); wrote {path}")
    if signature.key_id not in TrustedKeys.load(settings.registry.trusted_keys):
        print(_trust_note(settings, public_key_path(settings.registry.signing_key)))
    return 0


def models_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Strict whatever STREAMSERVE_ALLOW_UNSIGNED says: this command is the check. Each
    version that fails is named on stderr; exit 1 when one does."""
    registry = Registry(settings.registry.root)
    versions = [args.version] if args.version else registry.versions(args.model)
    if not versions:
        registry.folder(args.model, "1")  # raises the error that lists the known models
    trusted = TrustedKeys.load(settings.registry.trusted_keys)
    if len(versions) == 1:
        _verified(args.model, verify_version(registry, args.model, versions[0], trusted))
        return 0
    failed = 0
    for version in versions:
        try:
            result = verify_version(registry, args.model, version, trusted)
        except SignatureError as e:
            failed += 1
            print(e, file=sys.stderr)
            continue
        _verified(args.model, result)
    if failed:
        raise CheckFailed(f"{failed} of {len(versions)} versions of {args.model} fail verification")
    return 0


def _verified(model: str, result: VerifiedVersion) -> None:
    print(f"{model}:{result.version} verified: signed by trusted key {result.key_id}, "
          f"{PARAMS_FILE} matches its manifest")


def models_export(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry.root)
    trusted = TrustedKeys.load(settings.registry.trusted_keys)
    # SignatureError (changed parameters: nobody should receive them): exit 1
    result = verify_version(registry, args.model, args.version, trusted, allow_unsigned=True)
    out = registry.export(args.model, args.version, args.out)
    print(f"wrote {out}: {args.model}:{args.version}, {_describe(result)}")
    if result.problem is not None:
        print(f"warning: an importer refuses it unless it allows unsigned versions: "
              f"{result.problem}", file=sys.stderr)
    return 0


def models_import(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry.root)
    trusted = TrustedKeys.load(settings.registry.trusted_keys)
    try:
        result = import_version(registry, args.file, trusted, settings.registry.allow_unsigned)
    except SignatureError as e:
        raise SignatureError(e.reason, e.model, e.version,
                             f"refused to import {args.file}: {e}") from None
    print(f"imported {result.model}:{result.version} into {settings.registry.root}: {_describe(result)}")
    if result.problem is not None:
        print(f"warning: imported only because STREAMSERVE_ALLOW_UNSIGNED is on: {result.problem}",
              file=sys.stderr)
    return 0


def _status(registry: Registry, model: str, version: str,
            trusted: TrustedKeys) -> tuple[str, Manifest | None]:
    """The version's verification status (a reason code, or "verified KEYID") and manifest."""
    try:
        result = verify_version(registry, model, version, trusted, allow_unsigned=True)
    except SignatureError as e:
        manifest: Manifest | None
        try:
            manifest = registry.manifest(model, version)
        except RegistryError:
            manifest = None
        return e.reason, manifest
    except RegistryError:
        return "unreadable", None
    return ("verified " + (result.key_id or "") if result.verified else result.status,
            result.manifest)


def _describe(result: VerifiedVersion | SignatureError) -> str:
    if isinstance(result, SignatureError):
        return f"{result.reason}: {result}"
    if result.problem is None:
        return f"verified (signed by trusted key {result.key_id})"
    return f"NOT verified, {result.problem.reason}: {result.problem}"


def _trust_note(settings: Settings, public: Path) -> str:
    trusted = settings.registry.trusted_keys
    if public == trusted or (trusted.is_dir() and public.parent.resolve() == trusted.resolve()):
        return f"it is trusted here: STREAMSERVE_TRUSTED_KEYS={trusted} holds {public.name}"
    return (f"note: workers trust it only once {public} is in STREAMSERVE_TRUSTED_KEYS "
            f"(now {trusted}): copy it there")


def _latest(registry: Registry, model: str) -> str:
    latest = registry.latest(model)
    if latest is None:
        registry.folder(model, "1")  # raises the error that lists the known models
    assert latest is not None
    return latest


def _range(lo: float, hi: float) -> str:
    if math.isinf(lo) and math.isinf(hi):
        return "any value"
    return f"[{lo:g}, {hi:g}]"

