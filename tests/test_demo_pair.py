"""The shipped hybrid pair (jaxthink/demo_pair) keeps its measured behaviour on fresh held-out
problems of the levels with a gap (4-6): the base model answers directly and mostly wrongly, the
thinking model traces and is mostly right, and the hybrid opens a worked solution on most
problems while steering a few tokens, and recovers much of the gap. The floors sit well below
the study's numbers (docs/hybrid.md), so they catch a broken or replaced pair, not noise.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxthink
from jaxthink.data import generate_problems
from jaxthink.eval import extract_answer
from jaxthink.hybrid import load_steering

PER_LEVEL = 8


@pytest.fixture(scope="module")
def pair():
    path = jaxthink.demo_pair_dir()
    thinking, tokenizer, _ = jaxthink.load(path / "thinking")
    base, _, _ = jaxthink.load(path / "base")
    return thinking, base, tokenizer, load_steering(path / "steering.npz")


@pytest.fixture(scope="module")
def problems():
    return generate_problems(3 * PER_LEVEL, levels=[4, 5, 6], seed=11, split="test")


def accuracy(out, problems) -> float:
    return float(np.mean([extract_answer(g.text) == p["answer"] for g, p in zip(out, problems)]))


def test_base_answers_directly_thinking_traces_and_the_hybrid_closes_the_gap(pair, problems):
    thinking, base, tokenizer, steering = pair
    questions = [p["prompt"] for p in problems]
    alone = jaxthink.generate(base, tokenizer, questions, "plain", max_new_tokens=256)
    traced = jaxthink.generate(thinking, tokenizer, questions, "think", max_new_tokens=256)
    hybrid = jaxthink.hybrid_generate(
        thinking, base, tokenizer, questions, steering, max_new_tokens=256
    )
    worked = lambda out: np.mean(["|" in g.text for g in out])
    assert worked(alone) <= 0.25 and worked(hybrid) >= 0.75
    assert accuracy(alone, problems) <= 0.4 and accuracy(traced, problems) >= 0.7
    gap = (accuracy(hybrid, problems) - accuracy(alone, problems)) / (
        accuracy(traced, problems) - accuracy(alone, problems)
    )
    steered = sum(g.steered_tokens for g in hybrid) / sum(g.num_tokens for g in hybrid)
    assert gap >= 0.4 and steered <= 0.1
