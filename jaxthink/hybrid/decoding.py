"""Hybrid decoding: a thinking model decides when and how to steer a base model, token by token.

The published algorithm (docs/methods.md section 3), greedy, for each new token:
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
position changes nothing before it, so the caches hold the unsteered sequence. Hybrid decoding
is a step variant of the sampler's one loop, run by the slot engine like every mode: a slot holds
the thinking model's cache (the loop's own) and the base model's (`HybridCarry`); prefill captures
the SAE block of the thinking model's prompt and the steering block of the base model's at the
last position; each step (`Steer.choose`, `Steer.advance`) picks the token from what both models
read last, then feeds it to both, capturing those blocks again. Only when some row's greedy
tokens differ does the step also finish the base model's last pass C more ways: the captured
residual stream plus c_j * (bias + v_k), through the blocks after the steering block, as C
alternatives for the same position (`forward_alternatives`, which reads the cache without
writing) - all coefficients in one call.
`jaxthink.hybrid.reference` is the uncached algorithm, kept as the specification this loop
must reproduce token for token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxthink.decode.engine import (
    Engine,
    Prefix,
    Request,
    Sample,
    check_slots,
    kv_bytes_per_slot,
    output_matrix,
    put,
    put_cache,
)
from jaxthink.decode.generate import Generation, policy_tokens, prompt_key
from jaxthink.decode.sampler import params_dtype, record, transposed_head
from jaxthink.hybrid.sae import SAEParams, preactivations
from jaxthink.hybrid.sentences import center_and_normalize
from jaxthink.hybrid.vectors import SteeringVectors
from jaxthink.models.qwen import (
    KVCache,
    Steering,
    forward_alternatives,
    forward_cached,
    init_cache,
)
from jaxthink.policies.modes import FREE, NO_BUDGET, THINK, ModeOptions
from jaxthink.policies.policy import PolicyTokens
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
HYBRID_ROW = (THINK, FREE, NO_BUDGET, 0, 0)  # the policy numbers of a hybrid row: free thinking


@struct.dataclass
class HybridParams:
    """The arrays of the steering file and the run's coefficient grid and ablation."""

    sae: SAEParams
    sae_mean: Array  # [E_thinking]
    bias: Array  # [E_base]
    vectors: Array  # [n, E_base]
    coefficients: Array  # [C]
    ablation: Array  # scalar int32: index into ABLATIONS (data, so no recompiling)


@struct.dataclass
class HybridCarry:
    """The base model's side of the decode loop's carry, per slot, plus what was steered."""

    cache: KVCache  # the base model's
    final: Array  # [B, E_base] the base model's last position after its last block, unsteered
    residual: Array  # [B, E_base] after the steering block, at the last position
    hidden: Array  # [B, E_thinking] float32: the thinking model's, after the SAE block
    steered: Array  # [B, N] bool: the two greedy tokens differed
    latents: Array  # [B, N] int32 latent picked at each token (-1 past the row's end)
    coefficient: Array  # [B, N] int32 index of the emitted candidate's coefficient, -1 unsteered

    def insert(self, base: Prefix, hidden: Array, row, slot) -> HybridCarry:
        """Slot `slot` takes row `row` of the base model's prefill and the thinking model's
        captured residual stream `hidden` [E_thinking]."""
        return self.replace(
            cache=put_cache(self.cache, base.cache, row, slot),
            final=put(self.final, base.hidden[row].astype(self.final.dtype), slot),
            residual=put(self.residual, base.captured[row].astype(self.residual.dtype), slot),
            hidden=put(self.hidden, hidden.astype(jnp.float32), slot),
        )


def random_latent(key: Array, step: Array, n_latents: int) -> Array:
    """The random-latent ablation's draw for one row at one step (shared with the reference)."""
    return jax.random.randint(jax.random.fold_in(key, step), (), 0, n_latents)


def pick_latents(hp: HybridParams, hidden: Array, keys: Array, steps: Array) -> Array:
    """[B] latent per row from the thinking model's residual stream `hidden` [B, E] (or drawn
    from the row's key at its step under the random-latent ablation)."""
    x, _ = center_and_normalize(hidden.astype(jnp.float32), hp.sae_mean)
    named = jnp.argmax(preactivations(hp.sae, x), axis=-1)
    n = hp.vectors.shape[0]
    drawn = jax.vmap(lambda key, step: random_latent(key, step, n))(keys, steps)
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


