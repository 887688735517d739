"""``streamserve models ...`` and ``streamserve keys ...``: the registry and its signatures.

Each command is ``run(settings, args) -> exit status``, wired in ``agents.cli.main``. A failed
verification prints its ``SignatureError`` (what failed, how to fix it) and exits 1; other
mistakes raise and ``agents.cli.main.main`` prints them (exit 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pipeline.config import Settings
from pipeline.registry import (
    PARAMS_FILE,
    SIGNATURE_FILE,
    Manifest,
    Registry,
    RegistryError,
)
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


def keys_generate(settings: Settings, args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else settings.signing_key
    key = generate_signing_key(out)
    public = public_key_path(out)
    print(f"wrote the private key {out} (mode 0600) and the public key {public}; "
          f"key id {key_id(key.public_key())}")
    print(_trust_note(settings, public))
    return 0


def models_train(settings: Settings, args: argparse.Namespace) -> int:
    from models.train import train_and_register

    sensitive = [name.strip() for names in args.sensitive for name in names.split(",")
                 if name.strip()]
    manifest = train_and_register(args.name, Registry(settings.registry), seed=args.seed,
                                  signing_key=settings.signing_key, sensitive=sensitive)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in manifest.metrics.items())
    signer = key_id(ensure_signing_key(settings.signing_key).public_key())
    marked = (f"; sensitive: {', '.join(manifest.inputs.sensitive)}"
              if manifest.inputs.sensitive else "")
    print(f"registered {manifest.model}:{manifest.version} ({metrics}{marked}) in "
          f"{settings.registry}, signed by key {signer} ({settings.signing_key})")
    return 0


def models_list(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry)
    names = registry.models()
    if not names:
        print(f"no models in {settings.registry}; train one with `streamserve models train iris`")
        return 0
    trusted = TrustedKeys.load(settings.trusted_keys)
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
    registry = Registry(settings.registry)
    version = args.version or _latest(registry, args.model)
    m = registry.manifest(args.model, version)
    trusted = TrustedKeys.load(settings.trusted_keys)
    try:
        result: VerifiedVersion | SignatureError = verify_version(
            registry, args.model, version, trusted, allow_unsigned=True)
    except SignatureError as e:
        result = e
    rows = [
        ("architecture", f"{m.architecture} "
                         + ", ".join(f"{k} {v}" for k, v in sorted(m.hyperparameters.items()))),
        ("inputs", f"{len(m.inputs)} features: "
                   + ", ".join(f"{f.name} {f.dtype} {_range(f.minimum, f.maximum)}"
                               + (" sensitive" if f.sensitive else "")
                               for f in m.inputs.features)),
        ("outputs", ", ".join(m.outputs.labels)),
        ("metrics", ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.metrics.items()))),
        *((f"lineage.{k}", str(v)) for k, v in sorted(m.lineage.items())),
        *((f"sha256 {file}", digest) for file, digest in sorted(m.param_hashes.items())),
        ("signature", _describe(result)),
    ]
    print(f"{m.model}:{m.version} in {settings.registry}")
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"  {label:<{width}}{value}")
    return 0


def models_sign(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry)
    try:
        signature = sign_version(registry, args.model, args.version,
                                 ensure_signing_key(settings.signing_key))
    except SignatureError as e:
        return _fail(e)
    path = registry.folder(args.model, args.version) / SIGNATURE_FILE
    print(f"signed {args.model}:{args.version} with key {signature.key_id} "
          f"({settings.signing_key}); wrote {path}")
    if signature.key_id not in TrustedKeys.load(settings.trusted_keys):
        print(_trust_note(settings, public_key_path(settings.signing_key)))
    return 0


def models_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Strict whatever STREAMSERVE_ALLOW_UNSIGNED says: this command is the check."""
    registry = Registry(settings.registry)
    versions = [args.version] if args.version else registry.versions(args.model)
    if not versions:
        registry.folder(args.model, "1")  # raises the error that lists the known models
    trusted = TrustedKeys.load(settings.trusted_keys)
    failed = 0
    for version in versions:
        try:
            result = verify_version(registry, args.model, version, trusted)
        except SignatureError as e:
            failed += 1
            _fail(e)
            continue
        print(f"{args.model}:{version} verified: signed by trusted key {result.key_id}, "
              f"{PARAMS_FILE} matches its manifest")
    return 1 if failed else 0


def models_export(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry)
    trusted = TrustedKeys.load(settings.trusted_keys)
    try:
        result = verify_version(registry, args.model, args.version, trusted, allow_unsigned=True)
    except SignatureError as e:  # changed parameters: nobody should receive them
        return _fail(e)
    out = registry.export(args.model, args.version, args.out)
    print(f"wrote {out}: {args.model}:{args.version}, {_describe(result)}")
    if result.problem is not None:
        print(f"warning: an importer refuses it unless it allows unsigned versions: "
              f"{result.problem}", file=sys.stderr)
    return 0


def models_import(settings: Settings, args: argparse.Namespace) -> int:
    registry = Registry(settings.registry)
    trusted = TrustedKeys.load(settings.trusted_keys)
    try:
        result = import_version(registry, args.file, trusted, settings.allow_unsigned)
    except SignatureError as e:
        print(f"streamserve: error: refused to import {args.file}: {e}", file=sys.stderr)
        return 1
    print(f"imported {result.model}:{result.version} into {settings.registry}: {_describe(result)}")
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
    trusted = settings.trusted_keys
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


def _fail(error: SignatureError) -> int:
    print(f"streamserve: error: {error}", file=sys.stderr)
    return 1
