"""The model registry's on-disk format: one immutable folder per model version.

Layout under the registry root::

    <model>/<version>/params.npz      parameters, numpy's npz (never pickle)
    <model>/<version>/manifest.json   Manifest.to_json(), with the sha256 of params.npz
    <model>/<version>/signature.json  Ed25519 signature over the whole manifest (``pipeline.signing``)

Versions are "1", "2", ... assigned by ``Registry.register``. A version folder
appears in one ``os.rename`` of a fully written temporary folder, so readers
never see half a version, and an existing version is never overwritten.
``Registry.import_archive`` places a version exported elsewhere (``Registry.export``)
the same way, under the version number its manifest names.

The signature sits beside the manifest rather than in it, so signing a version
after registration changes neither its manifest nor its parameters.

Modules: ``manifest`` (the manifest, lineage and file names), ``store`` (``Registry``:
register, read, export, import).
"""

from pipeline.registry.manifest import (
    FORMAT_VERSION,
    LINEAGE_KEYS,
    MANIFEST_FILE,
    PARAMS_FILE,
    SENSITIVE_FORMAT_VERSION,
    SIGNATURE_FILE,
    VERSION_FILES,
    Manifest,
    ManifestDraft,
    RegistryError,
    fingerprint,
    lineage,
    parse_params,
)
from pipeline.registry.store import Registry

__all__ = [
    "FORMAT_VERSION",
    "LINEAGE_KEYS",
    "MANIFEST_FILE",
    "PARAMS_FILE",
    "SENSITIVE_FORMAT_VERSION",
    "SIGNATURE_FILE",
    "VERSION_FILES",
    "Manifest",
    "ManifestDraft",
    "Registry",
    "RegistryError",
    "fingerprint",
    "lineage",
    "parse_params",
]