@struct.dataclass
class Steer:
    """The hybrid's step variant of the sampler's loop (`sampler.step(..., steer=)`): the base
    model's weights, the steering arrays and the two hooked blocks."""

    base_params: object
    hp: HybridParams
    head: Array | None  # the base model's transposed embedding, if its passes want one
    base_def: object = struct.field(pytree_node=False)
    sae_layer: int = struct.field(pytree_node=False)
    steer_layer: int = struct.field(pytree_node=False)
    step_head: bool = struct.field(pytree_node=False)  # the one-row-each pass uses `head` too

    def choose(self, carry: HybridCarry, think_logits, keys, steps, active):
        """Steps 1-4 of the algorithm on the last positions both models have read: (token [B],
        (steered, latent, coefficient index) [B]). Only when some row's greedy tokens differ
        does the base model finish its last pass once more per coefficient, steered: the
        captured residual stream plus c_j * (bias + v_k), through the blocks after the steering
        block, as C alternatives of the same position (the cache rewound by that position,
        which `forward_alternatives` reads without writing)."""
        hp, b = self.hp, think_logits.shape[0]
        c = hp.coefficients.shape[0]
        latent = pick_latents(hp, carry.hidden, keys, steps)
        base = nnx.merge(self.base_def, self.base_params)
        base_logits = base.logits(carry.final, self.head if self.step_head else None)
        base_greedy = jnp.argmax(base_logits, axis=-1).astype(jnp.int32)
        steered = (base_greedy != jnp.argmax(think_logits, axis=-1)) & active

        def candidates():
            cache = carry.cache
            rewound = cache.replace(index=cache.index - 1, pos=cache.pos - 1)
            scale = jnp.broadcast_to(hp.coefficients, (b, c))
            delta = Steering(directions(hp, latent), scale, self.steer_layer).delta(
                carry.residual.dtype
            )
            logits = forward_alternatives(
                base,
                carry.residual[:, None] + delta,
                jnp.repeat(active[:, None], c, axis=1),
                rewound,
                after_layer=self.steer_layer,
                head=self.head,
            )
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)

        unused = lambda: jnp.zeros((b, c), jnp.int32)
        logp = jax.nn.log_softmax(think_logits, axis=-1)
        token, coefficient = choose(
            base_greedy, steered, jax.lax.cond(jnp.any(steered), candidates, unused), logp
        )
        return token, (steered, latent, coefficient)

    def advance(self, carry: HybridCarry, hidden, token, active, choice, col) -> HybridCarry:
        """The base model reads the emitted token (unsteered), its steering block captured; the
        choice is recorded at each row's column `col`."""
        base = nnx.merge(self.base_def, self.base_params)
        final, cache, residual = forward_cached(
            base,
            token[:, None],
            active[:, None],
            carry.cache,
            capture_layer=self.steer_layer,
            return_hidden=True,
        )
        steered, latent, coefficient = choice
        return carry.replace(
            cache=cache,
            final=final[:, 0],
            residual=residual[:, 0],
            hidden=hidden.astype(jnp.float32),
            steered=record(carry.steered, col, steered),
            latents=record(carry.latents, col, latent),
            coefficient=record(carry.coefficient, col, coefficient),
        )


