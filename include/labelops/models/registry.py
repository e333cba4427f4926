"""The model registry: versioned models of a project in S3, and a champion pointer per kind.

Layout under the project prefix::

    models/<version>/model.skops        intent model (skops; never pickle)
    models/<version>/entities.json      entity model: the gazetteer `EntityModel` (JSON)
    models/<version>/entities.crf       entity model: a `CrfEntityModel` (a JSON header line + the CRFsuite model)
    models/<version>/image.json         image model: an `ImageModel` (JSON: classes, scaler, weights)
    models/<version>/meta.json          written after the artifact: a meta.json means a complete artifact
    models/promotions/<ts>-<kind>-<version>.json   one record per promotion (the audit trail)
    models/champion.json                {"intent": {...}, "entities": {...}}: written last, by `promote`

A version is ``<UTC time %Y%m%dT%H%M%SZ>-<first 8 hex of the artifact's sha256>``: sortable by time, unique, and
never overwritten with different bytes (saving the same artifact again in the same second finds its own
meta.json and returns it). An entity model of either class is of kind "entities": meta.json's
``artifact.format`` ("json" or "crfsuite") says which, so the champion of "entities" can be a gazetteer or a
CRF and `load_champion(..., kind="entities")` returns whichever was promoted last. Loading checks the
artifact's sha256 against meta.json before deserialising anything, and skops loads only skops' default-trusted
types plus the explicit allowlist below; anything else is refused with `UntrustedArtifactError` (nothing is
constructed). A CRF artifact is data (no code runs when CRFsuite reads it); the size and sha256 of its CRFsuite
part (in its own header line) and CRFsuite's file header are checked too before the C reader sees it.

The champion pointer is replaced by compare-and-swap (S3 conditional writes: If-Match on its ETag, If-None-Match
for the first one), so an intent and an entity promotion at the same moment do not lose each other's entry. A
store that does not implement conditional writes (HTTP 501) gets a plain write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from labelops.models.crf import CrfEntityModel
from labelops.models.entities import EntityModel
from labelops.models.image import ImageModel
from labelops.models.intent import IntentModel
from labelops.storage import S3Store

KINDS = ("intent", "entities", "image")
ARTIFACTS = {  # kind -> (file name, format, content type)
    "intent": ("model.skops", "skops", "application/octet-stream"),
    "entities": ("entities.json", "json", "application/json"),
    "image": ("image.json", "json", "application/json"),
}
# Other artifacts a kind can be stored as, by format (meta.json's artifact.format); ARTIFACTS holds each kind's
# default. A CRF is an "entities" model: the same champion slot as the gazetteer.
ALT_ARTIFACTS = {
    "entities": {"crfsuite": ("entities.crf", "crfsuite", "application/octet-stream")},
}
# What an intent artifact is made of beyond builtins and numpy arrays (all of it default-trusted by skops today;
# listed so the artifact's content is stated here, whatever a future skops trusts by default). Nothing else loads.
INTENT_TRUSTED_TYPES = (
    "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.svm._classes.LinearSVC",
)
SKOPS_COMPRESSION = 8  # zipfile.ZIP_DEFLATED: full Banking77 model 57 MB -> 7 MB, ~1.5 s to load
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
CAS_ATTEMPTS = 8


class RegistryError(Exception):
    """Base of the registry's errors."""


class ModelNotFound(RegistryError):
    pass


class ArtifactIntegrityError(RegistryError):
    """The artifact's bytes are not the ones its meta.json names (sha256 mismatch, missing or truncated)."""


class UntrustedArtifactError(RegistryError):
    """The artifact holds types outside the allowlist, or is not what its kind should be."""


# ---------------------------------------------------------------------------------------------------- keys
def _base(project_prefix: str) -> str:
    if not project_prefix or not project_prefix.endswith("/") or project_prefix.startswith("/"):
        raise ValueError(f"project_prefix must be a key prefix ending in '/', got {project_prefix!r}")
    return f"{project_prefix}models/"


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValueError(f"not a model version: {version!r} (expected like 20261124T031500Z-0123abcd)")
    return version


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: one of {KINDS}")
    return kind


