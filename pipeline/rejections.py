"""Why a request was not served: a stable reason code and a sentence a person can act on.

A ``Rejection`` is a value, not an exception: decoding returns it, the shell turns it
into a dead letter. Reason codes are a contract; dashboards and alerts key on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# What an error sentence says in place of a value that redaction hides.
REDACTED_VALUE = "a redacted value"


class Reason(StrEnum):
    EMPTY_REQUEST = "empty_request"
    TOO_LARGE = "too_large"
    # Arrays or objects nested deeper than any request form needs (a byte scan, before parsing).
    TOO_DEEP = "too_deep"
    # More features than STREAMSERVE_MAX_FEATURES, refused before any per-feature work.
    TOO_MANY_FEATURES = "too_many_features"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    # A JSON object holds one key twice: parsers disagree on which value counts.
    DUPLICATE_KEY = "duplicate_key"
    MISSING_ID = "missing_id"
    INVALID_ID = "invalid_id"
    MISSING_MODEL = "missing_model"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_VERSION = "unknown_version"
    SCHEMA_MISMATCH = "schema_mismatch"
    NON_FINITE = "non_finite"
    # The request id was already served within the worker's dedupe window (pipeline.dedupe).
    DUPLICATE_REQUEST = "duplicate_request"
    # Within its deadline_ms when a worker took it, but not when it could be answered.
    DEADLINE_EXCEEDED = "deadline_exceeded"
    # Its deadline_ms had already passed when a worker took it: the time went to the
    # sender (or its clock), the broker or the partition's backlog, not to serving it.
    ARRIVED_LATE = "arrived_late"
    MODEL_ERROR = "model_error"
    CIRCUIT_OPEN = "circuit_open"
    # The request's tenant is over its quota on this worker (pipeline.tenant_quotas).
    QUOTA_EXCEEDED = "quota_exceeded"
    # The broker refused the request's answer for good (e.g. too large): this stands in.
    UNDELIVERABLE = "undeliverable"

    @property
    def is_client_error(self) -> bool:
        """True when the sender must act (fix the request, or send more slowly when over its
        quota); False when the server failed it."""
        return self not in (Reason.DEADLINE_EXCEEDED, Reason.MODEL_ERROR, Reason.CIRCUIT_OPEN,
                            Reason.UNDELIVERABLE)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    error: str
    id: str | None = None
    model: str | None = None
    # When ``error`` quotes a request field's value: (that field, the same sentence with
    # REDACTED_VALUE in place of the value), for when redaction hides the field. The field
    # is None when the value is the whole request (not a JSON object): no rule can name it.
    quotes: tuple[str | None, str] | None = None
