"""RL rollouts: G samples per prompt from the compiled sampler, graded, rewarded, as arrays.

    prompts --jaxthink.generate(mode, GenerateConfig(n=G, ...)): the slot engine--> Generations
      --grade (answer after </think> or <short>) + Thinkless reward table--> rewards
      --> Rollout: left-padded prompts [B, P], right-padded responses [B, R] and their mask

The G samples of a prompt are contiguous rows (what `group_advantages` expects). The rollout's
arrays are the `Generations`' own (the prompt ids each sample was sampled after, its response
tokens), so the log-probs are of exactly the sequences that were sampled. A `<think>` response
with no `</think>` (cut by max_new_tokens) counts as truncated and is rewarded as wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxthink.data.records import question_of
from jaxthink.decode.generate import GenerateConfig, Generation, Generations, generate
from jaxthink.eval.grade import grade_many
from jaxthink.policies.modes import ModeOptions
from jaxthink.rl.config import RolloutConfig
from jaxthink.rl.rewards import RewardConfig, thinkless_rewards
from jaxthink.tokenizer import control_tokens

MIN_WIDTH = 32  # response widths are powers of two from here, so few shapes ever compile


@dataclasses.dataclass
class Rollout:
    """One step's samples as host arrays; rows are prompts x G, a prompt's samples contiguous."""

    prompt_tokens: np.ndarray  # [B, P] int32, left-padded
    prompt_valid: np.ndarray  # [B, P] bool
    response_tokens: np.ndarray  # [B, R] int32, right-padded; t = 0 is the control token
    response_mask: np.ndarray  # [B, R] float32, 1 on every generated token (EOS included)
    rewards: np.ndarray  # [B] float32
    think: np.ndarray  # [B] bool: the sample chose (or was in) thinking mode
    correct: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool: thinking never closed with </think>
    lengths: np.ndarray  # [B] int32: generated tokens
    generations: Sequence[Generation]  # the sampler's view of each row (text, log-probs, ...)

    @property
    def rows(self) -> int:
        return len(self.rewards)


def sample(
    model, tokenizer, questions: list[str], cfg: RolloutConfig, seed: int, options: ModeOptions
) -> Generations:
    """`cfg.group_size` samples per question, a question's samples next to each other, with the
    prompt ids each was sampled after."""
    settings = GenerateConfig(
        n=cfg.group_size,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=seed,
        slots=cfg.slots or None,
    )
    return generate(model, tokenizer, questions, cfg.mode, settings, options=options)


def score(
    generations: Sequence[Generation],
    golds: list[str],
    lengths: np.ndarray,
    end_think: int,
    cfg: RewardConfig,
):
    """(rewards, think, correct, truncated) arrays [B] of graded generations of `lengths` tokens."""
    verdicts = grade_many([g.text for g in generations], golds)
    think = np.array([g.chosen_mode == "think" for g in generations])
    truncated = np.array([t and end_think not in g.token_ids for g, t in zip(generations, think)])
    correct = np.array([v.correct for v in verdicts])
    parsed = np.array([v.parsed for v in verdicts])
    modes = np.where(think, "think", "short")
    rewards = thinkless_rewards(modes, correct, parsed, truncated, cfg, lengths)
    return rewards, think, correct, truncated


def response_width(longest: int, max_new_tokens: int) -> int:
    """The padded response width: the next power of two >= `longest` (at least MIN_WIDTH), but
    never past max_new_tokens rounded up to MIN_WIDTH: at most log2 shapes per run."""
    cap = -(-max_new_tokens // MIN_WIDTH) * MIN_WIDTH
    return min(max(MIN_WIDTH, 1 << (max(longest, 1) - 1).bit_length()), cap)


def right_pad(rows: list[list[int]], pad_id: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded tokens [B, width] and mask [B, width] (float32)."""
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros(tokens.shape, np.float32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        mask[i, : len(row)] = 1.0
    return tokens, mask


def collect(
    model, tokenizer, records: list[dict], cfg: RolloutConfig, reward: RewardConfig, seed: int
) -> Rollout:
    """Samples, grades and rewards one step's prompts (records with a question and an answer)."""
    questions = [question_of(r) for r in records]
    golds = [str(r["answer"]) for r in records for _ in range(cfg.group_size)]
    options = ModeOptions.for_model(model.cfg)  # the sampler and the prompt ids share them
    generations = sample(model, tokenizer, questions, cfg, seed, options)
    lengths = generations.lengths
    end_think = control_tokens(tokenizer).end_think
    rewards, think, correct, truncated = score(generations, golds, lengths, end_think, reward)
    width = response_width(int(lengths.max()), cfg.max_new_tokens)
    responses, mask = generations.responses(width)
    return Rollout(
        generations.prompt_tokens,
        generations.prompt_valid,
        responses,
        mask,
        rewards,
        think,
        correct,
        truncated,
        lengths,
        generations,
    )


def rollout_metrics(r: Rollout) -> dict[str, float]:
    """Reward, think ratio, accuracy and mean length per mode, truncation rate."""
    out = {
        "reward": float(r.rewards.mean()),
        "accuracy": float(r.correct.mean()),
        "think_ratio": float(r.think.mean()),
        "truncated": float(r.truncated.mean()),
        "length": float(r.lengths.mean()),
    }
    for name, rows in (("short", ~r.think), ("think", r.think)):
        if rows.any():
            out[f"accuracy_{name}"] = float(r.correct[rows].mean())
            out[f"length_{name}"] = float(r.lengths[rows].mean())
            out[f"reward_{name}"] = float(r.rewards[rows].mean())
    return out
