"""Evaluation core: answer extraction, grading, metrics and selection, and local datasets.

Pure Python/NumPy; no model needed. extract.py finds the final answer in a response, grade.py
decides equivalence with the gold answer (math-verify, time-bounded in worker processes),
metrics.py holds pass@k, votes, confidence and token statistics, datasets.py reads problems.
"""

from jaxthink.eval.datasets import PRESETS, DatasetError, Problem, detect_preset, load_problems
from jaxthink.eval.extract import extract_answer, split_thinking
from jaxthink.eval.grade import (
    Verdict,
    canonical_answer,
    grade,
    grade_many,
    is_equivalent,
    normalise_answer,
    shutdown_verifiers,
)
from jaxthink.eval.metrics import (
    accuracy,
    best_of_n,
    borda_vote,
    confidence_highest,
    cons_at_k,
    majority_vote,
    mean_tokens,
    median_tokens,
    parallel_latency,
    pass_at_k,
    pass_at_k_curve,
    response_confidence,
    self_certainty,
    self_certainty_per_token,
    think_ratio,
    token_stats,
)

__all__ = [
    "PRESETS",
    "DatasetError",
    "Problem",
    "Verdict",
    "accuracy",
    "best_of_n",
    "borda_vote",
    "canonical_answer",
    "confidence_highest",
    "cons_at_k",
    "detect_preset",
    "extract_answer",
    "grade",
    "grade_many",
    "is_equivalent",
    "load_problems",
    "majority_vote",
    "mean_tokens",
    "median_tokens",
    "normalise_answer",
    "parallel_latency",
    "pass_at_k",
    "pass_at_k_curve",
    "response_confidence",
    "self_certainty",
    "self_certainty_per_token",
    "shutdown_verifiers",
    "split_thinking",
    "think_ratio",
    "token_stats",
]
