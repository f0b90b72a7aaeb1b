"""What the multi-device training scripts share: a tiny model, one SFT batch, one RL mini-batch.

The model has 8 heads over 8 kv heads (head_dim 4) and an MLP of 64, so every axis the training
rules shard divides a mesh axis of up to 8 devices. Everything is deterministic from fixed seeds,
so separate processes build the same model and data.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxthink.data.arithmetic import generate_problems
from jaxthink.decode.sampler import left_pad
from jaxthink.rl import LossConfig
from jaxthink.rl.config import RLConfig, RolloutConfig
from jaxthink.rl.rollout import right_pad
from jaxthink.runs.config import ModelSpec, OptimConfig
from jaxthink.runs.model import build_model
from jaxthink.sft.data import sft_batches

SPEC = ModelSpec(
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=8,
    num_kv_heads=8,
    tie_word_embeddings=False,
)
# eps well above the gradients' rounding differences: at step 1 Adam's update is g / (|g| + eps), which
# for gradients near eps would magnify float noise into the parameters.
OPTIM = OptimConfig(lr=1e-3, eps=1e-3, schedule="constant", warmup_ratio=0.0, weight_decay=0.1)
SFT_ROWS, SEQ_LEN = 8, 48
RL_ROWS, MICRO_ROWS = 16, 8  # one mini-batch of two micro-batches
RL = RLConfig(
    rollout=RolloutConfig(group_size=8, prompts_per_step=2, max_new_tokens=8, temperature=0.7),
    loss=LossConfig("degrpo", alpha=0.3, kl_coef=0.2, entropy_coef=0.05),
    optim=OPTIM,
    mini_batches=1,
    micro_batch_size=MICRO_ROWS,
    steps=1,
)


def tiny_model(directory, mesh=None):
    """(graphdef, params, tokenizer): the fresh tiny model, on `mesh` by the training rules."""
    model, tokenizer, _ = build_model(SPEC, directory, mesh)
    graphdef, params = nnx.split(model)
    return graphdef, params, tokenizer


def sft_batch(tokenizer, shard=(0, 1)) -> dict[str, np.ndarray]:
    """Share `shard` of the first packed SFT batch of SFT_ROWS rows."""
    records = generate_problems(64, (1,), seed=3)
    stream = sft_batches(
        tokenizer, records, seq_len=SEQ_LEN, batch_size=SFT_ROWS, seed=0, prefetch=0, shard=shard
    )
    return next(iter(stream))


def rl_arrays(tokenizer, seed: int = 0) -> dict[str, np.ndarray]:
    """RL_ROWS rows of real prompts and random responses (ragged lengths, control token first)
    with varied advantages: what `training_arrays` gives the trainer."""
    rng = np.random.default_rng(seed)
    questions = ["1+2", "34+5", "7-9", "8+8"]
    prompts = [tokenizer.encode(f"Q: {questions[i % 4]}\nA:") for i in range(RL_ROWS)]
    control = [tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "<short>")]
    lengths = rng.integers(1, 20, RL_ROWS)
    responses = [
        [control[i % 2]] + rng.integers(6, 100, n - 1).tolist() for i, n in enumerate(lengths)
    ]
    prompt_tokens, prompt_valid = left_pad(prompts, 0)
    response_tokens, mask = right_pad(responses, 0, 32)
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_valid": prompt_valid,
        "response_tokens": response_tokens,
        "response_mask": mask,
        "advantages": rng.normal(size=RL_ROWS).astype(np.float32),
    }


def with_old_and_ref(arrays: dict, old_logp: np.ndarray, seed: int = 1) -> dict:
    """`arrays` with the old log-probs and reference log-probs a little off them."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.1, old_logp.shape).astype(np.float32) * arrays["response_mask"]
    return {**arrays, "old_logp": old_logp, "ref_logp": old_logp + noise}


def max_diff(a, b) -> float:
    """Largest absolute difference between two pytrees of arrays (or two `flat` dicts)."""
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs))


def flat(tree) -> dict[str, np.ndarray]:
    """{path: host array} of a pytree (what np.savez stores and the checks compare)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}
