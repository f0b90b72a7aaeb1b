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

`max_short_tokens` (0: off, the paper's setting) makes a `<short>` response longer than that many
tokens `wrong`. Without it a policy can learn to reason after `<short>` and collect the short
reward: the demo model did within 100 DeGRPO steps (its "short" answers grew to the length of its
traces).

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
    max_short_tokens: int = 0  # a longer <short> response is wrong (0: no limit)

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
    length: int = 0,
) -> float:
    """The reward of one response of `mode` ("short" or "think") and `length` tokens, given the
    grader's verdicts."""
    _check_mode(mode)
    args = (np.array([mode]), [correct], [parsed], [truncated_think], cfg, [length])
    return float(thinkless_rewards(*args)[0])


def thinkless_rewards(
    modes: np.ndarray,
    correct: np.ndarray,
    parsed: np.ndarray,
    truncated_think: np.ndarray,
    cfg: RewardConfig = RewardConfig(),
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """`thinkless_reward` over arrays of equal shape; `modes` holds "short"/"think" strings,
    `lengths` the responses' token counts (needed only with `cfg.max_short_tokens`).

    Returns float32 rewards of the same shape.
    """
    modes = np.asarray(modes)
    bad = ~np.isin(modes, MODES)
    if bad.any():
        raise ValueError(f"reward modes must be in {MODES}, got {sorted(set(modes[bad].tolist()))}")
    think = modes == "think"
    correct, parsed, truncated = (np.asarray(x, bool) for x in (correct, parsed, truncated_think))
    failed = ~parsed | ~correct | (think & truncated)
    if cfg.max_short_tokens:
        if lengths is None:
            raise ValueError("max_short_tokens is set: give the responses' lengths")
        failed |= ~think & (np.asarray(lengths) > cfg.max_short_tokens)
    ok_reward = np.where(think, cfg.correct_think, cfg.correct_short)
    return np.where(failed, cfg.wrong, ok_reward).astype(np.float32)
