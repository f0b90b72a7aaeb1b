"""Mode policies as pure functions called inside the decode loop.

A row's policy is numbers (`PolicyParams`, per-row arrays) plus state (`PolicyState`, in the loop
carry). Every step the sampler calls `mask_logits` before sampling and `step` after it:
- `mask_logits` restricts the first response token to the control tokens (`thinkless`) or to one
  of them (`short`, `think_forced`);
- `step` decides the emitted token - the sampled one, or the next token of the row's forced-token
  queue (budget forcing's `</think>` + answer prefix, s1's `Wait`) - and advances the phase
  (PRE -> THINK -> ANSWER) and the thinking/answer token counts.
Rows with different modes differ only in these numbers, so one compiled program serves them all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxthink.policies.modes import ANSWER, CHOOSE, FORCE_SHORT, FREE, PLAIN, PRE, THINK

Array = jax.Array
_NEG = -1e30


@struct.dataclass
class PolicyParams:
    """Per-row numbers of the modes, each [B] int32."""

    phase: Array  # starting phase: PRE, THINK or ANSWER
    control: Array  # FREE, CHOOSE, FORCE_SHORT or FORCE_THINK
    budget: Array  # thinking tokens allowed before </think> is forced (NO_BUDGET: unbounded)
    grace: Array  # extra thinking tokens allowed to finish the current line
    extend: Array  # times the end of thinking is replaced by `Wait`


@struct.dataclass
class PolicyTokens:
    """The tokenizer's side: token ids (-1 when absent) and the forced sequences, padded with -1."""

    think: Array  # scalar
    end_think: Array  # scalar
    short: Array  # scalar
    end_seq: Array  # [Q] `</think>` + answer prefix
    wait_seq: Array  # [Q] the `Wait` text
    newline: Array  # [V] bool: tokens whose text contains a newline
    eos: Array  # [V] bool: end-of-sequence tokens
    stop: Array  # [V] bool: caller's stop tokens


@struct.dataclass
class PolicyState:
    phase: Array  # [B]
    think_count: Array  # [B] thinking tokens emitted
    answer_count: Array  # [B] answer tokens emitted
    extend_left: Array  # [B]
    queue: Array  # [B, Q] forced tokens
    queue_pos: Array  # [B] next queue entry to emit
    queue_len: Array  # [B] queue entries (0: no forcing under way)
    thought: Array  # [B] bool: the row entered THINK
    forced_end: Array  # [B] bool: budget forcing fired
    after_newline: Array  # [B] bool: the last emitted token ended a line


def init_state(params: PolicyParams, queue_width: int) -> PolicyState:
    b = params.phase.shape[0]
    zeros = jnp.zeros((b,), jnp.int32)
    return PolicyState(
        phase=params.phase,
        think_count=zeros,
        answer_count=zeros,
        extend_left=params.extend,
        queue=jnp.full((b, queue_width), -1, jnp.int32),
        queue_pos=zeros,
        queue_len=zeros,
        thought=params.phase == THINK,
        forced_end=jnp.zeros((b,), bool),
        after_newline=jnp.zeros((b,), bool),
    )


def mask_logits(logits: Array, state: PolicyState, params: PolicyParams, tok: PolicyTokens):
    """Restricts the first response token of control-token rows to the allowed control tokens,
    and masks `<think>` in the answer (thinking, once ended, stays ended: budgets hold). Rows of
    mode plain are never masked."""
    vocab = jnp.arange(logits.shape[-1])
    is_short, is_think = vocab == tok.short, vocab == tok.think
    allowed = jnp.select(
        [params.control[:, None] == CHOOSE, params.control[:, None] == FORCE_SHORT],
        [is_short | is_think, is_short],
        is_think,
    )
    first, answering = _masking(state, params)
    masked = (first[:, None] & ~allowed) | (answering[:, None] & is_think)
    return jnp.where(masked, _NEG, logits)


def unmasked_norm(
    norm: Array,
    logits: Array,
    inv_t: Array,
    state: PolicyState,
    params: PolicyParams,
    tok: PolicyTokens,
) -> tuple[Array, Array]:
    """From `norm`, logsumexp(mask_logits(logits) * inv_t) per row, that of the logits as they
    are, where `mask_logits` masked one token at most: (rows [B] bool where it is known, [B] the
    norms). An answer row gets `<think>`'s term back; a row choosing its first control token,
    which keeps only the control tokens, is not known."""
    first, answering = _masking(state, params)
    think = jnp.take(logits, jnp.maximum(tok.think, 0), axis=1) * inv_t
    restored = jnp.where(answering & (tok.think >= 0), jnp.logaddexp(norm, think), norm)
    return ~first, restored


def _masking(state: PolicyState, params: PolicyParams) -> tuple[Array, Array]:
    """(rows choosing their first token, a control token; rows answering): the rows that
    `mask_logits` masks."""
    first = (state.phase == PRE) & (params.control != FREE) & (params.control != PLAIN)
    answering = (state.phase == ANSWER) & (params.control != PLAIN)
    return first, answering


def step(sampled: Array, state: PolicyState, params: PolicyParams, tok: PolicyTokens, active):
    """(sampled tokens [B], state) -> (emitted tokens [B], state). `active` [B]: rows still going."""
    thinking = state.phase == THINK
    idle = state.queue_pos >= state.queue_len
    over_budget = state.think_count >= params.budget
    line_done = state.after_newline | (state.think_count >= params.budget + params.grace)
    force_end = active & thinking & idle & over_budget & ((params.grace == 0) | line_done)
    force_wait = (
        active & thinking & idle & ~force_end & (sampled == tok.end_think) & (state.extend_left > 0)
    )
    queue = jnp.where(force_end[:, None], tok.end_seq, state.queue)
    queue = jnp.where(force_wait[:, None], tok.wait_seq, queue)
    starting = force_end | force_wait
    queue_pos = jnp.where(starting, 0, state.queue_pos)
    queue_len = jnp.where(force_end, jnp.sum(tok.end_seq >= 0), state.queue_len)
    queue_len = jnp.where(force_wait, jnp.sum(tok.wait_seq >= 0), queue_len)
    forcing = queue_pos < queue_len
    forced = jnp.take_along_axis(queue, jnp.minimum(queue_pos, queue.shape[1] - 1)[:, None], 1)
    token = jnp.where(forcing, forced[:, 0], sampled)
    state = state.replace(
        queue=queue,
        queue_pos=queue_pos + forcing,
        queue_len=queue_len,
        extend_left=state.extend_left - force_wait,
        forced_end=state.forced_end | force_end,
    )
    return token, advance(token, state, tok, active)


def advance(token: Array, state: PolicyState, tok: PolicyTokens, active: Array) -> PolicyState:
    """Phase transitions and counts for the emitted tokens of active rows."""
    phase = state.phase
    from_pre = jnp.where(token == tok.think, THINK, ANSWER)
    ends_think = token == tok.end_think
    new_phase = jnp.select([phase == PRE, (phase == THINK) & ends_think], [from_pre, ANSWER], phase)
    new_phase = jnp.where(active, new_phase, phase)
    content = active & ~tok.eos[token] & ~tok.stop[token]
    counts_think = content & (phase == THINK) & ~ends_think
    counts_answer = content & (phase == ANSWER)
    return state.replace(
        phase=new_phase,
        think_count=state.think_count + counts_think,
        answer_count=state.answer_count + counts_answer,
        thought=state.thought | (new_phase == THINK),
        after_newline=jnp.where(active, tok.newline[token], state.after_newline),
    )