class Hybrid:
    """A base model and its steering for the slot engine (`Engine(thinking, hybrid=...)`): what
    hybrid decoding adds to each slot, and the step variant the loop runs."""

    def __init__(
        self,
        base,
        steering: SteeringVectors,
        coefficients=DEFAULT_COEFFICIENTS,
        ablation: str = "none",
    ):
        self.base, self.steering = base, steering
        self.split = nnx.split(base)
        self.dtype = params_dtype(self.split[1])
        as_f32 = lambda x: jnp.asarray(x, jnp.float32)
        self.params = HybridParams(
            sae=SAEParams(*(as_f32(x) for x in steering.sae)),
            sae_mean=as_f32(steering.sae_mean),
            bias=jnp.asarray(steering.bias, self.dtype),
            vectors=jnp.asarray(steering.vectors, self.dtype),
            coefficients=as_f32(list(coefficients)),
            ablation=jnp.int32(ABLATIONS.index(ablation)),
        )

    def kv_bytes_per_slot(self, length: int) -> int:
        return kv_bytes_per_slot(self.base.cfg, length, self.dtype)

    def empty(self, slots: int, length: int, max_new: int) -> HybridCarry:
        return _empty_carry(
            self.base.cfg, slots, length, max_new, np.shape(self.steering.sae_mean)[0], self.dtype
        )

    def steer(self, slots: int) -> Steer:
        """The step variant for `slots` rows; on CPU with a tied embedding, its transpose for the
        base model's passes (as `sampler.output_matrix`), made once here."""
        cfg, c = self.base.cfg, self.params.coefficients.shape[0]
        head = output_matrix(self.base, slots * c)
        return Steer(
            base_params=self.split[1],
            hp=self.params,
            head=head,
            base_def=self.split[0],
            sae_layer=self.steering.sae_layer,
            steer_layer=self.steering.layer,
            step_head=transposed_head(cfg, slots),
        )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _empty_carry(cfg, slots: int, length: int, max_new: int, think_width: int, dtype):
    ints = lambda: jnp.full((slots, max_new), -1, jnp.int32)
    return HybridCarry(
        cache=init_cache(cfg, slots, length, dtype),
        final=jnp.zeros((slots, cfg.hidden_size), dtype),
        residual=jnp.zeros((slots, cfg.hidden_size), dtype),
        hidden=jnp.zeros((slots, think_width), jnp.float32),
        steered=jnp.zeros((slots, max_new), bool),
        latents=ints(),
        coefficient=ints(),
    )


def ending_tokens(vocab_size: int, eos_ids: Sequence[int]) -> PolicyTokens:
    """`PolicyTokens` of a vocabulary known only by its end tokens (no control tokens)."""
    none, empty = jnp.int32(-1), jnp.full((1,), -1, jnp.int32)
    eos = jnp.zeros(vocab_size, bool).at[jnp.asarray(list(eos_ids), jnp.int32)].set(True)
    no = jnp.zeros(vocab_size, bool)
    return PolicyTokens(none, none, none, empty, empty, no, eos, no)


def hybrid_requests(think_prompts, base_prompts, keys, max_new_tokens: int) -> list[Request]:
    """One greedy engine request per prompt pair; row r's latent draws come from fold_in(keys[r],
    0) (its sample 0), folded with the step."""
    return [
        Request(
            prompt=list(t),
            key=key,
            mode=HYBRID_ROW,
            max_new_tokens=max_new_tokens,
            base_prompt=list(b),
        )
        for t, b, key in zip(think_prompts, base_prompts, keys, strict=True)
    ]


