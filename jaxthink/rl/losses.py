"""Policy-gradient losses for reinforcement learning of when to think: DeGRPO and vanilla GRPO.

Conventions (what the sampler and trainer produce). A batch of B responses padded to length T;
position t = 0 of each row is its control token (`<short>` or `<think>`), positions 1..T_i the
response tokens. `logp`, `old_logp`, `ref_logp` [B, T] are log-probs of the taken tokens (already
computed from logits / temperature), `mask` [B, T] is 1 on real tokens including the control token,
`advantages` [B] (one per response) or [B, T] (per token), `entropy` [B, T] the policy's per-token
entropy. T_i = sum_{t>=1} mask[i, t].

Per-token clipped surrogate (PPO/GRPO), r = exp(logp - old_logp):
    l_{i,t} = max(-A_i r_{i,t}, -A_i clip(r_{i,t}, 1 - eps, 1 + eps))
Aggregation (Thinkless, arXiv 2505.13379, section 3.2, and methods.md section 2):
    degrpo, normalization="paper":      mean_i[ alpha l_{i,0} + (1/T_i) sum_{t>=1} l_{i,t} ]
    degrpo, normalization="token_mean": alpha mean_i(l_{i,0}) + sum_{i,t>=1} l_{i,t} / sum_i T_i
                                        (the VainF/Thinkless reference code)
    grpo:                               mean_i[ 1/(T_i+1) sum_{t>=0} l_{i,t} ]
DeGRPO decouples the one mode-choosing control token from the response tokens: its gradient is
alpha-scaled and independent of the response length. Under GRPO it is diluted by 1/(T_i+1), and
more so for long `<think>` answers, which is what makes GRPO collapse to one mode.
Plus `kl_coef` * the k3 KL to the reference model and minus `entropy_coef` * the entropy:
  - KL is aggregated with the response term's weights. Under DeGRPO that excludes the control
    token (t = 0), so the mode decision is driven only by the alpha-scaled surrogate; under GRPO
    the response term covers every token, control included, each weighted 1/(T_i+1).
  - entropy is a masked token mean over every real token, control token included.

Gradient accumulation. Every term is (unreduced weighted sum) / (denominator). The weights are
per-sequence (1/T_i, 1/(T_i+1)) so they stay inside the sum; denominators are counts (sequences,
response tokens, tokens) that depend on the masks only, never on parameters. To get exactly the
full-batch loss and gradient from micro-batches:

    den = sum over micro-batches of loss_denominators(mask_k, cfg)   # cheap, no model call
    for each micro-batch k:
        loss_k, metrics_k = policy_loss(..., cfg, denominators=den)
        grads += jax.grad(loss_k)                                    # sum, do not average
    # sum_k loss_k == policy_loss(full batch)[0], and the summed grads are its gradient.

Exact batch-level diagnostics: sum `loss_terms(...)` over micro-batches with `merge_terms`, then
`summarize_terms`. The same loss as a sum of per-token shares: `token_loss` with
`token_coefficients(mask, cfg, den)`; each share depends on its own token's log-prob and entropy
only, which is what lets the trainer take the loss's gradient a chunk of logits at a time.

Rows whose mask is all zero (batch padding) contribute nothing and are not counted as sequences.
A response that is only its control token (T_i = 0) is handled: its response weight is guarded,
it adds nothing to the response term.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("degrpo", "grpo")
NORMALIZATIONS = ("paper", "token_mean")
# logp - old_logp and ref - logp are clamped to [-20, 20] before exp so neither can overflow
# (nor give inf * 0 = nan gradients). For the KL this changes nothing: k3 > KL_LIMIT once |d| > 12.
LOG_RATIO_LIMIT = 20.0
KL_LIMIT = 10.0  # k3 KL clamped to [-10, 10], as the reference "low_var_kl"
LOSS_TERMS = ("control", "response", "kl", "entropy")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The RL loss. Defaults are the Thinkless reference run (methods.md section 2).

    kind: "degrpo" (decoupled control token) or "grpo" (every token weighted 1/(T_i+1)).
    alpha: weight of the control-token term under DeGRPO (0.001 in the reference run).
    normalization: DeGRPO response term, "paper" (per-sequence 1/T_i, averaged over sequences)
        or "token_mean" (sum over the batch / sum_i T_i, as the reference code). GRPO ignores it.
    clip_eps: PPO clip range of the ratio, [1 - eps, 1 + eps] (0.2).
    kl_coef: weight of the k3 KL to the reference model (0.001); unused without `ref_logp`.
    entropy_coef: weight of the entropy bonus (0.001), subtracted; unused without `entropy`.
    """

    kind: str = "degrpo"
    alpha: float = 0.001
    normalization: str = "paper"
    clip_eps: float = 0.2
    kl_coef: float = 0.001
    entropy_coef: float = 0.001

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"LossConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"LossConfig.normalization must be one of {NORMALIZATIONS}, "
                f"got {self.normalization!r}"
            )
        if not 0.0 < self.clip_eps < 1.0:
            raise ValueError(f"LossConfig.clip_eps must be in (0, 1), got {self.clip_eps}")

    @property
    def control_coef(self) -> float:
        """Weight of the control term: alpha under DeGRPO; 1 under GRPO (1/(T_i+1) is per token)."""
        return self.alpha if self.kind == "degrpo" else 1.0


