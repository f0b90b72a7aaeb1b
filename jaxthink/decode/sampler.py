"""The compiled sampler: one jitted prefill and one jitted `lax.while_loop` decode.

    prompts [B, P] left-padded --prefill--> KV cache + the last position's hidden state
      --decode loop (state donated): logits -> mask_logits -> choose_tokens_and_norm
         -> policy.step -> record -> forward_cached(1 token per row)
      --> tokens, log-probs, phases, per-row stats

Parameters are passed as an argument (not closed over) so the compiled program does not embed
them. Everything per-row (mode numbers, temperature, top-k/p, key, step count, max_new_tokens)
lives in the loop carry: changing values never recompiles; only shapes (rows, prompt length,
token buffer, cache length) do, and a row may start or end at any step. The slot engine
(`jaxthink.decode.engine`) drives `loop` with refills between steps; `prefill` + `decode` run one
static batch (the benchmarks' baseline).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxthink.decode.choice import choose_tokens_and_norm, logprob_and_certainty, logprob_scale
from jaxthink.distributed import to_host
from jaxthink.models.qwen import KVCache, forward_cached, init_cache, with_projections_out_in
from jaxthink.policies import policy
from jaxthink.policies.policy import PolicyParams, PolicyState, PolicyTokens
from jaxthink.sharding import batch_sharding, batch_size_multiple, constrain_cache, mesh_of

Array = jax.Array
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
FINISH_REASONS = {EOS: "eos", STOP: "stop", LENGTH: "length"}

# Trace counters: tests use them to check that changing only numbers does not recompile.
TRACE_COUNT = {"prefill": 0, "insert": 0, "decode": 0}


@struct.dataclass
class Sampling:
    """Per-row sampling settings and PRNG keys."""

    temperature: Array  # [B] float32; 0 = greedy
    top_k: Array  # [B] int32; <= 0 = off
    top_p: Array  # [B] float32; >= 1 = off
    keys: Array  # [B] PRNG keys


@struct.dataclass
class LoopState:
    """The decode loop's carry: B rows, each with its own settings, step count and buffers, so a
    row may start (a slot taking a new request) or end at any step."""

    cache: KVCache
    hidden: Array  # [B, E] the last position's residual stream: each step makes its logits
    tokens: Array  # [B, N] generated tokens; row b's t-th token at column t
    logprobs: Array  # [B, N] log-prob of each token under the sampling temperature
    phases: Array  # [B, N] int8 phase each token was emitted in
    done: Array  # [B] bool: ended (or a free slot)
    lengths: Array  # [B] tokens generated per row: the row's own step count
    finish: Array  # [B] int32 RUNNING / EOS / STOP / LENGTH
    certainty_sum: Array  # [B] sum of per-token self-certainty
    policy: PolicyState
    pparams: PolicyParams  # [B] the rows' modes
    sampling: Sampling  # [B] the rows' sampling settings and keys
    max_new: Array  # [B] int32: tokens a row may generate (at most N)
    hybrid: object = None  # the base model's carry in hybrid decoding (`jaxthink.hybrid.decoding`)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "queue_width", "mesh"))
def prefill(graphdef, params, tokens, valid, pparams, max_new: int, queue_width: int, mesh=None):
    """Runs the left-padded prompts into a fresh cache; returns the decode loop's first state
    (its `sampling` still to be set: `decode` does it)."""
    TRACE_COUNT["prefill"] += 1
    model = nnx.merge(graphdef, params)
    cache_length = tokens.shape[1] + max_new
    cache = init_cache(model.cfg, tokens.shape[0], cache_length, params_dtype(params))
    cache = constrain_cache(cache, mesh)
    hidden, cache = forward_cached(model, tokens, valid, cache, last_only=True, return_hidden=True)
    b = tokens.shape[0]
    state = init_loop(hidden[:, 0], cache, pparams, queue_width, max_new)
    return state.replace(sampling=greedy_rows(b), max_new=jnp.full((b,), max_new, jnp.int32))


def greedy_rows(b: int) -> Sampling:
    """Sampling settings of `b` greedy rows with placeholder keys (for rows yet to be set)."""
    zeros = jnp.zeros((b,), jnp.int32)
    keys = jax.vmap(jax.random.key)(zeros.astype(jnp.uint32))
    return Sampling(zeros.astype(jnp.float32), zeros, jnp.ones((b,), jnp.float32), keys)


def params_dtype(params) -> jnp.dtype:
    return jax.tree.leaves(params)[0].dtype


def init_loop(hidden, cache, pparams: PolicyParams, queue_width: int, max_new: int) -> LoopState:
    """The first state of rows whose prompts are in `cache` (`hidden` [B, E]: their last
    positions' residual streams): nothing generated yet; `sampling` and `max_new` are left for
    the caller to set."""
    b = hidden.shape[0]
    return LoopState(
        cache=cache,
        hidden=hidden,
        tokens=jnp.zeros((b, max_new), jnp.int32),
        logprobs=jnp.zeros((b, max_new), jnp.float32),
        phases=jnp.zeros((b, max_new), jnp.int8),
        done=jnp.zeros((b,), bool),
        lengths=jnp.zeros((b,), jnp.int32),
        finish=jnp.zeros((b,), jnp.int32),
        certainty_sum=jnp.zeros((b,), jnp.float32),
        policy=policy.init_state(pparams, queue_width),
        pparams=pparams,
        sampling=None,
        max_new=None,
    )


def output_matrix(model, batch: int) -> Array | None:
    """A transposed copy of a tied embedding for the decode loop's logits, on CPU at batch > 1.

    XLA:CPU multiplies a few rows by a [V, E] matrix's transpose about twice as slowly as by an
    [E, V] matrix; one copy (outside the loop) buys that back every step. The slot engine makes
    it once and keeps it (at 151,936 x 128 the copy took 100 ms: more than two decode steps).
    """
    if not transposed_head(model.cfg, batch):
        return None
    return jax.lax.optimization_barrier(model.embed[...].T)


def transposed_head(cfg, batch: int) -> bool:
    """Whether `output_matrix` makes a copy for `batch` rows."""
    return cfg.tie_word_embeddings and batch > 1 and jax.default_backend() == "cpu"


def for_decoding(graphdef, params, batch: int):
    """The (graphdef, params) the decode loop runs on for `batch` rows. On one CPU device at batch
    1, the blocks' projection weights transposed to [out, in] (`with_projections_out_in`: a copy
    of them, which `Engine` makes once and keeps); otherwise the model as it is."""
    if batch != 1 or jax.default_backend() != "cpu" or mesh_of(params) is not None:
        return graphdef, params
    return nnx.split(with_projections_out_in(nnx.merge(graphdef, params)))


def record(buffer: Array, col: Array, x: Array) -> Array:
    """buffer[b, col[b]] = x[b] per row; a column past the end (an ended row's) writes nothing."""
    return buffer.at[jnp.arange(col.shape[0]), col].set(x, mode="drop")


def step(
    model, head, s: LoopState, tok: PolicyTokens, pad_id: Array, mesh=None, steer=None
) -> LoopState:
    """One token for every running row: logits -> mask -> choose -> policy -> record ->
    forward. A row's draw is keyed by (its key, its own step count), never by its place in the
    batch. The loop carries the hidden state, not the logits: the step's logits are its own
    buffer, where a carried [B, V] array would be copied every step (XLA cannot write the next
    logits over the ones this step still reads: 3-4 ms of a 23 ms step at [64, 151936] on CPU).

    With `steer` (`jaxthink.hybrid.decoding.Steer`) this is the hybrid's step: the model is the
    thinking model, `steer.choose` picks the token from both models' last positions, and
    `steer.advance` runs the base model on it beside the thinking model."""
    active = ~s.done
    sampling, pparams = s.sampling, s.pparams
    logits = model.logits(s.hidden, head).astype(jnp.float32)
    masked = policy.mask_logits(logits, s.policy, pparams, tok)
    if steer is None:
        sampled, norm = choose_tokens_and_norm(
            masked, sampling.keys, s.lengths, sampling.temperature, sampling.top_k, sampling.top_p
        )
        # the choice's tempered normaliser of the masked logits, turned into the logits' own
        inv_t = logprob_scale(sampling.temperature)
        known, norm = policy.unmasked_norm(norm, logits, inv_t, s.policy, pparams, tok)
        known_norm = known & (sampling.temperature > 0), norm
    else:
        # the published algorithm: both models' greedy tokens, unmasked
        sampled, choice = steer.choose(s.hybrid, logits, sampling.keys, s.lengths, active)
        known_norm = None
    phase_before = s.policy.phase
    token, pstate = policy.step(sampled, s.policy, pparams, tok, active)
    token = jnp.where(active, token, pad_id)

    token_logp, certainty = logprob_and_certainty(logits, token, sampling.temperature, known_norm)
    ended_eos, ended_stop = tok.eos[token] & active, tok.stop[token] & active
    full = s.lengths + 1 >= s.max_new
    finish = jnp.select(
        [~active, ended_eos, ended_stop, full], [s.finish, EOS, STOP, LENGTH], RUNNING
    )
    col = jnp.where(active, s.lengths, s.tokens.shape[1])  # an ended row writes nothing
    fed = (token[:, None], active[:, None], s.cache)
    if steer is None:
        hidden, cache = forward_cached(model, *fed, return_hidden=True)
        hybrid = None
    else:
        hidden, cache, captured = forward_cached(
            model, *fed, capture_layer=steer.sae_layer, return_hidden=True
        )
        hybrid = steer.advance(s.hybrid, captured[:, 0], token, active, choice, col)
    return s.replace(
        cache=constrain_cache(cache, mesh),
        hidden=hidden[:, 0],
        tokens=record(s.tokens, col, token),
        logprobs=record(s.logprobs, col, token_logp),
        phases=record(s.phases, col, phase_before.astype(jnp.int8)),
        done=s.done | (finish != RUNNING),
        lengths=s.lengths + active,
        finish=finish,
        certainty_sum=s.certainty_sum + jnp.where(active, certainty, 0.0),
        policy=pstate,
        hybrid=hybrid,
    )


def loop(
    model,
    head,
    state: LoopState,
    tok,
    pad_id,
    max_steps,
    until_one_ends,
    mesh=None,
    steer=None,
    between=None,
    aux=None,
):
    """Steps until every row has ended, or `max_steps` steps have run, or (with
    `until_one_ends`) a row that was running when the loop began has ended. After each step,
    `between(i, state, running, aux) -> (state, aux)` may change rows (the slot engine refills
    ended ones there; `running` marks the rows running at the start). Returns (steps, state,
    aux)."""
    running = ~state.done

    def cond(carry):
        i, s, _ = carry
        one_ended = jnp.any(running & s.done)
        return (i < max_steps) & ~jnp.all(s.done) & ~(until_one_ends & one_ended)

    def body(carry):
        i, s, a = carry
        s = step(model, head, s, tok, pad_id, mesh, steer)
        if between is not None:
            s, a = between(i, s, running, a)
        return i + 1, s, a

    return jax.lax.while_loop(cond, body, (jnp.int32(0), state, aux))


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"), donate_argnames=("state",))
def decode(
    graphdef,
    params,
    state: LoopState,
    pparams: PolicyParams,
    tok: PolicyTokens,
    sampling: Sampling,
    pad_id: Array,
    mesh=None,
) -> LoopState:
    """Generates until every row has ended or its token buffer is full (a static batch)."""
    TRACE_COUNT["decode"] += 1
    state = state.replace(pparams=pparams, sampling=sampling)
    never = jnp.int32(np.iinfo(np.int32).max)
    model = nnx.merge(graphdef, params)
    head = output_matrix(model, state.tokens.shape[0])
    return loop(model, head, state, tok, pad_id, never, jnp.bool_(False), mesh)[1]


def bucket(length: int, multiple: int = 32) -> int:
    """Prompt lengths rounded up, so nearby lengths share one compiled program."""
    return -(-length // multiple) * multiple


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded tokens and validity [B, P], P bucketed to a multiple of 32."""
    width = bucket(max(len(ids) for ids in prompt_ids))
    tokens = np.full((len(prompt_ids), width), pad_id, np.int32)
    valid = np.zeros(tokens.shape, bool)
    for r, ids in enumerate(prompt_ids):
        tokens[r, width - len(ids) :] = ids
        valid[r, width - len(ids) :] = True
    return tokens, valid


def start(
    graphdef,
    params,
    prompt_ids: list[list[int]],
    pparams: PolicyParams,
    tok: PolicyTokens,
    max_new_tokens: int,
    pad_id: int = 0,
) -> LoopState:
    """The decode loop's first state for a batch of token-id prompts: left-padded, placed on the
    parameters' mesh and prefilled."""
    mesh = mesh_of(params)
    multiple = batch_size_multiple(mesh)
    if len(prompt_ids) % multiple:
        raise ValueError(
            f"{len(prompt_ids)} rows do not split over the mesh's data x fsdp = {multiple} devices"
        )
    tokens, valid = left_pad(prompt_ids, pad_id)
    if mesh is not None:
        tokens, valid = (jax.device_put(x, batch_sharding(mesh, 2)) for x in (tokens, valid))
    queue_width = tok.end_seq.shape[0]
    return prefill(graphdef, params, tokens, valid, pparams, max_new_tokens, queue_width, mesh)


def sample(
    graphdef,
    params,
    prompt_ids: list[list[int]],
    pparams: PolicyParams,
    tok: PolicyTokens,
    sampling: Sampling,
    max_new_tokens: int,
    pad_id: int = 0,
    decoding=None,
) -> LoopState:
    """Prefill + decode for a batch of token-id prompts; returns the final loop state on host.
    The loop runs on `decoding` = (graphdef, params) if given, else on `for_decoding`'s."""
    state = start(graphdef, params, prompt_ids, pparams, tok, max_new_tokens, pad_id)
    decoding = decoding or for_decoding(graphdef, params, len(prompt_ids))
    mesh = mesh_of(params)
    state = decode(*decoding, state, pparams, tok, sampling, jnp.int32(pad_id), mesh)
    return to_host(
        state.replace(cache=None, hidden=None, sampling=None)
    )  # gathered across hosts if need be