def run_hybrid(
    thinking,
    base,
    think_prompts: list[list[int]],
    base_prompts: list[list[int]],
    steering: SteeringVectors,
    *,
    coefficients=DEFAULT_COEFFICIENTS,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    ablation: str = "none",
    keys: Array | None = None,
    pad_id: int = 0,
    slots: int | None = None,
) -> list[Sample]:
    """The hybrid on token-id prompts (one list per row, for each model) through the slot
    engine; one `Sample` per row, in row order. `keys` [B] are the rows' request keys (default:
    row r's is fold_in(key(0), r)). No checks here beyond shapes: `hybrid_generate` validates a
    request."""
    if keys is None:
        keys = [jax.random.fold_in(jax.random.key(0), r) for r in range(len(think_prompts))]
    requests = hybrid_requests(think_prompts, base_prompts, keys, max_new_tokens)
    runner = Engine(thinking, pad_id, Hybrid(base, steering, coefficients, ablation))
    tok = ending_tokens(thinking.cfg.vocab_size, eos_ids)
    return sorted(runner.run(requests, tok, slots), key=lambda sample: sample.request)


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
    slots: int | None = None,
    batch_size: int | None = None,
    chat: bool = True,
    prefill_text: str | None = None,
    base_prefill_text: str = "",
    progress=None,
) -> list[HybridGeneration]:
    """Greedy hybrid decoding of `prompts` by the thinking `model` and the steered `base_model`.

    Each prompt is formatted with each model's chat template (`chat=False`: used as given). The
    thinking model's prompt goes on with `prefill_text`, by default its opening of a thinking
    block (`thinking_opening`); the base model's with `base_prefill_text`, by default nothing:
    the base is prompted as it is prompted alone, so coefficient 0 gives its own greedy tokens. `ablation`: "none", "bias_only" or "random_latent", whose draws for
    prompt p come from `seed` (one, or one per prompt) as `jaxthink.generate` keys its samples.
    The prompts run through the slot engine (`slots`, formerly `batch_size`: as in `generate`);
    results come in prompt order; `steered_fraction` is the share of steered tokens.
    `progress(1)` is called as each prompt ends.
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
    slots = slots if slots is not None else batch_size
    if slots is not None:
        check_slots(slots)
    check_pair(model, base_model, tokenizer, base_tokenizer, steering)
    opening = thinking_opening(tokenizer) if prefill_text is None else prefill_text
    encoded = {}
    for name, tok, m, after in (
        ("thinking", tokenizer, model, opening),
        ("base", base_tokenizer, base_model, base_prefill_text),
    ):
        texts = [(format_prompt(tok, q) if chat else q) + after for q in prompts]
        encoded[name] = encode_prompts(tok, texts)
        for i, ids in enumerate(encoded[name]):
            if len(ids) + max_new_tokens > m.cfg.max_position_embeddings:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens for the {name} model; with "
                    f"max_new_tokens={max_new_tokens} it does not fit its context of "
                    f"{m.cfg.max_position_embeddings} tokens"
                )
    keys = [prompt_key(seed, p) for p in range(len(prompts))]
    requests = hybrid_requests(encoded["thinking"], encoded["base"], keys, max_new_tokens)
    tok = policy_tokens(tokenizer, ModeOptions.for_model(model.cfg), model.cfg.vocab_size)
    hybrid = Hybrid(base_model, steering, coefficients, ablation)
    runner = Engine(model, base_tokenizer.pad_token_id or 0, hybrid)
    control = control_tokens(tokenizer)
    results: list[HybridGeneration | None] = [None] * len(prompts)
    for sample in runner.run(requests, tok, slots):
        p = sample.request
        results[p] = _to_generation(
            base_tokenizer, prompts[p], encoded["base"][p], sample, control, coefficients
        )
        if progress is not None:
            progress(1)
    return results


def hybrid_generate_fn(base_model, base_tokenizer, steering, coefficients, ablation="none"):
    """A `jaxthink.generate`-shaped function running the hybrid with this base model and steering
    (the evaluation runner's `generate_fn`); the thinking model is the one it is called with."""

    def generate(
        model,
        tokenizer,
        prompts,
        mode,
        *,
        n=1,
        max_new_tokens=512,
        temperature=0.0,
        seed=0,
        slots=None,
        progress=None,
        chat=True,
        **_,
    ):
        if n != 1 or temperature != 0:
            raise ValueError("hybrid decoding is greedy: n must be 1 and temperature 0")
        return hybrid_generate(
            model,
            base_model,
            tokenizer,
            prompts,
            steering,
            base_tokenizer=base_tokenizer,
            coefficients=coefficients,
            ablation=ablation,
            max_new_tokens=max_new_tokens,
            seed=seed,
            slots=slots,
            progress=progress,
            chat=chat,
        )

    return generate


def _to_generation(tokenizer, prompt, prompt_ids, sample: Sample, control, coefficients):
    ids = sample.tokens.tolist()
    length = len(ids)
    ended = bool(ids) and ids[-1] in control.eos
    content = ids[:-1] if ended else ids
    split = content.index(control.end_think) if control.end_think in content else len(content)
    decode = lambda x: tokenizer.decode(x, skip_special_tokens=False)
    steered = int(sample.steered.sum())
    return HybridGeneration(
        prompt=prompt,
        prompt_ids=list(prompt_ids),  # the base model's, whose tokens are emitted
        text=decode(content),
        thinking=decode(content[:split]),
        answer=decode(content[split + 1 :]),
        mode="hybrid",
        chosen_mode="think",
        token_ids=ids,
        logprobs=[float(x) for x in sample.logprobs],
        num_thinking_tokens=split,
        num_answer_tokens=max(len(content) - split - 1, 0),
        num_tokens=length,
        confidence=sample.certainty_sum / max(length, 1),
        finish_reason="eos" if ended else "length",
        budget_forced=False,
        seconds=sample.seconds,
        steered_tokens=steered,
        steered_fraction=steered / max(length, 1),
        latents=sample.latents.tolist(),
        coefficients=[None if j < 0 else coefficients[j] for j in sample.coefficients.tolist()],
    )
