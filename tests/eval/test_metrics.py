"""Metrics (metrics.py): every estimator against its brute-force definition, votes on hand-built
cases, self-certainty against closed forms, token statistics and edge cases."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from jaxthink.eval.metrics import (
    accuracy,
    best_of_n,
    borda_vote,
    confidence_highest,
    cons_at_k,
    majority_vote,
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


def brute_force_pass_at_k(correct, k):
    """Fraction of k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_force_majority(answers):
    """Most common non-None answer, ties to the first seen; None if there is none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def brute_force_cons_at_k(answers, gold, k):
    subsets = list(itertools.combinations(answers, k))
    return sum(brute_force_majority(s) == gold for s in subsets) / len(subsets)


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration_of_subsets(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(correct, k), abs=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # k = n: any correct sample is in the only subset
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1000, 1, 1) == pytest.approx(1e-3)  # large n: no overflowing binomials
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_pass_at_k_curve_averages_problems_for_every_k():
    rng = np.random.default_rng(0)
    matrix = rng.random((6, 7)) < 0.3
    curve = pass_at_k_curve(matrix)
    assert curve.shape == (7,)
    for k in range(1, 8):
        expected = np.mean([brute_force_pass_at_k(list(row), k) for row in matrix])
        assert curve[k - 1] == pytest.approx(expected, abs=1e-12)
    assert np.all(np.diff(curve) >= -1e-12)  # more samples never hurt


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None, None, None]) == "4"  # None never wins
    assert majority_vote(["3", "4", "4", "3"]) == "3"  # tie: first seen
    assert majority_vote(["0.5", r"\frac{1}{2}", "2", "3"]) == "0.5"  # equivalent forms group
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    # a custom canonical key: exact strings only
    assert majority_vote(["0.5", r"\frac{1}{2}", "2"], canonical=str) == "0.5"
    assert majority_vote(["2", "0.5", r"\frac{1}{2}"], canonical=str) == "2"


CONS_CASES = [
    (["1", "2", "2", "1", "3", None, "1", "2"], "1"),
    (["5", None, None, "5", "6", "6", "7"], "6"),
    ([None, "9", "8", "8", "9", "9"], "8"),
]


@pytest.mark.parametrize(("answers", "gold"), CONS_CASES)
def test_cons_at_k_exact_at_k_equal_n(answers, gold):
    n = len(answers)
    expected = float(brute_force_majority(answers) == gold)
    assert cons_at_k([answers], [gold], k=n) == expected
    assert expected == brute_force_cons_at_k(answers, gold, n)


@pytest.mark.parametrize(("answers", "gold"), CONS_CASES)
def test_cons_at_k_monte_carlo_matches_expectation_over_all_subsets(answers, gold):
    # Each draw is a Bernoulli(p) outcome, so the estimate's standard error is at most
    # 0.5 / sqrt(4000) ~ 0.008; a tolerance of 0.035 is > 4 standard errors (fixed seed anyway).
    n = len(answers)
    for k in range(1, n):
        expected = brute_force_cons_at_k(answers, gold, k)
        estimate = cons_at_k([answers], [gold], k=k, num_draws=4000, seed=1)
        assert estimate == pytest.approx(expected, abs=0.035), k


def test_cons_at_k_accepts_per_sample_correctness_and_averages_problems():
    answers = [case for case, _ in CONS_CASES]
    golds = [gold for _, gold in CONS_CASES]
    correctness = [[a == gold for a in case] for case, gold in CONS_CASES]
    for k in (2, 6):
        # same seed, same subsets: golds graded per group agree with given per-sample verdicts
        with_golds = cons_at_k(answers, golds, k=k, num_draws=4000, seed=3)
        assert with_golds == cons_at_k(answers, correctness, k=k, num_draws=4000, seed=3)
        # the mean over problems of the brute-force expectation (tolerance as above)
        expected = np.mean([brute_force_cons_at_k(a, g, k) for a, g in CONS_CASES])
        assert with_golds == pytest.approx(expected, abs=0.035)


def test_cons_at_k_groups_equivalent_answers_and_handles_no_answers():
    assert cons_at_k([["0.5", r"\frac{1}{2}", "2"]], ["1/2"], k=3) == 1.0
    assert cons_at_k([[None, None, None]], ["1"], k=2) == 0.0
    with pytest.raises(ValueError):
        cons_at_k([["1", "2"]], ["1"], k=3)


def test_confidence_highest_and_borda_can_disagree_with_majority():
    answers = ["7", "7", "7", "12", "12"]
    confidences = [0.1, 0.2, 0.3, 2.0, 1.9]
    assert majority_vote(answers) == "7"
    assert confidence_highest(answers, confidences) == "12"
    # ranks: 12 (r=1, 5 pts), 12 (r=2, 4), 7 (r=3, 3), 7 (r=4, 2), 7 (r=5, 1)
    # p=0.5: 12 -> sqrt5 + sqrt4 = 4.24; 7 -> sqrt3 + sqrt2 + 1 = 4.15: Borda picks 12.
    assert borda_vote(answers, confidences, p=0.5) == "12"
    # p=0 makes every vote 1: plain majority.
    assert borda_vote(answers, confidences, p=0.0) == "7"


def test_borda_and_highest_disagree_with_each_other():
    answers = ["1", "2", "2", "2"]
    confidences = [9.0, 8.0, 7.0, 6.0]
    assert confidence_highest(answers, confidences) == "1"
    # 1 -> sqrt4 = 2; 2 -> sqrt3 + sqrt2 + 1 = 4.15
    assert borda_vote(answers, confidences) == "2"


def test_borda_matches_its_definition_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 9))
        answers = [str(a) for a in rng.integers(0, 3, size=n)]
        confidences = rng.random(n)
        order = np.argsort(-confidences, kind="stable")
        votes = Counter()
        for rank, i in enumerate(order, start=1):
            votes[answers[i]] += (n - rank + 1) ** 0.5
        best = max(votes.values())
        expected = next(a for a in answers if math.isclose(votes[a], best))
        assert borda_vote(answers, confidences) == expected


def test_selections_skip_responses_without_an_answer():
    assert confidence_highest([None, "3"], [5.0, 1.0]) == "3"
    assert borda_vote([None, "3", "4"], [5.0, 1.0, 2.0]) == "4"
    assert confidence_highest([None], [1.0]) is None
    assert borda_vote([], []) is None
    with pytest.raises(ValueError):
        borda_vote(["1"], [1.0, 2.0])


def test_best_of_n():
    assert best_of_n([False, True, False])
    assert not best_of_n([False, False])
    assert not best_of_n([])
    assert best_of_n(["3", "4", None], verifier=lambda answer: answer == "4")
    # with a perfect verifier, best-of-N over problems equals pass@N
    matrix = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=bool)
    assert np.mean([best_of_n(row) for row in matrix]) == pass_at_k_curve(matrix)[-1]


def test_self_certainty_uniform_is_zero_and_peaked_is_known():
    vocab = 4
    uniform = np.log(np.full((3, vocab), 1 / vocab))
    assert self_certainty(uniform) == pytest.approx(0.0, abs=1e-12)
    peaked = np.log(np.array([[0.7, 0.1, 0.1, 0.1]]))
    # -(1/4)(ln 0.7 + 3 ln 0.1) - ln 4
    assert self_certainty(peaked) == pytest.approx(0.4298132, abs=1e-6)


def test_self_certainty_masks_tokens_and_batches():
    logprobs = np.log(np.array([[[0.25] * 4, [0.7, 0.1, 0.1, 0.1]], [[0.7, 0.1, 0.1, 0.1]] * 2]))
    per_token = self_certainty_per_token(logprobs)
    assert per_token.shape == (2, 2)
    mask = np.array([[False, True], [True, True]])
    np.testing.assert_allclose(self_certainty(logprobs, mask), [0.4298132, 0.4298132], atol=1e-6)
    np.testing.assert_allclose(self_certainty(logprobs), [0.2149066, 0.4298132], atol=1e-6)
    assert response_confidence(per_token[0], np.array([False, False])) == 0.0  # no tokens
    assert response_confidence([1.0, 2.0, 6.0], [True, True, False]) == 1.5


def test_token_stats_and_parallel_latency():
    stats = token_stats([10, 20, 60], thinking_lengths=[0, 15, 50], think_mode=[False, True, True])
    assert stats == {
        "mean_tokens": 30.0,
        "median_tokens": 20.0,
        "mean_thinking_tokens": pytest.approx(65 / 3),
        "think_ratio": pytest.approx(2 / 3),
    }
    assert token_stats([]) == {"mean_tokens": 0.0, "median_tokens": 0.0}
    assert median_tokens([1, 2, 3, 10]) == 2.5
    assert think_ratio([]) == 0.0
    assert parallel_latency([120, 700, 350]) == 700
    np.testing.assert_array_equal(parallel_latency([[1, 5], [7, 2]]), [5, 7])
    assert parallel_latency([]) == 0