def meta_key(project_prefix: str, version: str) -> str:
    return f"{_base(project_prefix)}{_check_version(version)}/meta.json"


def _artifact_spec(kind: str, fmt: str | None = None) -> tuple[str, str, str]:
    """(file name, format, content type) of a kind's artifact in format fmt (None: the kind's default)."""
    default = ARTIFACTS[_check_kind(kind)]
    if fmt is None or fmt == default[1]:
        return default
    try:
        return ALT_ARTIFACTS[kind][fmt]
    except KeyError:
        raise ValueError(f"kind {kind!r} has no artifact format {fmt!r}") from None


def _model_format(model: Any, kind: str) -> str:
    return "crfsuite" if kind == "entities" and isinstance(model, CrfEntityModel) else ARTIFACTS[kind][1]


def artifact_key(project_prefix: str, version: str, kind: str, fmt: str | None = None) -> str:
    return f"{_base(project_prefix)}{_check_version(version)}/{_artifact_spec(kind, fmt)[0]}"


def champion_key(project_prefix: str) -> str:
    return f"{_base(project_prefix)}champion.json"


# ------------------------------------------------------------------------------------------ serialisation
def _serialise(model: Any, kind: str) -> bytes:
    if kind == "image":
        if not isinstance(model, ImageModel):
            raise TypeError(f"kind 'image' needs an ImageModel, got {type(model).__name__}")
        return json.dumps(model.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    if kind == "intent":
        if not isinstance(model, IntentModel):
            raise TypeError(f"kind 'intent' needs an IntentModel, got {type(model).__name__}")
        import skops.io as sio

        return sio.dumps(model.to_payload(), compression=SKOPS_COMPRESSION)
    if isinstance(model, CrfEntityModel):
        return model.to_bytes()
    if not isinstance(model, EntityModel):
        raise TypeError(f"kind 'entities' needs an EntityModel or a CrfEntityModel, got {type(model).__name__}")
    return json.dumps(model.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _deserialise(body: bytes, kind: str, where: str, fmt: str | None = None) -> Any:
    if kind == "image":
        try:
            return ImageModel.from_dict(json.loads(body.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            raise UntrustedArtifactError(f"{where}: not an image model ({exc})") from exc
    if kind == "entities" and fmt == "crfsuite":
        try:
            return CrfEntityModel.from_bytes(body)
        except ValueError as exc:
            raise UntrustedArtifactError(f"{where}: not a CRF entity model ({exc})") from exc
    if kind == "entities":
        try:
            return EntityModel.from_dict(json.loads(body.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            raise UntrustedArtifactError(f"{where}: not an entity model ({exc})") from exc
    import skops.io as sio
    from sklearn.pipeline import FeatureUnion
    from sklearn.svm import LinearSVC

    try:
        untrusted = sio.get_untrusted_types(data=body)
    except Exception as exc:  # not a skops file at all (bad zip, bad schema)
        raise UntrustedArtifactError(f"{where}: not a readable skops artifact ({type(exc).__name__}: {exc})") from exc
    refused = sorted(set(untrusted) - set(INTENT_TRUSTED_TYPES))
    if refused:
        raise UntrustedArtifactError(f"{where}: refusing to load types outside the allowlist: {', '.join(refused)}")
    try:
        payload = sio.loads(body, trusted=list(INTENT_TRUSTED_TYPES))
    except Exception as exc:
        raise UntrustedArtifactError(f"{where}: skops refused or failed to load it ({type(exc).__name__}: {exc})") \
            from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("features"), FeatureUnion) \
            or not isinstance(payload.get("classifier"), LinearSVC):
        raise UntrustedArtifactError(f"{where}: not an intent model payload")
    try:
        return IntentModel.from_payload(payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise UntrustedArtifactError(f"{where}: {exc}") from exc


# ------------------------------------------------------------------------------------------------- helpers
def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(value: Any) -> Any:
    """Metrics as plain JSON: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _jsonable(value.tolist())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"metric value of type {type(value).__name__} is not JSON: {value!r}")


@cache
def code_version() -> str:
    """LABELOPS_CODE_VERSION if set (an image build can bake it in), else `git describe` of this checkout,
    else "unknown"."""
    env = os.environ.get("LABELOPS_CODE_VERSION")
    if env:
        return env
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _library_versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("scikit-learn", "skops", "numpy", "scipy", "python-crfsuite"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------------------------------------------------ API
def save(store: S3Store, project_prefix: str, model: Any, *, metrics: dict, dataset_tag: str | None,
         kind: str) -> dict:
    """Store the model as a new version (artifact, then meta.json); set ``model.version``; return the meta.
    Does not promote it."""
    _check_kind(kind)
    body = _serialise(model, kind)
    fmt = _artifact_spec(kind, _model_format(model, kind))
    sha = _sha256(body)
    created = _now()
    version = f"{created:%Y%m%dT%H%M%SZ}-{sha[:8]}"
    akey, mkey = artifact_key(project_prefix, version, kind, fmt[1]), meta_key(project_prefix, version)
    existing = store.get_json(mkey)
    if existing is not None:
        # the same bytes saved again within the same second: the version is already complete
        if existing.get("artifact", {}).get("sha256") != sha or existing.get("kind") != kind:
            raise RegistryError(f"{store.uri(mkey)} exists for a different artifact (sha256 prefix collision)")
        model.version = version
        return existing
    store.put(akey, body, fmt[2])
    meta = {
        "version": version,
        "kind": kind,
        "created_at": _iso(created),
        "labels": list(model.labels),  # the intent classes, or the entity labels
        "metrics": _jsonable(dict(metrics or {})),
        "n_train": int(model.n_train),
        "dataset_tag": dataset_tag,
        "code_version": code_version(),
        "libraries": _library_versions(),
        "artifact": {"key": akey, "format": fmt[1], "sha256": sha, "size": len(body)},
    }
    store.put_json(mkey, meta)
    model.version = version
    return meta


def get_meta(store: S3Store, project_prefix: str, version: str) -> dict:
    meta = store.get_json(meta_key(project_prefix, version))
    if meta is None:
        raise ModelNotFound(f"no model {version!r} under {store.uri(_base(project_prefix))}")
    return meta


def _verified_artifact(store: S3Store, project_prefix: str, version: str) -> tuple[dict, bytes]:
    meta = get_meta(store, project_prefix, version)
    kind = _check_kind(meta.get("kind"))
    try:
        key = artifact_key(project_prefix, version, kind, meta.get("artifact", {}).get("format"))
    except ValueError as exc:
        raise ArtifactIntegrityError(f"{store.uri(meta_key(project_prefix, version))}: {exc}") from exc
    if meta.get("artifact", {}).get("key") != key or meta.get("version") != version:
        raise ArtifactIntegrityError(f"{store.uri(meta_key(project_prefix, version))} does not describe "
                                     f"{store.uri(key)}")
    body = store.get_or_none(key)
    if body is None:
        raise ArtifactIntegrityError(f"{store.uri(key)} is missing (meta.json names it)")
    expected, actual = meta["artifact"].get("sha256"), _sha256(body)
    if actual != expected:
        raise ArtifactIntegrityError(f"{store.uri(key)}: sha256 {actual} does not match meta.json's {expected}; "
                                     f"refusing to deserialise it")
    return meta, body


def load(store: S3Store, project_prefix: str, version: str) -> IntentModel | EntityModel | CrfEntityModel:
    """The model of a version, its sha256 verified before anything is deserialised."""
    meta, body = _verified_artifact(store, project_prefix, version)
    model = _deserialise(body, meta["kind"], store.uri(meta["artifact"]["key"]), meta["artifact"].get("format"))
    model.version = version
    return model


def _read_pointer(store: S3Store, project_prefix: str) -> tuple[dict, str | None]:
    """(champion.json, its ETag), ({}, None) when there is none yet."""
    from botocore.exceptions import ClientError

    try:
        resp = store.client.get_object(Bucket=store.bucket, Key=champion_key(project_prefix))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return {}, None
        raise
    return json.loads(resp["Body"].read()), resp.get("ETag")


def champion_pointer(store: S3Store, project_prefix: str) -> dict:
    """The whole champion.json ({} before the first promotion)."""
    return _read_pointer(store, project_prefix)[0]


def champion(store: S3Store, project_prefix: str, kind: str = "intent") -> dict | None:
    """The champion's meta.json for a kind, with its pointer entry under "promotion"; None = no champion yet."""
    entry = champion_pointer(store, project_prefix).get(_check_kind(kind))
    if not entry:
        return None
    meta = store.get_json(meta_key(project_prefix, entry["version"]))
    if meta is None:
        raise ModelNotFound(f"{store.uri(champion_key(project_prefix))} names {entry['version']!r}, which has no "
                            f"meta.json")
    return {**meta, "promotion": entry}


def promote(store: S3Store, project_prefix: str, version: str, reason: str) -> dict:
    """Make a saved version the champion of its kind (its artifact verified first). Returns the kind's pointer
    entry: {kind, version, promoted_at, reason, previous: {version, promoted_at, reason} | None}. Promoting the
    current champion again changes nothing and returns its entry."""
    from botocore.exceptions import ClientError

    meta, _ = _verified_artifact(store, project_prefix, version)
    kind = meta["kind"]
    key = champion_key(project_prefix)
    now = _iso(_now())  # one time for every attempt: a retry rewrites the same promotion record
    for _attempt in range(CAS_ATTEMPTS):
        doc, etag = _read_pointer(store, project_prefix)
        current = doc.get(kind)
        if current and current.get("version") == version:
            return current
        entry = {"kind": kind, "version": version, "promoted_at": now, "reason": str(reason),
                 "previous": ({k: current.get(k) for k in ("version", "promoted_at", "reason")} if current else None)}
        store.put_json(f"{_base(project_prefix)}promotions/{now.replace(':', '').replace('-', '')}-{kind}-"
                       f"{version}.json", entry)
        new_doc = {**doc, kind: entry, "updated_at": now}
        body = json.dumps(new_doc, indent=1, ensure_ascii=False).encode()
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            store.client.put_object(Bucket=store.bucket, Key=key, Body=body, ContentType="application/json", **cond)
            return entry
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                continue  # someone else changed the pointer: read it again
            if code == "NotImplemented" or status == 501:
                store.put(key, body, "application/json")
                return entry
            raise
    raise RegistryError(f"{store.uri(key)} kept changing: gave up promoting {version} after {CAS_ATTEMPTS} tries")


def load_champion(store: S3Store, project_prefix: str, kind: str = "intent") \
        -> IntentModel | EntityModel | CrfEntityModel | ImageModel | None:
    """The champion model of a kind, or None when there is none (cold start). For "entities": the gazetteer or
    the CRF, whichever version was promoted."""
    meta = champion(store, project_prefix, kind)
    return None if meta is None else load(store, project_prefix, meta["version"])


def versions(store: S3Store, project_prefix: str) -> list[str]:
    """Every saved version (one with a meta.json), oldest first."""
    base = _base(project_prefix)
    out = []
    for obj in store.list(base):
        rest = obj["key"][len(base):]
        name, _, leaf = rest.partition("/")
        if leaf == "meta.json" and VERSION_RE.match(name):
            out.append(name)
    return sorted(out)