class Term(NamedTuple):
    """One loss term or diagnostic as an unreduced weighted sum and its denominator."""

    total: jax.Array
    count: jax.Array

    @property
    def mean(self) -> jax.Array:
        return self.total / jnp.maximum(self.count, 1.0)


def clipped_surrogate(
    logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, clip_eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token loss l [B, T], ratio r [B, T], and where the clip is active [B, T] (bool).

    The clip is active where the clipped branch wins the max, (A > 0, r > 1 + eps) or
    (A < 0, r < 1 - eps): there the gradient is zero. log r is clamped to [-20, 20] first, a
    guard against overflow that only matters for a policy e^20 times off its sampler.
    """
    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    adv = advantages if advantages.ndim == 2 else advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return jnp.maximum(unclipped, clipped), ratio, clipped > unclipped


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """k3 estimator of KL(policy || ref) per token: exp(d) - d - 1, d = ref - logp; in [0, 10]."""
    d = jnp.clip(ref_logp - logp, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return jnp.clip(jnp.exp(d) - d - 1.0, -KL_LIMIT, KL_LIMIT)


def _token_weights(mask: jax.Array, cfg: LossConfig) -> dict[str, jax.Array]:
    """Per-token weights [B, T] of the control, response and KL numerators."""
    is_control = (jnp.arange(mask.shape[1]) == 0)[None, :]
    control = jnp.where(is_control, mask, 0.0)
    response = jnp.where(is_control, 0.0, mask)
    if cfg.kind == "grpo":
        per_seq = 1.0 / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)  # 1/(T_i + 1)
        control, response = control * per_seq, response * per_seq
        return {"control": control, "response": response, "kl": control + response}
    if cfg.normalization == "paper":
        response = response / jnp.maximum(response.sum(axis=1, keepdims=True), 1.0)  # 1/T_i
    return {"control": control, "response": response, "kl": response}


def loss_denominators(mask: jax.Array, cfg: LossConfig) -> dict[str, jax.Array]:
    """Denominators of the loss terms; depend on `mask` only, so they add across micro-batches."""
    mask = jnp.asarray(mask, jnp.float32)
    num_seqs = mask[:, 0].sum()
    token_mean = cfg.kind == "degrpo" and cfg.normalization == "token_mean"
    response = mask[:, 1:].sum() if token_mean else num_seqs
    return {"control": num_seqs, "response": response, "kl": response, "entropy": mask.sum()}


def _check_shapes(shape: tuple[int, ...], **arrays) -> None:
    if len(shape) != 2:
        raise ValueError(f"mask must be [B, T], got shape {shape}")
    for name, x in arrays.items():
        if x is not None and jnp.shape(x) != shape:
            raise ValueError(
                f"{name} must have the mask's shape [B, T] = {shape}, got {jnp.shape(x)}"
            )


def loss_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: LossConfig,
    ref_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
) -> dict[str, Term]:
    """The loss terms (LOSS_TERMS) and diagnostics of a (micro-)batch as `Term`s (sum, count).

    Diagnostics are masked token means over every real token: "clip_frac", "ratio", "kl_mean",
    "entropy_mean" (equal to the "entropy" term unless its denominator is replaced).
    Without `ref_logp` the KL is zero; without `entropy` the entropy is zero.
    """
    mask = jnp.asarray(mask, jnp.float32)
    _check_shapes(mask.shape, logp=logp, old_logp=old_logp, ref_logp=ref_logp, entropy=entropy)
    if jnp.shape(advantages) not in (mask.shape[:1], mask.shape):
        raise ValueError(
            f"advantages must have shape [B] = {mask.shape[:1]} (one per response) or "
            f"[B, T] = {mask.shape} (per token), got {jnp.shape(advantages)}"
        )
    valid = mask > 0

    def real(x):  # padding may hold anything (even -inf): zero it before any arithmetic
        return jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)

    logp = real(logp)
    per_token, ratio, clip_active = clipped_surrogate(
        logp, real(old_logp), jnp.asarray(advantages, jnp.float32), cfg.clip_eps
    )
    kl = k3_kl(logp, real(ref_logp)) if ref_logp is not None else jnp.zeros_like(logp)
    ent = real(entropy) if entropy is not None else jnp.zeros_like(logp)

    weights = _token_weights(mask, cfg)
    den = loss_denominators(mask, cfg)
    num_tokens = den["entropy"]
    return {
        "control": Term((weights["control"] * per_token).sum(), den["control"]),
        "response": Term((weights["response"] * per_token).sum(), den["response"]),
        "kl": Term((weights["kl"] * kl).sum(), den["kl"]),
        "entropy": Term((mask * ent).sum(), num_tokens),
        "clip_frac": Term((mask * clip_active).sum(), num_tokens),
        "ratio": Term((mask * ratio).sum(), num_tokens),
        "kl_mean": Term((mask * kl).sum(), num_tokens),
        "entropy_mean": Term((mask * ent).sum(), num_tokens),
    }


def token_coefficients(
    mask: jax.Array, cfg: LossConfig, denominators: dict[str, jax.Array]
) -> dict[str, jax.Array]:
    """Per-token weights [B, T] of the loss as a sum over tokens (see `token_loss`): the
    clipped surrogate's ("surrogate": control and response weights over their denominators),
    the KL's and the entropy's, the coefficients folded in. Depend on the mask only."""
    mask = jnp.asarray(mask, jnp.float32)
    w = _token_weights(mask, cfg)
    den = {k: jnp.maximum(jnp.asarray(denominators[k], jnp.float32), 1.0) for k in LOSS_TERMS}
    return {
        "surrogate": cfg.control_coef * w["control"] / den["control"]
        + w["response"] / den["response"],
        "kl": cfg.kl_coef * w["kl"] / den["kl"],
        "entropy": -cfg.entropy_coef * mask / den["entropy"],
    }


def token_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    coefficients: dict[str, jax.Array],
    cfg: LossConfig,
    ref_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
) -> jax.Array:
    """Each token's share of the loss, elementwise: surrogate * l + kl * k3 + entropy * H with
    `token_coefficients`. Summed over a batch it is `combine_terms` of its `loss_terms` with
    the same denominators, and each token's term depends on that token alone, so its
    derivatives can be taken a chunk of positions at a time (jaxthink.runs.logprobs).
    Advantages are [B] or any shape that broadcasts against the mask's."""
    valid = jnp.asarray(mask) > 0
    real = lambda x: jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)
    logp = real(logp)
    adv = jnp.asarray(advantages, jnp.float32)
    per_token = clipped_surrogate(logp, real(old_logp), adv, cfg.clip_eps)[0]
    out = coefficients["surrogate"] * per_token
    if ref_logp is not None:
        out = out + coefficients["kl"] * k3_kl(logp, real(ref_logp))
    if entropy is not None:
        out = out + coefficients["entropy"] * real(entropy)
    return out


