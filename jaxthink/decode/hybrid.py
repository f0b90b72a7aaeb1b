"""Hybrid decoding: a thinking model decides when and how to steer a base model, token by token.

The published algorithm (methods.md section 3), greedy, for each new token:
  1. the thinking model reads the sequence: its residual stream after the SAE's block at the
     last position, centred and normalised, picks the latent k = argmax of the SAE's `pre`; its
     logits give p_think and the thinking model's greedy token;
  2. the base model reads the sequence unsteered: if its greedy token equals the thinking
     model's, that token is emitted;
  3. otherwise the base model is run with c * (bias + v_k) added after its steering block at the
     last position, for every coefficient c of the grid, each giving a greedy candidate;
  4. the candidate that p_think rates most likely is emitted (the first one on ties).
Ablations: `bias_only` steers with c * bias (no latent), `random_latent` draws k uniformly.

Here both models keep a KV cache, which is exact for the one-position window: steering the last
position changes nothing before it, so the caches hold the unsteered sequence. One jitted prefill,
then one jitted `lax.while_loop` whose step feeds the last token to the thinking model (capturing
the SAE block) and to the base model unsteered (capturing the steering block), both appending it
to their caches. Only when some row's greedy tokens differ does the step also finish the base
model's pass C more ways: the captured residual stream plus c_j * (bias + v_k), through the
blocks after the steering block, as C alternatives for the same position (`forward_alternatives`,
which reads the cache without writing) - all coefficients in one call. At batch 1 on CPU the
thinking model decodes on its weights laid out for a single row (`sampler.for_decoding`); the
base model keeps its own, which its C-row candidates pass runs faster on.
`jaxthink.decode.hybrid_reference` is the uncached algorithm, kept as the specification this loop
must reproduce token for token.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxthink.decode.generate import Generation, row_key
from jaxthink.decode.sampler import (
    for_decoding,
    left_pad,
    output_matrix,
    params_dtype,
    self_certainty,
)
from jaxthink.models.qwen import Steering, forward_alternatives, forward_cached, init_cache
from jaxthink.steer.sae import SAEParams, preactivations
from jaxthink.steer.sentences import center_and_normalize
from jaxthink.steer.vectors import SteeringVectors
from jaxthink.tokenizer import (
    control_tokens,
    encode_prompts,
    format_prompt,
    thinking_prefix_in_prompt,
)

Array = jax.Array
ABLATIONS = ("none", "bias_only", "random_latent")
NONE, BIAS_ONLY, RANDOM_LATENT = range(3)
DEFAULT_COEFFICIENTS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1, 0.2, ..., 1.0
TRACE_COUNT = {"prefill": 0, "decode": 0}


@struct.dataclass
class HybridParams:
    """The arrays of the steering file plus per-row PRNG keys (random-latent ablation)."""

    sae: SAEParams
    sae_mean: Array  # [E_thinking]
    bias: Array  # [E_base]
    vectors: Array  # [n, E_base]
    coefficients: Array  # [C]
    ablation: Array  # scalar int32: index into ABLATIONS (data, so no recompiling)
    keys: Array  # [B] PRNG keys


@struct.dataclass
class HybridState:
    step: Array  # scalar int32
    think_cache: object
    base_cache: object
    feed_think: Array  # [B] the token each model reads next (they differ only at step 0)
    feed_base: Array  # [B]
    tokens: Array  # [B, N]
    think_logprobs: Array  # [B, N] log p_think of each emitted token
    steered: Array  # [B, N] bool: the two greedy tokens differed
    latents: Array  # [B, N] int32 latent picked at each token
    coefficient: Array  # [B, N] int32 index of the emitted candidate's coefficient, -1 unsteered
    done: Array  # [B]
    lengths: Array  # [B]
    certainty_sum: Array  # [B] self-certainty of the thinking model, summed over tokens


def random_latent(key: Array, step: Array, n_latents: int) -> Array:
    """The random-latent ablation's draw for one row at one step (shared with the reference)."""
    return jax.random.randint(jax.random.fold_in(key, step), (), 0, n_latents)


