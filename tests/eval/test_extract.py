"""Answer extraction (extract.py) and grading (grade.py): real-world formats, equivalence, threads."""

import threading
import time

import pytest

from jaxthink.eval.extract import extract_answer, split_thinking
from jaxthink.eval.grade import (
    Verdict,
    canonical_answer,
    grade,
    grade_many,
    is_equivalent,
    shutdown_verifiers,
)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    shutdown_verifiers()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"So the answer is $\boxed{42}$.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"Thus $\boxed{\dfrac{3}{4}}$", r"\dfrac{3}{4}"),
        (r"\boxed{12\text{ cm}}", r"12\text{ cm}"),
        (r"\boxed{-7}", "-7"),
        (r"\boxed{1,000}", "1,000"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{(3, \frac{\pi}{2})}", r"(3, \frac{\pi}{2})"),
        (r"First \boxed{1}, then corrected: \boxed{2}", "2"),
        (r"\fbox{7}", "7"),
        (r"so $\boxed 5$", "5"),
        (r"\boxed{3} and then cut off \boxed{\frac{1}{", "3"),
        ("<think>\nMaybe \\boxed{5}?\n</think>\nThe answer is 6, no box.", None),
        ("<think>\nMaybe \\boxed{5}?\n</think>\n\\boxed{6}", "6"),
        ("Okay.\n</think>\n\nFinal Answer: 42", "42"),
        ("Final Answer: $x = 5$.\nThanks", "x = 5"),
        ("**Final Answer:** 17", "17"),
        ("final answer:\n\n 3.5", "3.5"),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 1,234", "1,234"),
        ("<short>\\boxed{8}", "8"),
        ("<think>\nstill thinking \\boxed{9}", "9"),
        ("I do not know.", None),
        ("", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("response", "thinking", "answer"),
    [
        ("<think>\nsteps\n</think>\n\nThe answer.", "steps", "The answer."),
        (
            "steps (prompt opened <think>)\n</think>answer",
            "steps (prompt opened <think>)",
            "answer",
        ),
        ("<think>\ncut off mid-thought", "cut off mid-thought", ""),
        ("<short>\n\\boxed{3}", "", "\\boxed{3}"),
        ("plain answer", "", "plain answer"),
    ],
)
def test_split_thinking(response, thinking, answer):
    assert split_thinking(response) == (thinking, answer)


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac{3}{4}", "3/4", True),
        ("1,000", "1000", True),
        ("-7", "-7.0", True),
        (r"12\text{ cm}", "12", True),
        ("5 dollars", "5", True),
        (r"\$5", "5", True),
        # Decision: a percentage equals its number and its fraction (both forms are common golds).
        (r"10\%", "10", True),
        (r"10\%", "0.1", True),
        # Decision: naming the variable is not an error.
        ("x=5", "5", True),
        ("0.3333333", r"\frac{1}{3}", True),
        (r"\sqrt{2}", r"2^{1/2}", True),
        (r"\text{(B)}", "B", True),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
        ("6", "-6", False),
        ("0.33", r"\frac{1}{3}", False),
        ("1,2", "12", False),
        ("1000001", "1000000", False),
        ("5 pi", "5", False),
        (r"\frac{1}{3}", r"\frac{1}{2}", False),
        (None, "5", False),
        ("", "5", False),
    ],
)
def test_is_equivalent(pred, gold, equal):
    assert is_equivalent(pred, gold) is equal


def test_canonical_answer_groups_equivalent_numbers():
    assert canonical_answer("0.5") == canonical_answer(r"\frac{1}{2}") == canonical_answer("1/2")
    assert canonical_answer("1,000") == canonical_answer("1000")
    assert canonical_answer(r"\text{Evelyn}") == canonical_answer("evelyn")
    assert canonical_answer("2") != canonical_answer("3")


def test_grade_reports_extraction_and_correctness():
    assert grade(r"so \boxed{\frac{1}{2}}", "0.5") == Verdict(r"\frac{1}{2}", True, True)
    assert grade("no idea", "0.5") == Verdict(None, False, False)
    assert grade(r"\boxed{3}", "4") == Verdict("3", False, True)


def test_grade_from_worker_threads_uses_math_verify():
    # sqrt(2) vs 2^(1/2) needs sympy: this exercises math-verify off the main thread.
    results = []
    thread = threading.Thread(target=lambda: results.append(grade(r"\boxed{\sqrt{2}}", "2^{1/2}")))
    thread.start()
    thread.join()
    assert results == [Verdict(r"\sqrt{2}", True, True)]

    verdicts = grade_many(
        [r"\boxed{\sqrt{2}}", r"\boxed{\pi}", "#### 1,234", "nothing"],
        ["2^{1/2}", "3", "1234", "1"],
        workers=2,
    )
    assert [v.correct for v in verdicts] == [True, False, True, False]


def test_pathological_input_returns_within_the_bound_and_grading_recovers():
    # Evaluating 10^(10^10) is one huge C-level integer power: only killing a process stops it.
    assert is_equivalent(r"\sqrt{2}", "2^{1/2}")  # warm a worker: start-up is not in the bound
    start = time.monotonic()
    result = []
    thread = threading.Thread(
        target=lambda: result.append(is_equivalent(r"10^{10^{10}}", "1", timeout_s=1.0))
    )
    thread.start()
    thread.join()
    assert result == [False]
    assert time.monotonic() - start < 1.0 + 1.5  # the bound plus killing the worker
    assert is_equivalent(r"\sqrt{4}", "2^{1}", timeout_s=5.0)  # a new worker took over
