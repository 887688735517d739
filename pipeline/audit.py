"""The audit trail, the pure part: one ``AuditEntry`` per change of what serves or of who
may do what, and how ``streamserve audit`` selects and shows them.

What is audited (``action`` on ``subject``):

    deploy, canary, shadow, promote, rollback, ...  a model's spec (subject: the model)
    auto_rollback, auto_promote                     the canary analysis deciding
    load, load_refused                              a worker loading a version, or refusing one
    quota_set, quota_remove                         a client quota ("quota:user=alice")
    acl_*, broker_*                                 ACL changes, secured-broker starts
                                                    ("acl", "broker:HOST:PORT")

A subject is a model name (which never holds ":") or an area, optionally followed by
":" and what in it: ``select(subject="quota")`` finds every quota entry. The entry says
who (the OS user ``user@host`` and the Kafka principal the process acts as), when (Unix
seconds), and from where (``source``: cli, worker, canary-analysis; the host, process
id and command line). ``before`` and ``after`` are the subject's state (a model's spec
as ``DeploymentSpec.to_json``, a quota's values); ``details`` the facts that are no
state (a version, an error code, a signing key).

Entries written before the subject, principal and place were recorded (``model`` for
``subject``, ``before`` and ``after`` always present) still read.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.routing import ControlError, DeploymentSpec, check_keys


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited change: who did what to which subject, when, from where and why."""

    action: str
    subject: str
    who: str  # the OS user, user@host
    when: float  # Unix seconds
    source: str  # the component: cli, worker, canary-analysis, ...
    principal: str = ""  # the Kafka principal, e.g. User:admin ("" in entries from before it)
    host: str = ""
    pid: int | None = None
    command: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        for name in ("action", "subject", "who", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ControlError(f"audit {name} must be a non-empty string, got {value!r}")
        for name in ("principal", "host", "command", "reason"):
            if not isinstance(getattr(self, name), str):
                raise ControlError(f"audit {name} must be a string, got {getattr(self, name)!r}")
        if isinstance(self.when, bool) or not isinstance(self.when, int | float) \
                or not math.isfinite(self.when):
            raise ControlError("audit when must be a finite number of Unix seconds, "
                               f"got {self.when!r}")
        if self.pid is not None and (isinstance(self.pid, bool) or not isinstance(self.pid, int)):
            raise ControlError(f"audit pid must be a process id or None, got {self.pid!r}")
        for name in ("before", "after"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise ControlError(f"audit {name} must be a JSON object or None, got {value!r}")
        if not isinstance(self.details, dict):
            raise ControlError(f"audit details must be a JSON object, got {self.details!r}")

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _KEYS}

    @classmethod
    def from_json(cls, d: Any) -> AuditEntry:
        if not isinstance(d, Mapping):
            raise ControlError(f"an audit entry is a JSON object, got {type(d).__name__}")
        if "subject" not in d and "model" in d:  # written before subjects other than models
            check_keys(d, required=_LEGACY_KEYS - {"reason"}, allowed=_LEGACY_KEYS,
                       what="audit entry")
            d = {("subject" if k == "model" else k): v for k, v in d.items()}
        check_keys(d, required={"action", "subject", "who", "when", "source"}, allowed=set(_KEYS),
                   what="audit entry")
        return cls(**d)


_KEYS = tuple(AuditEntry.__dataclass_fields__)
_LEGACY_KEYS = {"action", "model", "who", "when", "source", "before", "after", "reason"}


def select(entries: Iterable[AuditEntry], *, model: str | None = None, subject: str | None = None,
           actions: Sequence[str] = (), since: float | None = None) -> list[AuditEntry]:
    """The entries that pass every filter given, oldest first: ``model`` is one subject,
    ``subject`` also matches what is under it ("quota" matches "quota:user=alice"),
    ``actions`` any of them, ``since`` Unix seconds."""
    return sorted((e for e in entries
                   if (model is None or e.subject == model)
                   and (subject is None or e.subject == subject
                        or e.subject.startswith(f"{subject}:"))
                   and (not actions or e.action in actions)
                   and (since is None or e.when >= since)), key=lambda e: e.when)


def parse_since(text: str, now: float) -> float:
    """Unix seconds from an ISO 8601 time (UTC when it names no zone) or an age before
    ``now``: 90s, 30m, 2h, 7d."""
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if age:
        return now - float(age[1]) * _SECONDS[age[2]]
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ControlError(f"{text!r} is neither a time (ISO 8601, e.g. 2026-01-31T10:00:00Z) nor "
                           "an age (90s, 30m, 2h, 7d)") from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)).timestamp()


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SECRET_OPTION = re.compile(r"--[\w-]*(password|secret|token)[\w-]*", re.IGNORECASE)


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell line, the program by its file name; the values of options
    that name a password, secret or token are hidden (the trail is read by many)."""
    shown, hide_next = [], False
    for word in [os.path.basename(argv[0]), *argv[1:]] if argv else []:
        option, eq, _ = word.partition("=")
        secret = bool(_SECRET_OPTION.fullmatch(option))
        shown.append("REDACTED" if hide_next else f"{option}=REDACTED" if secret and eq else word)
        hide_next = secret and not eq
    return shlex.join(shown)


def render(entries: Sequence[AuditEntry]) -> str:
    """A table, one row per entry, each followed by its state (a spec: the one it made,
    or refused; else the state before and after), its reason and its details."""
    header = ("WHEN (UTC)", "ACTION", "SUBJECT", "WHO", "PRINCIPAL", "FROM")
    rows = [(_utc(e.when), e.action, e.subject, e.who, e.principal or "-", _place(e))
            for e in entries]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for i, row in enumerate([header, *rows]):
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        lines.append("  ".join([*padded, row[-1]]))
        if i:
            lines += [f"    {line}" for line in _notes(entries[i - 1])]
    return "\n".join(lines)


def _utc(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _place(e: AuditEntry) -> str:
    where = " ".join(part for part in (e.host, e.pid is not None and f"pid {e.pid}") if part)
    return e.source + (f" on {where}" if where else "") + (f": {e.command}" if e.command else "")


def _notes(e: AuditEntry) -> list[str]:
    # A refusal's "after" is what was asked for, and did not happen.
    now = "refused" if e.action.endswith("_refused") else "now"
    spec = _spec(e.after)
    notes = [f"{now}: {spec}"] if spec else [
        f"{label}: {_pairs(state)}" for label, state in (("was", e.before), (now, e.after))
        if state is not None]
    if e.reason:
        notes.append(f"why: {e.reason}")
    if e.details:
        notes.append(_pairs(e.details))
    return notes


def _spec(state: dict[str, Any] | None) -> str | None:
    """A deployment spec's one line; None when ``state`` is no spec."""
    if state is None:
        return None
    try:
        return DeploymentSpec.from_json(state).describe()
    except ControlError:
        return None


def _pairs(state: Mapping[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in state.items()) or "(nothing)"
