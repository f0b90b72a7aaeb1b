"""Thinkless rewards: the scalar reward of one sampled response, and its NumPy batch form.

The reward table is the one of "Thinkless: LLM Learns When to Think" (Fang, Ma, Wang,
arXiv 2505.13379, section 3 and the VainF/Thinkless reference code):

    correct answer, `<short>` mode   -> +1.0             (`correct_short`)
    correct answer, `<think>` mode   -> +1.0 - gamma     (gamma = `think_penalty`, 0.5 in the code)
    wrong answer, unparsable answer,
    or a `<think>` response truncated
    before `</think>`                -> -1.0             (`wrong`)

A think response that runs out of budget before `</think>` gets `wrong` even when the text it
produced happens to contain the right answer: the answer must come after `</think>`. A short
response has no `</think>`, so `truncated_think` is ignored for it.

Grading (answer extraction, equivalence) lives elsewhere; these functions only take its verdicts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("short", "think")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Reward values. The think reward for a correct answer is `correct_short - think_penalty`.

    The paper's README suggests raising the think reward to 0.7-0.8 (think_penalty 0.3-0.2) if the
    policy collapses to short answers.
    """

    correct_short: float = 1.0
    think_penalty: float = 0.5  # gamma
    wrong: float = -1.0

    @property
    def correct_think(self) -> float:
        return self.correct_short - self.think_penalty


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")


def thinkless_reward(
    mode: str,
    correct: bool,
    parsed: bool,
    truncated_think: bool,
    cfg: RewardConfig = RewardConfig(),
) -> float:
    """The reward of one response of `mode` ("short" or "think"), given the grader's verdicts."""
    _check_mode(mode)
    failed = not parsed or not correct or (mode == "think" and truncated_think)
    if failed:
        return float(cfg.wrong)
    return float(cfg.correct_short if mode == "short" else cfg.correct_think)


def thinkless_rewards(
    modes: np.ndarray,
    correct: np.ndarray,
    parsed: np.ndarray,
    truncated_think: np.ndarray,
    cfg: RewardConfig = RewardConfig(),
) -> np.ndarray:
    """`thinkless_reward` over arrays of equal shape; `modes` holds "short"/"think" strings.

    Returns float32 rewards of the same shape.
    """
    modes = np.asarray(modes)
    bad = ~np.isin(modes, MODES)
    if bad.any():
        raise ValueError(f"reward modes must be in {MODES}, got {sorted(set(modes[bad].tolist()))}")
    think = modes == "think"
    correct, parsed, truncated = (np.asarray(x, bool) for x in (correct, parsed, truncated_think))
    failed = ~parsed | ~correct | (think & truncated)
    ok_reward = np.where(think, cfg.correct_think, cfg.correct_short)
    return np.where(failed, cfg.wrong, ok_reward).astype(np.float32)