def merge_terms(*parts: dict) -> dict:
    """Add micro-batches' `loss_terms` (sums and counts) or `loss_denominators`: their union's."""
    return functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), parts)


def with_denominators(terms: dict[str, Term], denominators: dict[str, jax.Array]) -> dict:
    """`terms` with the loss terms' counts replaced, e.g. by the whole batch's denominators."""
    out = dict(terms)
    for name in LOSS_TERMS:
        out[name] = Term(terms[name].total, jnp.asarray(denominators[name], jnp.float32))
    return out


def combine_terms(terms: dict[str, Term], cfg: LossConfig) -> jax.Array:
    """The scalar loss: control + response + kl_coef * KL - entropy_coef * entropy."""
    return (
        cfg.control_coef * terms["control"].mean
        + terms["response"].mean
        + cfg.kl_coef * terms["kl"].mean
        - cfg.entropy_coef * terms["entropy"].mean
    )


def summarize_terms(terms: dict[str, Term], cfg: LossConfig) -> dict[str, jax.Array]:
    """Metrics: the loss, its parts, and the diagnostics.

    loss = control_term + response_term + kl_coef * kl_term - entropy_coef * entropy_term;
    control_term includes alpha under DeGRPO. kl_term is the KL as aggregated in the loss,
    kl_mean the plain masked token mean.
    """
    return {
        "loss": combine_terms(terms, cfg),
        "control_term": cfg.control_coef * terms["control"].mean,
        "response_term": terms["response"].mean,
        "kl_term": terms["kl"].mean,
        "entropy_term": terms["entropy"].mean,
        "clip_frac": terms["clip_frac"].mean,
        "ratio_mean": terms["ratio"].mean,
        "kl_mean": terms["kl_mean"].mean,
        "entropy_mean": terms["entropy_mean"].mean,
    }


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: LossConfig,
    ref_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
    denominators: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, metrics) of a batch; jit with `cfg` static.

    With `denominators` (the whole batch's `loss_denominators`), the loss and the *_term metrics
    are this micro-batch's shares: summed over micro-batches they give the full-batch values.
    The other metrics are this micro-batch's own token means.
    """
    terms = loss_terms(logp, old_logp, advantages, mask, cfg, ref_logp, entropy)
    if denominators is not None:
        terms = with_denominators(terms, denominators)
    metrics = summarize_terms(terms, cfg)
    return metrics["loss"], metrics
