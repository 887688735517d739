"""Sections for what the workers watch and write beside predictions: drift, samples,
redaction of what leaves a worker, and whether replayed traffic counts.

The drift, sampling and redaction values are every model's defaults: a model's table in
STREAMSERVE_MODELS_FILE may override them (``Settings.policy``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.fields import check, secret, setting


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """Drift monitoring: event-time windows over served rows and the verdict on each."""

    enabled: bool = setting(
        True, "STREAMSERVE_DRIFT",
        "Count served batches for drift monitoring: on or off (off only to measure its cost).")
    window_s: int = setting(
        60, "STREAMSERVE_DRIFT_WINDOW_S",
        "Drift window size in whole seconds of event time (a multiple of the hop).")
    hop_s: int = setting(
        10, "STREAMSERVE_DRIFT_HOP_S",
        "Drift window hop in whole seconds: a report per model version and feature every hop.")
    grace_s: int = setting(
        10, "STREAMSERVE_DRIFT_GRACE_S",
        "How long past its end a drift window waits for rows out of order (whole hops): "
        "partitions are read side by side, so a backlog can run ahead of another.")
    min_window: int = setting(
        200, "STREAMSERVE_DRIFT_MIN_WINDOW",
        "Fewest values in a window for a drift verdict (also at least 20 per bin).")
    alpha: float = setting(
        0.05, "STREAMSERVE_DRIFT_ALPHA",
        "Significance of the drift test (Bonferroni-corrected over a model's features).")
    psi_floor: float = setting(
        0.1, "STREAMSERVE_DRIFT_PSI_FLOOR", "Smallest PSI that counts as drift, however large the window.")
    alert_psi: float = setting(
        0.25, "STREAMSERVE_DRIFT_ALERT_PSI", "PSI from which drift is reported as an alert.")
    consecutive: int = setting(
        2, "STREAMSERVE_DRIFT_CONSECUTIVE", "Drifting windows in a row before a drift event is raised.")


@dataclass(frozen=True, slots=True)
class QualitySettings:
    """Ground truth: labels joined with the answers they judge (``pipeline.quality``)."""

    enabled: bool = setting(
        False, "STREAMSERVE_LABELS",
        "Keep every answer for the join with labels sent to <prefix>.labels, and report live "
        "quality to <prefix>.quality: on or off (it costs a table write per answer).")
    horizon_s: int = setting(
        7 * 86400, "STREAMSERVE_LABEL_HORIZON",
        "Seconds an answer is kept waiting for its label (default 7 days); a label after that "
        "counts as unknown_id.")
    wait_s: int = setting(
        3600, "STREAMSERVE_LABEL_WAIT_S",
        "Seconds a label that came before its answer waits for it, then counts as unknown_id.")
    max_unanswered: int = setting(
        100_000, "STREAMSERVE_LABEL_MAX_UNANSWERED",
        "Labels without an answer (waiting for it, or counted unknown_id) one join partition "
        "keeps; beyond it, a label for an id no worker answered is dropped (outcome dropped), "
        "so labels for made-up ids cannot fill a worker's memory.")
    report_s: float = setting(
        5.0, "STREAMSERVE_QUALITY_REPORT_S",
        "Seconds between quality reports to <prefix>.quality and Prometheus.")
    window_s: int = setting(
        3600, "STREAMSERVE_QUALITY_WINDOW_S",
        "Width of the windows of answer time that quality trends are reported over; the "
        "accuracy alert tests the latest 24.")
    margin: float = setting(
        0.05, "STREAMSERVE_QUALITY_MARGIN",
        "How far below its training accuracy (the manifest's test_accuracy) a version's "
        "accuracy on labels may fall before the exact binomial test behind the "
        "StreamserveAccuracyBelowTraining alert asks whether it really did.")
    min_labels: int = setting(
        200, "STREAMSERVE_QUALITY_MIN_LABELS",
        "Fewest labelled answers of a version on one worker before its accuracy is tested.")

    def __post_init__(self) -> None:
        for name, env in (("horizon_s", "STREAMSERVE_LABEL_HORIZON"), ("wait_s", "STREAMSERVE_LABEL_WAIT_S"),
                          ("report_s", "STREAMSERVE_QUALITY_REPORT_S"),
                          ("window_s", "STREAMSERVE_QUALITY_WINDOW_S")):
            check(getattr(self, name) > 0, env, f"must be positive, got {getattr(self, name)}")
        check(0 <= self.margin < 1, "STREAMSERVE_QUALITY_MARGIN", f"must lie in [0, 1), got {self.margin}")
        check(self.max_unanswered >= 1, "STREAMSERVE_LABEL_MAX_UNANSWERED",
              f"must be at least 1, got {self.max_unanswered}")
        check(self.min_labels >= 1, "STREAMSERVE_QUALITY_MIN_LABELS", f"must be at least 1, got {self.min_labels}")


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """Samples: served requests written with their predictions, for labelling and audits."""

    rate: float = setting(
        0.01, "STREAMSERVE_SAMPLE_RATE",
        "Share of each model's served requests (chosen by a hash of the request id, so a "
        "replay chooses alike) written with their predictions to <prefix>.samples; 0 is off.")


@dataclass(frozen=True, slots=True)
class RedactionSettings:
    """Redaction of request fields before anything leaves the worker."""

    rules: str = setting(
        "", "STREAMSERVE_REDACT",
        "Request fields redacted before anything leaves the worker (samples, dead letters), "
        "for every model: 'field=drop|hash|mask,...'. hash is a keyed HMAC-SHA256.")
    key: str = secret("STREAMSERVE_REDACTION_KEY", "Secret key of the keyed hash that 'hash' redaction uses.")


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """Replayed traffic (`streamserve replay`)."""

    monitoring: bool = setting(
        False, "STREAMSERVE_REPLAY_MONITORING",
        "Let replayed requests (header streamserve-replay, from `streamserve replay`) count in "
        "drift statistics and canary analysis: on or off.")
