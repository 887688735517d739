"""Keep sensitive request fields out of everything a worker writes: samples and dead letters.

Two sources name the fields. A model's input schema marks features ``sensitive``
(``streamserve models train NAME --sensitive FIELD``, signed with its manifest): a mark
asks for ``hash``, which keeps equal values joinable offline (samples to later labels,
dead letters to one another) without revealing them, or for ``mask`` when no redaction
key is set (a hash needs one; serving is not refused for want of it). Operator rules
(``STREAMSERVE_REDACT``, per model in ``STREAMSERVE_MODELS_FILE``) add fields and may be
stricter than a mark, never weaker: where both name a field, the stricter action wins.
A record whose model is unknown gets every served model's rules and marks.

Rules name fields and say what to do with each (``"ssn=drop,card=hash,zip=mask"``):

* ``drop``: the field is removed;
* ``hash``: the value becomes ``"hmac-sha256:"`` + the first 32 hex characters of
  HMAC-SHA256(key, orjson.dumps(value)): deterministic for one key, so records can
  still be joined offline, but not reversible without the key;
* ``mask``: the value becomes ``"***"``.

Rules apply by name to a tabular request's ``features`` and top-level fields, and to an
Open Inference Protocol v2 request's ``inputs`` (see ``pipeline.decode`` for both forms).
What cannot be attributed to a field is treated conservatively: a tensor holding
several features by position, or a container where a mapping of fields was expected,
is masked whenever any rule is set. A dead letter's error sentence quoting a redacted
field's value (``Rejection.quotes``) is replaced by the one without it. Redaction never
raises for odd input.

Other outputs carry no request values: predictions and shadow outputs hold the model's
outputs; drift rows hold each value's bin number among the reference's few bins, and
drift reports counts and scores over a whole window. Log lines name requests by id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import orjson

from pipeline.errors import StreamserveError
from pipeline.rejections import Rejection

MASKED = "***"
HASH_PREFIX = "hmac-sha256:"
# Routing fields, not payload: redacting them would make a dead letter unreplayable.
_ROUTING_FIELDS = frozenset({"id", "model", "model_name", "version", "model_version"})


class Action(StrEnum):
    DROP = "drop"
    HASH = "hash"
    MASK = "mask"


# Which action wins when two rule sets disagree on a field (higher wins): a hash still
# tells equal values apart, a mask does not, a drop hides even the field.
_STRICTNESS = {Action.HASH: 0, Action.MASK: 1, Action.DROP: 2}
_VALID = "drop, hash or mask"


class RedactionError(StreamserveError, ValueError):
    """Redaction rules that cannot work; the message says which part and how to fix it."""


def parse_rules(text: str, source: str) -> dict[str, Action]:
    """Parse ``"field=action,field2=action"`` (whitespace tolerant; ``""`` gives ``{}``).

    ``source`` names where the text came from (e.g. ``"STREAMSERVE_REDACT"``) and
    prefixes every error message. Actions are case-insensitive.
    """
    rules: dict[str, Action] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue  # a trailing or doubled comma hides nothing
        name, equals, action_text = (s.strip() for s in part.partition("="))
        if not equals:
            raise RedactionError(f"{source}: {part!r} has no '='; write field=action, "
                                 f"e.g. '{part}=mask', with action {_VALID}")
        if not name:
            raise RedactionError(f"{source}: {part!r} has no field name; write field=action")
        try:
            action = Action(action_text.lower())
        except ValueError:
            what = f"an unknown action {action_text!r}" if action_text else "no action"
            raise RedactionError(f"{source}: {part!r} has {what}; use {_VALID}") from None
        if name in rules and rules[name] is not action:
            raise RedactionError(f"{source}: field {name!r} is given twice ({rules[name]} and "
                                 f"{action}); give each field one action")
        rules[name] = action
    return rules


@dataclass(frozen=True, slots=True)
class RedactedOriginal:
    """A dead letter's original request after redaction.

    ``value`` is the bytes to publish (``None`` when there were none or they were
    withheld). ``withheld`` is True when the original could not be parsed as a JSON
    object, so its fields could not be found: the bytes are held back entirely rather
    than published with whatever they contain. Publishers should say so in the record.
    """

    value: bytes | None
    withheld: bool = False
    # Set when the original was withheld for its size: how many bytes, and their sha256
    # (hex), so an operator can match it to the producer's record without the bytes.
    size: int | None = None
    sha256: str | None = None

    @classmethod
    def too_large(cls, raw: bytes) -> RedactedOriginal:
        """``raw`` withheld for its size (unread, so no field of it can leak)."""
        return cls(None, withheld=True, size=len(raw), sha256=hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True, slots=True)
class Redactor:
    """Rules by field name plus the HMAC key for ``hash``; the key never appears in repr.

    ``Redactor({})`` redacts nothing. A ``hash`` rule needs a non-empty key.
    """

    rules: Mapping[str, Action]
    key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        rules: dict[str, Action] = {}
        for name, action in self.rules.items():
            if not isinstance(name, str) or not name:
                raise RedactionError(f"redaction rule field names must be non-empty strings, "
                                     f"got {name!r}")
            try:
                rules[name] = Action(action)
            except ValueError:
                raise RedactionError(f"redaction rule {name!r} has an unknown action {action!r}; "
                                     f"use {_VALID}") from None
        # A read-only copy: the caller's dict changing later must not change what we hide.
        object.__setattr__(self, "rules", MappingProxyType(rules))
        if not isinstance(self.key, bytes):
            raise RedactionError(f"the redaction key must be bytes, got {type(self.key).__name__}")
        hashed = sorted(n for n, a in rules.items() if a is Action.HASH)
        if hashed and not self.key:
            raise RedactionError(f"fields {', '.join(hashed)} are to be hashed but there is no "
                                 "redaction key; set STREAMSERVE_REDACTION_KEY or "
                                 "STREAMSERVE_REDACTION_KEY_FILE, or use drop or mask")

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict of ``values`` with the rules applied by key."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            action = self.rules.get(name) if isinstance(name, str) else None
            if action is None:
                out[name] = value
            elif action is not Action.DROP:
                out[name] = self._apply(action, value)
        return out

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A redacted copy of a parsed request, tabular or OIP; ``body`` is not changed.

        Containers on the redacted paths (the body, ``features``, ``inputs`` and its
        entries) are new; values left as they were are shared with ``body``.
        """
        if not self.active:
            return dict(body)
        out: dict[str, Any] = {}
        for name, value in body.items():
            action = self.rules.get(name) if isinstance(name, str) else None
            if name in _ROUTING_FIELDS or (action is None and name not in ("features", "inputs")):
                out[name] = value
            elif action is not None:
                if action is not Action.DROP:
                    out[name] = self._apply(action, value)
            elif name == "features":
                out[name] = self.fields(value) if isinstance(value, dict) else self._unattributed(value)
            else:
                out[name] = self._inputs(value)
        return out

    def original(self, raw: bytes | None) -> RedactedOriginal:
        """Redact a dead letter's original request bytes (see ``RedactedOriginal``)."""
        if not self.active or not raw:
            return RedactedOriginal(raw)
        strict = True
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # decode() also accepts NaN/Infinity via json; such requests are dead-lettered
            # as non_finite, and their original should still be readable.
            strict = False
            try:
                body = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                return RedactedOriginal(None, withheld=True)
        if not isinstance(body, dict):
            return RedactedOriginal(None, withheld=True)
        redacted = self.request(body)
        try:
            if strict:
                return RedactedOriginal(orjson.dumps(redacted))
            return RedactedOriginal(json.dumps(redacted, ensure_ascii=False,
                                               separators=(",", ":")).encode("utf-8"))
        except (TypeError, ValueError, RecursionError):
            return RedactedOriginal(None, withheld=True)

    def rejection(self, rejection: Rejection) -> Rejection:
        """``rejection`` with its error sentence worded without the value it quotes, when
        that value's field is redacted here."""
        if rejection.quotes is None:
            return rejection
        field, without = rejection.quotes
        # A value no field holds is hidden whenever any rule is set, as an original whose
        # fields cannot be found is withheld.
        if not (self.active if field is None else field in self.rules):
            return rejection
        return replace(rejection, error=without, quotes=None)

    def marking(self, sensitive: Iterable[str]) -> Redactor:
        """These rules plus the fields a schema marks ``sensitive``: ``hash`` with this
        redactor's key, ``mask`` without one; a rule stricter than that stays."""
        action = Action.HASH if self.key else Action.MASK
        return self.merged(Redactor(dict.fromkeys(sensitive, action), self.key))

    def merged(self, other: Redactor) -> Redactor:
        """Both rule sets; where they disagree on a field, the stricter action (drop > mask > hash).

        For records whose model is unknown, so any model's rules might apply.
        """
        if self.key and other.key and not hmac.compare_digest(self.key, other.key):
            raise RedactionError("cannot merge redactors with different keys: their hashes "
                                 "would not match; use one STREAMSERVE_REDACTION_KEY")
        rules = dict(self.rules)
        for name, action in other.rules.items():
            if name not in rules or _STRICTNESS[action] > _STRICTNESS[rules[name]]:
                rules[name] = action
        return Redactor(rules, self.key or other.key)

    def hash(self, value: Any) -> str:
        """The keyed hash of one JSON value, as written for a ``hash`` rule."""
        try:
            payload = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            # Integers beyond 64 bits (json parses them) or other non-JSON values:
            # still deterministic, never the raw value.
            payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                                 default=repr).encode("utf-8", "surrogatepass")
        digest = hmac.new(self.key, payload, hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:32]

    def _apply(self, action: Action, value: Any) -> Any:
        return self.hash(value) if action is Action.HASH else MASKED

    def _inputs(self, inputs: Any) -> Any:
        if not isinstance(inputs, list):
            return self._unattributed(inputs)
        out: list[Any] = []
        for entry in inputs:
            if not isinstance(entry, dict):
                out.append(self._unattributed(entry))
                continue
            name = entry.get("name")
            action = self.rules.get(name) if isinstance(name, str) else None
            if action is Action.DROP:
                continue
            entry = dict(entry)
            if "data" in entry:
                if action is not None:
                    entry["data"] = self._apply(action, entry["data"])
                elif not _single_value(entry["data"]) or _is_tensor(entry.get("shape")):
                    # A [1, F] tensor holds features by position, whatever its name (even a
                    # one-feature model's lone value): we cannot tell which.
                    entry["data"] = MASKED
            out.append(entry)
        return out

    @staticmethod
    def _unattributed(value: Any) -> Any:
        """A value in a place no rule can name: scalars pass, containers are masked."""
        return MASKED if isinstance(value, dict | list) else value


def _is_tensor(shape: Any) -> bool:
    """A [1, F] shape: the features by position, not one named feature ([1])."""
    return isinstance(shape, list) and len(shape) == 2


def _single_value(data: Any) -> bool:
    """True for a lone scalar or ``[scalar]``: one named feature, nothing positional."""
    if isinstance(data, list):
        return len(data) <= 1 and not any(isinstance(v, dict | list) for v in data)
    return not isinstance(data, dict)