def pick_latents(hp: HybridParams, hidden: Array, step: Array) -> Array:
    """[B] latent per row from the thinking model's residual stream `hidden` [B, E] (or drawn at
    random under the random-latent ablation)."""
    x, _ = center_and_normalize(hidden.astype(jnp.float32), hp.sae_mean)
    named = jnp.argmax(preactivations(hp.sae, x), axis=-1)
    n = hp.vectors.shape[0]
    drawn = jax.vmap(lambda key: random_latent(key, step, n))(hp.keys)
    return jnp.where(hp.ablation == RANDOM_LATENT, drawn, named).astype(jnp.int32)


def directions(hp: HybridParams, latent: Array) -> Array:
    """[B, E] steering direction per row: bias + v_k, or the bias alone (bias-only ablation)."""
    category = jnp.where(hp.ablation == BIAS_ONLY, 0.0, 1.0) * hp.vectors[latent]
    return hp.bias + category


def choose(base_greedy, steered, candidates, think_logp) -> tuple[Array, Array]:
    """(token, coefficient index or -1) per row: the base model's greedy token [B] where the two
    models agree, else the candidate [B, C] that log p_think [B, V] rates highest (the first on
    ties)."""
    rated = jnp.take_along_axis(think_logp, candidates, axis=1)
    best = jnp.argmax(rated, axis=1).astype(jnp.int32)  # first maximum
    picked = jnp.take_along_axis(candidates, best[:, None], axis=1)[:, 0]
    return jnp.where(steered, picked, base_greedy), jnp.where(steered, best, -1)


@functools.partial(jax.jit, static_argnames=("think_def", "base_def", "max_new"))
def prefill(think_def, think_params, base_def, base_params, think_prompt, base_prompt,
            max_new: int):  # fmt: skip
    """Caches of every prompt token but the last (the loop's first step reads that one)."""
    TRACE_COUNT["prefill"] += 1
    caches = []
    for graphdef, params, (tokens, valid) in (
        (think_def, think_params, think_prompt),
        (base_def, base_params, base_prompt),
    ):
        model = nnx.merge(graphdef, params)
        b, p = tokens.shape
        cache = init_cache(model.cfg, b, p - 1 + max_new, params_dtype(params))
        _, cache = forward_cached(model, tokens[:, :-1], valid[:, :-1], cache, last_only=True)
        caches.append(cache)
    b = think_prompt[0].shape[0]
    zeros = lambda dtype: jnp.zeros((b, max_new), dtype)
    return HybridState(
        step=jnp.zeros((), jnp.int32),
        think_cache=caches[0],
        base_cache=caches[1],
        feed_think=think_prompt[0][:, -1],
        feed_base=base_prompt[0][:, -1],
        tokens=zeros(jnp.int32),
        think_logprobs=zeros(jnp.float32),
        steered=zeros(bool),
        latents=zeros(jnp.int32),
        coefficient=jnp.full((b, max_new), -1, jnp.int32),
        done=jnp.zeros((b,), bool),
        lengths=jnp.zeros((b,), jnp.int32),
        certainty_sum=jnp.zeros((b,), jnp.float32),
    )


