"""Is accuracy really lower, or did a few labels happen to be wrong? Two exact tests.

A bare threshold fires on the first unlucky labels and stays quiet on a real drop until
it is large. Both tests here answer with a p-value, and nothing is judged before a
minimum of labels:

* ``below_training``: one version's accuracy against its training accuracy less a
  margin: a one-sided exact binomial test (H0: accuracy >= training - margin);
* ``canary_worse``: a canary's accuracy against stable's on the requests labelled so far:
  a one-sided Fisher exact test on the 2x2 table of correct and wrong answers (H0: the
  canary is as accurate as stable).
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest, fisher_exact

# A canary found less accurate than stable at this level is rolled back.
CANARY_ALPHA = 0.01


@dataclass(frozen=True, slots=True)
class Finding:
    worse: bool  # significant at the level asked, with enough labels
    p_value: float | None  # None: too few labels to test
    detail: str


def below_training(correct: int, labelled: int, training_accuracy: float, margin: float,
                   alpha: float, min_labelled: int) -> Finding:
    floor = max(0.0, training_accuracy - margin)
    if labelled < min_labelled:
        return Finding(False, None, f"{labelled} labels, fewer than the {min_labelled} a verdict needs")
    p = float(binomtest(correct, labelled, floor, alternative="less").pvalue) if floor > 0 else 1.0
    accuracy = correct / labelled
    return Finding(p < alpha, p, f"accuracy {accuracy:.4f} on {labelled} labels against a floor of "
                   f"{floor:.4f} (training {training_accuracy:.4f} less {margin:.4f}): p = {p:.3g}")


def canary_worse(canary: tuple[int, int], stable: tuple[int, int], alpha: float,
                 min_labelled: int) -> Finding:
    """``canary`` and ``stable`` are (correct, labelled)."""
    (c_hit, c_n), (s_hit, s_n) = canary, stable
    if min(c_n, s_n) < min_labelled:
        return Finding(False, None, f"{c_n} canary and {s_n} stable labels, fewer than the "
                       f"{min_labelled} each arm needs")
    _, p = fisher_exact([[c_hit, c_n - c_hit], [s_hit, s_n - s_hit]], alternative="less")
    return Finding(float(p) < alpha, float(p), f"canary accuracy {c_hit / c_n:.4f} on {c_n} labels, "
                   f"stable {s_hit / s_n:.4f} on {s_n}: p = {float(p):.3g}")
