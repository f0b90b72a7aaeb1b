"""Metrics and answer selection over N sampled responses per problem (pure NumPy).

Owns accuracy, the unbiased pass@k, majority vote and cons@k, self-certainty confidence and the
confidence-based selections (highest, Borda), best-of-N with a verifier, and token statistics
(lengths, thinking tokens, think ratio, parallel latency).

Conventions: per-problem functions take the N responses of one problem (`majority_vote`,
`borda_vote`, ...); `*_at_k` and `*_curve` functions take all problems (a problems x N matrix)
and average over problems. Answers are grouped by a `canonical` key (default
`grade.canonical_answer`, so `0.5` and `\\frac{1}{2}` vote together); a selection returns the
first answer of the winning group as written, and None when no response has an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jaxthink.eval.grade import canonical_answer, is_equivalent

Answer = str | None


def accuracy(correct: Sequence[bool] | np.ndarray) -> float:
    """mean(correct): the fraction of correct responses (0.0 for none)."""
    correct = np.asarray(correct, dtype=bool)
    return float(correct.mean()) if correct.size else 0.0


# ---------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a large binomial; when
    n - c < k every k-subset holds a correct sample and the value is exactly 1.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def pass_at_k_curve(correct_matrix: Sequence[Sequence[bool]] | np.ndarray) -> np.ndarray:
    """pass@k for every k = 1..n, averaged over problems; entry k-1 holds pass@k.

    correct_matrix: problems x n booleans (n samples per problem).
    """
    correct = _bool_matrix(correct_matrix)
    n = correct.shape[1]
    counts = correct.sum(axis=1)
    return np.array([np.mean([pass_at_k(n, int(c), k) for c in counts]) for k in range(1, n + 1)])


# ---------------------------------------------------------------------------------------------
# Votes


def majority_vote(answers: Sequence[Answer], canonical: Callable[[str], str] = canonical_answer):
    """The most frequent answer (None answers ignored); ties go to the group seen first.

    Returns the first answer of the winning group as written, or None if no answer exists.
    """
    keys, first_index = _group(answers, canonical)
    if not first_index:
        return None
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    winner = max(first_index, key=lambda key: (counts[key], -first_index[key]))
    return answers[first_index[winner]]


def cons_at_k(
    answers_per_problem: Sequence[Sequence[Answer]],
    golds_or_correctness: Sequence[str] | np.ndarray,
    k: int,
    num_draws: int = 1000,
    seed: int = 0,
    canonical: Callable[[str], str] = canonical_answer,
) -> float:
    """cons@k: accuracy of the majority vote over k of the n samples, averaged over problems.

    For k = n the vote over all samples (exact). For k < n the expectation over k-subsets drawn
    without replacement, estimated from `num_draws` random subsets per problem (standard error
    <= 0.5 / sqrt(num_draws) per problem). A vote is correct when its group's answer is:
    `golds_or_correctness` is either one gold string per problem (graded with `is_equivalent`) or
    a problems x n boolean matrix of per-sample correctness (a group's first sample decides).
    """
    sample_correct = _sample_correctness(answers_per_problem, golds_or_correctness, canonical)
    rng = np.random.default_rng(seed)
    scores = []
    for answers, correct in zip(answers_per_problem, sample_correct):
        n = len(answers)
        if not 1 <= k <= n:
            raise ValueError(f"cons@k needs 1 <= k <= n; got k={k} with n={n} samples")
        group_ids, group_correct = _group_ids(answers, correct, canonical)
        if k == n:
            subsets = np.arange(n)[None, :]
        else:
            # argsort of uniform noise = a uniform random permutation per draw; sorting the first
            # k keeps sample order inside a subset, so ties resolve as in `majority_vote`.
            subsets = np.sort(rng.random((num_draws, n)).argsort(axis=1)[:, :k], axis=1)
        winners = _vote_winners(group_ids[subsets], len(group_correct))
        scores.append(np.mean([w >= 0 and group_correct[w] for w in winners]))
    return float(np.mean(scores)) if scores else 0.0


def confidence_highest(
    answers: Sequence[Answer], confidences: Sequence[float] | np.ndarray
) -> Answer:
    """The answer of the most confident response that has one (ties: first), else None."""
    _check_same_length(answers, confidences)
    answered = [i for i, answer in enumerate(answers) if answer is not None]
    if not answered:
        return None
    best = max(answered, key=lambda i: (confidences[i], -i))
    return answers[best]


def borda_vote(
    answers: Sequence[Answer],
    confidences: Sequence[float] | np.ndarray,
    p: float = 0.5,
    canonical: Callable[[str], str] = canonical_answer,
) -> Answer:
    """Confidence-weighted Borda vote over the N responses that have an answer.

    Rank responses by confidence, r = 1 the most confident (ties: earlier first); each response
    votes (N - r + 1)^p for its answer; the answer with the most votes wins (ties: seen first).
    """
    _check_same_length(answers, confidences)
    answered = [i for i, answer in enumerate(answers) if answer is not None]
    if not answered:
        return None
    by_confidence = sorted(answered, key=lambda i: (-confidences[i], i))
    n = len(answered)
    votes: dict[str, float] = {}
    first_index: dict[str, int] = {}
    for rank, i in enumerate(by_confidence, start=1):
        key = canonical(answers[i])
        votes[key] = votes.get(key, 0.0) + (n - rank + 1) ** p
        first_index[key] = min(first_index.get(key, i), i)
    winner = max(votes, key=lambda key: (votes[key], -first_index[key]))
    return answers[first_index[winner]]


def best_of_n(
    correct_or_verifier_results: Sequence, verifier: Callable[[object], bool] | None = None
) -> bool:
    """Best-of-N: pass if any of the N responses is verified.

    Without `verifier` the items are already verdicts (booleans); with one, each item (a response
    or answer) is passed to it. With a perfect verifier, the mean over problems equals pass@N.
    """
    if verifier is None:
        return bool(np.any(np.asarray(correct_or_verifier_results, dtype=bool)))
    return any(bool(verifier(item)) for item in correct_or_verifier_results)


# ---------------------------------------------------------------------------------------------
# Self-certainty confidence


def self_certainty_per_token(logprobs_full: np.ndarray) -> np.ndarray:
    """KL(Uniform || p) per token from full log-prob rows [..., T, V]: -(1/V) sum_j log p_j - log V.

    0 for a uniform distribution, larger the more peaked. The rows must cover the whole vocabulary
    (a -inf entry, e.g. from top-p masking, makes the value +inf).
    """
    logprobs = np.asarray(logprobs_full, dtype=np.float64)
    vocab = logprobs.shape[-1]
    return -logprobs.mean(axis=-1) - np.log(vocab)


def response_confidence(per_token_values: np.ndarray, mask: np.ndarray | None = None):
    """Masked mean over the last (token) axis of per-token self-certainty values.

    A response without any valid token gets 0.0, the value of a uniform (know-nothing) model.
    """
    values = np.asarray(per_token_values, dtype=np.float64)
    mask = np.ones(values.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    total = np.where(mask, values, 0.0).sum(axis=-1)
    count = mask.sum(axis=-1)
    mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return float(mean) if mean.ndim == 0 else mean


def self_certainty(logprobs_full: np.ndarray, mask: np.ndarray | None = None):
    """Self-certainty of a response [T, V] (or a batch [B, T, V]): mean over tokens of KL(U || p)."""
    return response_confidence(self_certainty_per_token(logprobs_full), mask)


# ---------------------------------------------------------------------------------------------
# Token statistics


def mean_tokens(lengths: Sequence[int] | np.ndarray) -> float:
    """Mean generated length (0.0 for none)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(lengths.mean()) if lengths.size else 0.0


def median_tokens(lengths: Sequence[int] | np.ndarray) -> float:
    """Median generated length (0.0 for none)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(np.median(lengths)) if lengths.size else 0.0


def think_ratio(think_mode: Sequence[bool] | np.ndarray) -> float:
    """Fraction of responses generated in think mode (0.0 for none)."""
    return accuracy(think_mode)


def token_stats(
    lengths: Sequence[int] | np.ndarray,
    thinking_lengths: Sequence[int] | np.ndarray | None = None,
    think_mode: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, float]:
    """Summary of generated lengths: mean/median tokens, mean thinking tokens, think ratio."""
    stats = {"mean_tokens": mean_tokens(lengths), "median_tokens": median_tokens(lengths)}
    if thinking_lengths is not None:
        stats["mean_thinking_tokens"] = mean_tokens(thinking_lengths)
    if think_mode is not None:
        stats["think_ratio"] = think_ratio(think_mode)
    return stats


def parallel_latency(lengths: Sequence[int] | np.ndarray):
    """Latency of N samples generated in parallel: the longest one, max_i length_i.

    lengths [N] -> an int; [problems, N] -> one value per problem. No samples -> 0.
    """
    lengths = np.asarray(lengths)
    if lengths.shape[-1:] == (0,):
        return 0 if lengths.ndim <= 1 else np.zeros(lengths.shape[:-1], dtype=int)
    longest = lengths.max(axis=-1)
    return int(longest) if longest.ndim == 0 else longest


# ---------------------------------------------------------------------------------------------
# Helpers


def _bool_matrix(matrix) -> np.ndarray:
    correct = np.asarray(matrix, dtype=bool)
    if correct.ndim != 2 or correct.shape[1] == 0:
        raise ValueError(f"expected a problems x n boolean matrix with n >= 1; got {correct.shape}")
    return correct


def _check_same_length(answers, confidences) -> None:
    if len(answers) != len(confidences):
        raise ValueError(f"{len(answers)} answers but {len(confidences)} confidences")


def _group(answers: Sequence[Answer], canonical) -> tuple[list[str | None], dict[str, int]]:
    """Each answer's group key (None for no answer) and each group's first index."""
    keys = [None if answer is None else canonical(answer) for answer in answers]
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None:
            first_index.setdefault(key, i)
    return keys, first_index


def _group_ids(answers, correct, canonical) -> tuple[np.ndarray, np.ndarray]:
    """Integer group per sample (-1: no answer, groups numbered by first occurrence) and
    whether each group is correct (judged by its first sample)."""
    keys, first_index = _group(answers, canonical)
    number = {key: g for g, key in enumerate(first_index)}  # dicts keep first-seen order
    group_ids = np.array([-1 if key is None else number[key] for key in keys], dtype=np.int64)
    group_correct = np.array([bool(correct[i]) for i in first_index.values()], dtype=bool)
    return group_ids, group_correct


def _vote_winners(subset_groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Majority winner of each row of group ids [draws, k]; -1 where no sample has an answer.

    Ties go to the group appearing earliest in the row, as in `majority_vote`.
    """
    draws, k = subset_groups.shape
    if num_groups == 0:
        return np.full(draws, -1)
    one_hot = subset_groups[:, :, None] == np.arange(num_groups)[None, None, :]  # [D, k, G]
    counts = one_hot.sum(axis=1)
    first_position = np.where(one_hot.any(axis=1), one_hot.argmax(axis=1), k)
    score = counts * (k + 1) - first_position  # more votes first, then earlier position
    winners = score.argmax(axis=1)
    return np.where(counts.max(axis=1) > 0, winners, -1)


def _sample_correctness(answers_per_problem, golds_or_correctness, canonical) -> list[np.ndarray]:
    """Per-sample correctness: given as a matrix, or graded once per group against the golds."""
    if len(answers_per_problem) != len(golds_or_correctness):
        raise ValueError(
            f"{len(answers_per_problem)} problems but {len(golds_or_correctness)} golds/rows"
        )
    given = [np.asarray(row) for row in golds_or_correctness]
    if all(row.dtype == bool for row in given):
        for answers, row in zip(answers_per_problem, given):
            if row.shape != (len(answers),):
                raise ValueError(f"correctness row of shape {row.shape} for {len(answers)} answers")
        return given
    result = []
    for answers, gold in zip(answers_per_problem, golds_or_correctness):
        keys, first_index = _group(answers, canonical)
        group_ok = {key: is_equivalent(answers[i], str(gold)) for key, i in first_index.items()}
        result.append(np.array([key is not None and group_ok[key] for key in keys], dtype=bool))
    return result