@functools.partial(
    jax.jit,
    static_argnames=("think_def", "base_def", "sae_layer", "steer_layer"),
    donate_argnames=("state",),
)
def decode(think_def, think_params, base_def, base_params, state: HybridState,
           hp: HybridParams, eos: Array, pad_id: Array, sae_layer: int,
           steer_layer: int) -> HybridState:  # fmt: skip
    """The hybrid loop: one token per row per step until every row has ended or N are made."""
    TRACE_COUNT["decode"] += 1
    thinking, base = nnx.merge(think_def, think_params), nnx.merge(base_def, base_params)
    b, max_new = state.tokens.shape
    c = hp.coefficients.shape[0]
    think_head, base_head = output_matrix(thinking, b), output_matrix(base, b)
    alternatives_head = output_matrix(base, b * c)
    scale = jnp.broadcast_to(hp.coefficients, (b, c))

    def body(s: HybridState) -> HybridState:
        active = ~s.done
        think_logits, think_cache, hidden = forward_cached(
            thinking, s.feed_think[:, None], active[:, None], s.think_cache,
            head=think_head, capture_layer=sae_layer,
        )  # fmt: skip
        think_logits = think_logits[:, 0].astype(jnp.float32)
        latent = pick_latents(hp, hidden[:, 0], s.step)
        base_logits, base_cache, residual = forward_cached(
            base, s.feed_base[:, None], active[:, None], s.base_cache, head=base_head,
            capture_layer=steer_layer,
        )  # fmt: skip
        base_greedy = jnp.argmax(base_logits[:, 0], axis=-1).astype(jnp.int32)
        steered = (base_greedy != jnp.argmax(think_logits, axis=-1)) & active

        def candidates():  # the fed token's pass, finished once per coefficient
            rewound = base_cache.replace(index=s.base_cache.index, pos=s.base_cache.pos)
            steering = Steering(directions(hp, latent), scale, steer_layer)
            logits = forward_alternatives(
                base, residual + steering.delta(residual.dtype),
                jnp.repeat(active[:, None], c, axis=1), rewound, after_layer=steer_layer,
                head=alternatives_head,
            )  # fmt: skip
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)

        unused = lambda: jnp.zeros((b, c), jnp.int32)
        logp = jax.nn.log_softmax(think_logits, axis=-1)
        token, coefficient = choose(
            base_greedy, steered, jax.lax.cond(jnp.any(steered), candidates, unused), logp
        )
        token = jnp.where(active, token, pad_id)
        token_logp = jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0]
        col = s.step
        return HybridState(
            step=s.step + 1,
            think_cache=think_cache,
            base_cache=base_cache,
            feed_think=token,
            feed_base=token,
            tokens=s.tokens.at[:, col].set(token),
            think_logprobs=s.think_logprobs.at[:, col].set(jnp.where(active, token_logp, 0.0)),
            steered=s.steered.at[:, col].set(steered),
            latents=s.latents.at[:, col].set(jnp.where(active, latent, -1)),
            coefficient=s.coefficient.at[:, col].set(jnp.where(active, coefficient, -1)),
            done=s.done | (eos[token] & active) | (s.step + 1 >= max_new),
            lengths=s.lengths + active,
            certainty_sum=s.certainty_sum + jnp.where(active, self_certainty(think_logits), 0.0),
        )

    cond = lambda s: (s.step < max_new) & ~jnp.all(s.done)
    return jax.lax.while_loop(cond, body, state)


def hybrid_params(steering: SteeringVectors, coefficients, ablation, keys, dtype) -> HybridParams:
    as_f32 = lambda x: jnp.asarray(x, jnp.float32)
    return HybridParams(
        sae=SAEParams(*(as_f32(x) for x in steering.sae)),
        sae_mean=as_f32(steering.sae_mean),
        bias=jnp.asarray(steering.bias, dtype),
        vectors=jnp.asarray(steering.vectors, dtype),
        coefficients=as_f32(coefficients),
        ablation=jnp.int32(ABLATIONS.index(ablation)),
        keys=keys,
    )


def run_hybrid(
    thinking, base, think_prompts: list[list[int]], base_prompts: list[list[int]],
    steering: SteeringVectors, *, coefficients=DEFAULT_COEFFICIENTS, max_new_tokens: int,
    eos_ids: Sequence[int], ablation: str = "none", keys: Array | None = None, pad_id: int = 0,
    thinking_decoding=None,
) -> HybridState:  # fmt: skip
    """The cached hybrid on token-id prompts (one list per row, for each model); host arrays.

    `keys` [B] are the rows' PRNG keys for the random-latent ablation (default: row r draws from
    fold_in(key(0), r)). The loop runs the thinking model on `thinking_decoding` = (graphdef,
    params) if given, else on `for_decoding`'s. No checks here beyond shapes: `hybrid_generate`
    validates a request.
    """
    think_def, think_params = nnx.split(thinking)
    base_def, base_params = nnx.split(base)
    if keys is None:
        keys = jnp.stack(
            [jax.random.fold_in(jax.random.key(0), r) for r in range(len(think_prompts))]
        )
    hp = hybrid_params(steering, coefficients, ablation, keys, params_dtype(base_params))
    vocab = thinking.cfg.vocab_size
    eos = jnp.zeros(vocab, bool).at[jnp.asarray(list(eos_ids), jnp.int32)].set(True)
    state = prefill(
        think_def, think_params, base_def, base_params, left_pad(think_prompts, pad_id),
        left_pad(base_prompts, pad_id), max_new_tokens,
    )  # fmt: skip
    thinking_decoding = thinking_decoding or for_decoding(
        think_def, think_params, len(think_prompts)
    )
    state = decode(
        *thinking_decoding, base_def, base_params, state, hp, eos, jnp.int32(pad_id),
        steering.sae_layer, steering.layer,
    )  # fmt: skip
    return jax.device_get(state.replace(think_cache=None, base_cache=None))


# ---------------------------------------------------------------------------------------------
# The front end: prompts in, one `HybridGeneration` per prompt out.


@dataclasses.dataclass
class HybridGeneration(Generation):
    """A hybrid sample: a `Generation` plus which tokens were steered and how."""

    steered_tokens: int  # tokens where the base and thinking greedy choices differed
    steered_fraction: float
    latents: list[int]  # the latent picked at each token
    coefficients: list[float | None]  # the emitted candidate's coefficient, None if unsteered


def thinking_opening(tokenizer) -> str:
    """Text that opens the thinking block after the chat prompt, unless the template does.

    A Thinkless-style vocabulary (with `<short>`) starts its trace right after `<think>`; others
    (Qwen3) write `<think>` and a newline; a vocabulary without `<think>` gets nothing.
    """
    control = control_tokens(tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if control.think is None or (has_template and thinking_prefix_in_prompt(tokenizer)):
        return ""
    return "<think>" if control.short is not None else "<think>\n"


def check_pair(thinking, base, tokenizer, base_tokenizer, steering: SteeringVectors) -> None:
    """Raises unless the two models share a vocabulary and the steering file fits both."""
    if thinking.cfg.vocab_size != base.cfg.vocab_size:
        raise ValueError(
            f"the thinking model's vocabulary has {thinking.cfg.vocab_size} entries and the base "
            f"model's {base.cfg.vocab_size}; hybrid decoding passes token ids between the two, so "
            "they need the same vocabulary"
        )
    if base_tokenizer is not tokenizer:
        think_vocab, base_vocab = tokenizer.get_vocab(), base_tokenizer.get_vocab()
        for token in think_vocab.keys() & base_vocab.keys():
            if think_vocab[token] != base_vocab[token]:
                raise ValueError(
                    f"the tokenizers disagree: {token!r} is id {think_vocab[token]} for the "
                    f"thinking model and {base_vocab[token]} for the base model; hybrid decoding "
                    "needs the same vocabulary"
                )
    checks = [
        ("steering layer", steering.layer, base.cfg.num_layers, "base"),
        ("SAE layer", steering.sae_layer, thinking.cfg.num_layers, "thinking"),
    ]
    for what, layer, blocks, which in checks:
        if not 0 <= layer < blocks:
            raise ValueError(f"{what} {layer}: the {which} model has blocks 0..{blocks - 1}")
    widths = [
        ("steering vectors", np.shape(steering.vectors)[1], base.cfg.hidden_size, "base"),
        ("SAE input", np.shape(steering.sae.W_enc)[0], thinking.cfg.hidden_size, "thinking"),
    ]
    for what, width, hidden, which in widths:
        if width != hidden:
            raise ValueError(
                f"the {what} have width {width} but the {which} model's hidden size is {hidden}; "
                "was the steering file made for these models?"
            )


def hybrid_generate(
    model,
    base_model,
    tokenizer,
    prompts: str | Sequence[str],
    steering: SteeringVectors,
    *,
    base_tokenizer=None,
    coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
    ablation: str = "none",
    max_new_tokens: int = 512,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    chat: bool = True,
    prefill_text: str | None = None,
    progress=None,
) -> list[HybridGeneration]:
    """Greedy hybrid decoding of `prompts` by the thinking `model` and the steered `base_model`.

    Each prompt is formatted with each model's chat template (`chat=False`: used as given) and
    followed by `prefill_text`, by default the thinking model's opening of a thinking block
    (`thinking_opening`). `ablation`: "none", "bias_only" or "random_latent", whose draws for
    prompt p come from `seed` (one, or one per prompt) as `jaxthink.generate` keys its samples.
    Results come in prompt order; `steered_fraction` is the share of steered tokens. The thinking
    model's decoding layout (`sampler.for_decoding`) is made once per call, for all batches.
    """
    base_tokenizer = base_tokenizer or tokenizer
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if isinstance(seed, Sequence) and len(seed) != len(prompts):
        raise ValueError(f"seed: got {len(seed)} seeds for {len(prompts)} prompts")
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation {ablation!r}; accepted: {', '.join(ABLATIONS)}")
    coefficients = [float(c) for c in coefficients]
    if not coefficients:
        raise ValueError("coefficients: give at least one steering coefficient, e.g. 0.5,1.0")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be at least 1")
    check_pair(model, base_model, tokenizer, base_tokenizer, steering)
    opening = thinking_opening(tokenizer) if prefill_text is None else prefill_text
    encoded = {}
    for name, tok, m in (("thinking", tokenizer, model), ("base", base_tokenizer, base_model)):
        texts = [(format_prompt(tok, q) if chat else q) + opening for q in prompts]
        encoded[name] = encode_prompts(tok, texts)
        for i, ids in enumerate(encoded[name]):
            if len(ids) + max_new_tokens > m.cfg.max_position_embeddings:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens for the {name} model; with "
                    f"max_new_tokens={max_new_tokens} it does not fit its context of "
                    f"{m.cfg.max_position_embeddings} tokens"
                )
    control = control_tokens(tokenizer)
    pad_id = base_tokenizer.pad_token_id or 0
    batch_size = batch_size or len(prompts)
    thinking_decoding = for_decoding(*nnx.split(model), min(batch_size, len(prompts)))
    results: list[HybridGeneration] = []
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        t0 = time.perf_counter()
        state = run_hybrid(
            model, base_model, [encoded["thinking"][r] for r in rows],
            [encoded["base"][r] for r in rows], steering, coefficients=coefficients,
            max_new_tokens=max_new_tokens, eos_ids=control.eos, ablation=ablation,
            keys=jnp.stack([row_key(seed, r, 0) for r in rows]), pad_id=pad_id,
            thinking_decoding=thinking_decoding,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        for i, r in enumerate(rows):
            results.append(
                _to_generation(
                    base_tokenizer,
                    prompts[r],
                    encoded["base"][r],
                    state,
                    i,
                    control,
                    coefficients,
                    seconds,
                )  # fmt: skip
            )
        if progress is not None:
            progress(len(rows))
    return results


def _to_generation(tokenizer, prompt, prompt_ids, state, i, control, coefficients, seconds):
    length = int(state.lengths[i])
    ids = state.tokens[i, :length].tolist()
    ended = bool(ids) and ids[-1] in control.eos
    content = ids[:-1] if ended else ids
    split = content.index(control.end_think) if control.end_think in content else len(content)
    decode = lambda x: tokenizer.decode(x, skip_special_tokens=False)
    steered = int(state.steered[i, :length].sum())
    chosen = state.coefficient[i, :length].tolist()
    return HybridGeneration(
        prompt=prompt,
        prompt_ids=list(prompt_ids),  # the base model's, whose tokens are emitted
        text=decode(content),
        thinking=decode(content[:split]),
        answer=decode(content[split + 1 :]),
        mode="hybrid",
        chosen_mode="think",
        token_ids=ids,
        logprobs=[float(x) for x in state.think_logprobs[i, :length]],
        num_thinking_tokens=split,
        num_answer_tokens=max(len(content) - split - 1, 0),
        num_tokens=length,
        confidence=float(state.certainty_sum[i]) / max(length, 1),
        finish_reason="eos" if ended else "length",
        budget_forced=False,
        seconds=seconds,
        steered_tokens=steered,
        steered_fraction=steered / max(length, 1),
        latents=state.latents[i, :length].tolist(),
        coefficients=[None if j < 0 else coefficients[j] for j in chosen],
    )
