"""Next-token choice: greedy, temperature, top-k and top-p, with per-row settings.

Every row's settings are arrays, so changing them never recompiles. The vocabulary is read as
blocks of 128 tokens ([B, V] -> [B, V / 128, 128], free when 128 divides V, as for Qwen's
151,936; other sizes are padded with -inf), and each choice is one pass over the logits plus
work on a few blocks (`logprob_and_certainty`, what the decode step records of the logits, reads
them by the same blocks and reuses the tempered normaliser that a sampled row's draw computed):

- greedy: the maximum of each block (one pass); the first block reaching the row's maximum; the
  first index of it inside that block (`first_argmax`).
- sampling, exactly softmax(logits / T) up to float rounding, by inverse CDF with ONE uniform
  per row (threefry for 152k Gumbel numbers per row cost more than the model's step on CPU): the
  unnormalised probabilities w = exp((x - max) / T) summed per block (one pass); the block where
  u * total falls among the blocks' running sums; the token where it falls inside that block.
- top-k / top-p: on the 8 largest logits of the row, or the C = 64 largest when some row's set
  needs more (the c blocks with the largest maxima hold the c largest logits, so one top-k over
  c * 128 gathered logits finds them: 0.4 ms for 8 at [64, 151936], 3.6 for 64). Top-k keeps
  the first k candidates; top-p the shortest prefix of the (top-k kept) candidates whose mass
  under the softmax of the top-k kept set (the full softmax when top-k is off, its total from the
  block sums) reaches p; the draw is the same inverse CDF over the kept candidates. Ties at the
  last kept value are all kept (a token equal to the k-th largest is kept too; likewise for the
  top-p threshold), as in `top_k_mask` / `top_p_mask`.
- rows the candidates cannot settle (a top-p set that they do not hold, as in a flat
  distribution, or ties at the last kept value reaching the C-th candidate: tokens beyond them
  could be tied), taken (`lax.cond`) only when some row needs it. A top-p row whose p x total
  weight passes 2C cannot be settled by them (each weighs at most 1), so when every filtered row
  is such a row, the candidates are not looked for at all.
  - top-p alone (top-k off): rejection sampling (`_draw_top_p`). The row's draw from the whole
    tempered softmax (above) is kept iff the mass of the tokens more likely than it is < p: the
    sort's rule, ties at the threshold kept (a kept token's more likely tokens all come before
    the threshold's first position, whose prefix mass is < p; a removed one's include every
    kept token, whose mass is >= p). One pass over the batch tests it; the rows it rejects
    (about 1 - p of them) draw again from the block sums they already have, with fresh
    uniforms, one row at a time so that a retest reads that row only. A kept draw follows the
    filtered softmax exactly and is kept with probability the set's mass (>= p): ~1 / p draws.
    At [64, 151936], T = 0.6, top-p 0.95 on near-flat logits: 8.7 ms on CPU (temperature
    alone: 3.6; ~400 with bisections, 26 with every retry over the whole batch, 12.5 with the
    retries 8 rows at a time and the test's step as min / max products).
  - rows with top-k on (top_k >= C, or ties reaching the C-th candidate), and top-p rows still
    rejected after `REJECTION_ATTEMPTS` draws: filters the whole vocabulary by bisection (`top_k_mask`,
    `top_p_mask`: 32 passes each) and draws by the inverse CDF.

A row's uniform comes from `jax.random.fold_in(keys[b], step[b])` alone (a rejection row's
further uniforms from fold_ins of that key with the attempt number), so its draw depends on
neither its batch neighbours nor the batch size. An all-greedy batch skips all of the sampling.

On XLA:CPU the per-block reductions run on the logits viewed as [B * V / 128, 128] rows, with the
per-row numbers repeated per block: written as a [B, V / 128, 128] reduction with [B, 1, 1]
operands the same exp-sum took 16 ms instead of 4 at [64, 151936] (and argmax's compare-and-select
over the full row 30 ms against 2 for the block search).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
_NEG = -1e30
_BISECTION_STEPS = 32
_STEEP = 2.0**127  # a slope that takes any difference of logits >= 2^-120 past 120
BLOCK = 128  # tokens per block
CANDIDATES = 64  # C: top-k / top-p look at this many of the largest logits per row
FEW_CANDIDATES = 8  # looked at first; the C only when some row needs more
REJECTION_ATTEMPTS = 8  # draws per row before a top-p row the candidates miss goes to bisection


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    """Raises ValueError naming a bad setting and what is accepted."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r}: must be a finite number >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: must be in (0, 1] (1 = off)")
    if isinstance(top_k, bool) or not (float(top_k).is_integer() and top_k >= 0):
        raise ValueError(f"top_k={top_k!r}: must be an integer >= 0 (0 = off)")


# --- the vocabulary in blocks ---------------------------------------------------------------


def _blocks(x: Array) -> Array:
    """[B, V] -> [B, NB, BLOCK], padded with -inf (never chosen) when BLOCK does not divide V."""
    b, v = x.shape
    pad = -v % BLOCK
    if pad:
        x = jnp.concatenate([x, jnp.full((b, pad), -jnp.inf, x.dtype)], axis=1)
    return x.reshape(b, -1, BLOCK)


def _per_block(blocks: Array, row_values: list[Array], fn) -> Array:
    """[B, NB]: fn(rows, *values) over the blocks as rows [B * NB, BLOCK], each of `row_values`
    ([B]) repeated per block as [B * NB, 1]; `fn` reduces each row to one number."""
    b, nb, k = blocks.shape
    rows = blocks.reshape(b * nb, k)
    values = [jnp.repeat(v, nb)[:, None] for v in row_values]
    return fn(rows, *values).reshape(b, nb)


def _block_max(blocks: Array) -> Array:
    return _per_block(blocks, [], lambda rows: rows.max(-1))


def _block_sums(blocks: Array, top: Array, inv_t: Array) -> Array:
    """Per block, the sum of exp((x - top) * inv_t): softmax(x * inv_t) unnormalised."""
    return _per_block(
        blocks, [top, inv_t], lambda rows, top, inv_t: jnp.exp((rows - top) * inv_t).sum(-1)
    )


def _first(hit: Array) -> Array:
    """Index of the first True per row (the last index if none)."""
    n = hit.shape[-1]
    return jnp.min(jnp.where(hit, jnp.arange(n, dtype=jnp.int32), n - 1), axis=-1)


def _take(x: Array, i: Array) -> Array:
    """x[b, i[b]] per row."""
    return jnp.take_along_axis(x, i[:, None], axis=1)[:, 0]


def _block_of(blocks: Array, i: Array) -> Array:
    """blocks[b, i[b]] per row: [B, BLOCK]."""
    return jnp.take_along_axis(blocks, i[:, None, None], axis=1)[:, 0]


def _argmax_in_blocks(blocks: Array, block_max: Array, vocab: int) -> Array:
    top = block_max.max(-1)
    block = _first(block_max == top[:, None])
    inner = _first(_block_of(blocks, block) == top[:, None])
    return jnp.minimum(block * BLOCK + inner, vocab - 1)


def first_argmax(x: Array) -> Array:
    """`jnp.argmax(x, axis=-1)` (the first index of the maximum) by blocks: each block's maximum
    (one pass), then the first block reaching the row's maximum, then the first index of it
    inside that block. 2 ms at [64, 151936] on CPU, where argmax's paired (value, index)
    reduction took 28 ms and a max, then a min of the indices where it is reached, 31."""
    rows = x.reshape(-1, x.shape[-1])  # any leading axes
    blocks = _blocks(rows)
    return _argmax_in_blocks(blocks, _block_max(blocks), x.shape[-1]).reshape(x.shape[:-1])


# --- drawing by inverse CDF -----------------------------------------------------------------


def _step_keys(keys: Array, step: Array) -> Array:
    """fold_in(keys[b], step[b]) per row; `step` a scalar or [B]."""
    steps = jnp.broadcast_to(jnp.asarray(step, jnp.int32), keys.shape[:1])
    return jax.vmap(jax.random.fold_in)(keys, steps)


def _uniforms(keys: Array, attempt: Array | None = None) -> Array:
    """One uniform in [0, 1) per row from keys[b], or from fold_in(keys[b], attempt)."""
    if attempt is not None:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, attempt)
    return jax.vmap(jax.random.uniform)(keys)


def _search(weights: Array, target: Array) -> tuple[Array, Array]:
    """(i, target - weights before i): the i where `target` falls in the running sum of
    `weights` [B, N] (>= 0), among entries of positive weight (float rounding can put a target
    at the very end)."""
    ends = jnp.cumsum(weights, axis=-1)
    n = weights.shape[-1]
    index = jnp.arange(n, dtype=jnp.int32)
    last = jnp.max(jnp.where(weights > 0, index, 0), axis=-1)
    i = jnp.minimum(jnp.sum(ends <= target[:, None], axis=-1, dtype=jnp.int32), last)
    return i, target - (_take(ends, i) - _take(weights, i))


def _draw_blocks(blocks: Array, sums: Array, top: Array, inv_t: Array, u: Array) -> Array:
    """A token per row drawn from softmax(x * inv_t) given the block sums of `_block_sums`."""
    block, rest = _search(sums, u * sums.sum(-1))
    weights = jnp.exp((_block_of(blocks, block) - top[:, None]) * inv_t[:, None])
    inner, _ = _search(weights, rest)
    return block * BLOCK + inner


def _draw_full(x: Array, u: Array) -> Array:
    """A token per row drawn from softmax(x) over the whole row (removed tokens at -1e30)."""
    blocks = _blocks(x)
    top = _block_max(blocks).max(-1)
    one = jnp.ones_like(top)
    return _draw_blocks(blocks, _block_sums(blocks, top, one), top, one, u)


# --- top-k / top-p --------------------------------------------------------------------------


def _candidates(blocks: Array, block_max: Array, c: int) -> tuple[Array, Array]:
    """The c largest logits per row, descending, and their token ids (ties: lower id first, as
    `jax.lax.top_k`). The c blocks with the largest maxima hold them: a block outside those has
    a maximum no larger than c blocks' maxima, each an earlier token in that order."""
    b, nb, k = blocks.shape
    # The barriers keep each top-k whole: XLA:CPU runs a top-k as a fast partial sort, but when
    # a later gather reads through its slice it sorts the whole array instead (80 ms, not 3).
    best = jax.lax.optimization_barrier(jax.lax.top_k(block_max, min(c, nb))[1])
    best = jnp.sort(best, axis=-1)  # in token order, so that ties still go to lower ids
    gathered = jnp.take_along_axis(blocks, best[:, :, None], 1).reshape(b, -1)
    values, at = jax.lax.top_k(gathered, c)
    values, at = jax.lax.optimization_barrier(values), jax.lax.optimization_barrier(at)
    return values, jnp.take_along_axis(best, at // k, axis=1) * k + at % k


def _filter_candidates(
    blocks, block_max, top, inv_t, total, top_k, top_p, vocab: int, count: int = CANDIDATES
):
    """(unnormalised probabilities of the kept candidates [B, C] (0: removed), their token ids
    [B, C], rows that need the exact path [B]) with C = `count` candidates; `total`: the rows'
    sums of `_block_sums`."""
    values, ids = _candidates(blocks, block_max, min(count, vocab))
    c = values.shape[-1]
    w = jnp.exp((values - top[:, None]) * inv_t[:, None])
    k_on = (top_k > 0) & (top_k < vocab)
    kth = _take(values, jnp.clip(top_k, 1, c) - 1)
    keep = ~k_on[:, None] | (values >= kth[:, None])
    mass = jnp.where(k_on, jnp.sum(jnp.where(keep, w, 0.0), -1), total)
    p_on = top_p < 1
    reached = jnp.cumsum(jnp.where(keep, w, 0.0), axis=-1) >= (top_p * mass)[:, None]
    n = jnp.sum(~reached, axis=-1)  # candidates before the mass reaches p; c: never
    pth = _take(values, jnp.minimum(n, c - 1))
    keep &= ~p_on[:, None] | (values >= pth[:, None])
    lowest_kept = jnp.min(jnp.where(keep, values, jnp.inf), axis=-1)
    maybe_more = (k_on | p_on) & (values[:, -1] >= lowest_kept) & (c < vocab)  # tied beyond
    exact = (k_on & (top_k >= c)) | (p_on & (n >= c)) | maybe_more
    return jnp.where(keep, w, 0.0), ids, exact


def top_k_mask(logits: Array, k: Array) -> Array:
    """Keeps the k highest logits per row (k <= 0: all; ties at the k-th all kept), by bisection
    of the threshold over the whole row. logits [B, V], k [B]."""
    count_ok = lambda x, t: jnp.sum(x >= t[:, None], axis=-1) >= k
    t = _largest_threshold(logits, logits.min(-1), logits.max(-1), count_ok)
    return jnp.where((k[:, None] > 0) & (logits < t[:, None]), _NEG, logits)


def top_p_mask(logits: Array, p: Array) -> Array:
    """Keeps the smallest set of most likely tokens whose mass reaches p (p >= 1: all; ties at
    the threshold all kept), by bisection over the whole row."""
    probs = jax.nn.softmax(logits, axis=-1)
    mass_ok = lambda x, t: jnp.sum(jnp.where(x >= t[:, None], x, 0.0), axis=-1) >= p
    t = _largest_threshold(probs, jnp.zeros_like(p), probs.max(-1), mass_ok)
    return jnp.where((p[:, None] < 1.0) & (probs < t[:, None]), _NEG, logits)


def _largest_threshold(values: Array, lo: Array, hi: Array, ok) -> Array:
    """Largest t in [lo, hi] (per row) with ok(values, t) true, for ok monotone decreasing in t."""

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        good = ok(values, mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
    return lo


def _exact_filter(logits, inv_t, top_k, top_p) -> Array:
    """The fallback: logits * inv_t with the tokens that top-k / top-p remove at -1e30, by
    bisection over the whole vocabulary."""
    scaled = logits * inv_t[:, None]
    any_k = jnp.any((top_k > 0) & (top_k < logits.shape[-1]))
    filtered = jax.lax.cond(any_k, lambda: top_k_mask(scaled, top_k), lambda: scaled)
    return top_p_mask(filtered, top_p)


# --- top-p by rejection ----------------------------------------------------------------------


def _in_top_p(blocks: Array, top: Array, inv_t: Array, total: Array, top_p, token) -> Array:
    """[B] bool: whether the row's `token` is in its top-p set (top-k off): the mass of the
    tokens more likely than it (a strictly greater logit) is < top_p; one pass."""
    b, nb, k = blocks.shape
    x = _take(blocks.reshape(b, nb * k), token)
    # Without the barrier XLA:CPU fuses the draw behind `token` into the pass and redoes it for
    # every logit: the draw and this test took 19 ms instead of 10 at [64, 151936].
    top, inv_t, x = jax.lax.optimization_barrier((top, inv_t, x))

    def more_likely(rows, top, inv_t, x):
        # exp of the tempered logit where rows > x, else of at most -120 (0 in float32): its
        # exponent's min with (rows - x) * 2^127 - 120, which is >= 0 for a difference of at
        # least 2^-120 (a smaller positive one, only possible between logits within 1e-36 of
        # each other, counts for less than its weight, or not at all: a tie).
        # XLA:CPU does not vectorise a comparison: jnp.where(rows > x, ...) took this pass from
        # 4 ms to 14 at [64, 151936], and a 0 / 1 step made of min / max products to 5.3.
        above = (rows - x) * _STEEP - 120.0
        return jnp.sum(jnp.exp(jnp.minimum((rows - top) * inv_t, above)), axis=-1)

    return _per_block(blocks, [top, inv_t, x], more_likely).sum(-1) < top_p * total


def in_top_p(logits: Array, temperature: Array, top_p: Array, token: Array) -> Array:
    """[B] bool: whether token[b] is in row b's top-p set of softmax(logits / temperature)
    (top-k off), by the rule that rejection sampling tests (for tests and inspection)."""
    blocks = _blocks(logits)
    inv_t = 1.0 / jnp.maximum(temperature, 1e-6)
    top = _block_max(blocks).max(-1)
    total = _block_sums(blocks, top, inv_t).sum(-1)
    return _in_top_p(blocks, top, inv_t, total, top_p, token)


def _draw_top_p(blocks, sums, top, inv_t, top_p, step_keys, first, rows, attempts: int):
    """Top-p draws by rejection for `rows` [B] (top-k off), given `first`, their draws from the
    whole softmax with the step's uniform: draw i (i >= 1) uses fold_in(step key, i). Returns
    (tokens, draws made per row (0 outside `rows`), rows still rejected after `attempts`).

    The first draws are tested in one pass over the batch. The rows it rejects (about 1 - p of
    them) draw again one row at a time, so that a further attempt reads that row's logits only
    (gathering them 8 rows at a time cost 1 ms more per step at [64, 151936])."""
    total = sums.sum(-1)
    kept = ~rows | _in_top_p(blocks, top, inv_t, total, top_p, first)

    def next_row(state):
        token, kept, draws, pending = state
        i = jnp.argmax(pending)  # the first row still pending
        at = lambda x: jax.lax.dynamic_index_in_dim(x, i)
        blocks_, sums_, total_, top_, inv_t_, p_, keys_ = map(
            at, (blocks, sums, total, top, inv_t, top_p, step_keys)
        )

        def again(state):
            attempt, token, _ = state
            u = _uniforms(keys_, attempt)
            token = _draw_blocks(blocks_, sums_, top_, inv_t_, u)
            return attempt + 1, token, _in_top_p(blocks_, top_, inv_t_, total_, p_, token)

        more = lambda state: (state[0] < attempts) & ~state[2][0]
        state = (jnp.int32(1), at(token), jnp.zeros(1, bool))
        tried, token_, kept_ = jax.lax.while_loop(more, again, state)
        put = lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y, i, 0)
        return put(token, token_), put(kept, kept_), put(draws, tried[None]), put(pending, False)

    pending = ~kept if attempts > 1 else jnp.zeros_like(kept)
    state = (first, kept, rows.astype(jnp.int32), pending)
    token, kept, draws, _ = jax.lax.while_loop(lambda s: jnp.any(s[3]), next_row, state)
    return token, draws, ~kept


# --- what the step records of the logits ---------------------------------------------------


def logprob_scale(temperature: Array) -> Array:
    """1 / T per row, the scale the recorded log-probs read the logits at: 1 for greedy rows."""
    return 1.0 / jnp.where(temperature > 0, temperature, 1.0)


def logprob_and_certainty(
    logits: Array, token: Array, temperature: Array, known_norm: tuple[Array, Array] | None = None
) -> tuple[Array, Array]:
    """Per row, ([B] log softmax(logits / T)[token] (T = 1 for greedy rows), [B] self-certainty
    KL(Uniform || softmax(logits)) = logsumexp - mean - log V), by the blocks: the maximum, the
    exp-sums at 1 and (for rows at a T neither 0 nor 1) at 1 / T, and the sum, each one pass and
    no [B, V] result. `known_norm`: (rows [B] bool, logsumexp(logits / T) [B]) for rows whose
    tempered normaliser is already known (`choose_tokens_and_norm`'s, when the choice read these
    very logits): the pass at 1 / T runs only if some other row needs it. 3.5 ms at
    [64, 151936] on CPU (6.3 when the pass at 1 / T runs), where `jax.nn.logsumexp` twice and a
    mean took 28."""
    v = logits.shape[-1]
    blocks = _blocks(logits)
    top = _block_max(blocks).max(-1)
    total = _block_sums(blocks, top, jnp.ones_like(top)).sum(-1)
    inv_t = logprob_scale(temperature)
    known, norm = known_norm if known_norm is not None else (jnp.zeros_like(inv_t, bool), top)
    norm_t = jax.lax.cond(
        jnp.any((inv_t != 1) & ~known),
        lambda: top * inv_t + jnp.log(_block_sums(blocks, top, inv_t).sum(-1)),
        lambda: top + jnp.log(total),  # right for every row with T 0 or 1
    )
    logprob = _take(logits, token) * inv_t - jnp.where(known, norm, norm_t)
    if v % BLOCK:  # the blocks are padded with -inf: sum the rows as they are
        row_sum = logits.sum(-1)
    else:
        row_sum = _per_block(blocks, [], lambda rows: rows.sum(-1)).sum(-1)
    return logprob, top + jnp.log(total) - row_sum / v - math.log(v)


# --- the choice -----------------------------------------------------------------------------


def _is_filtered(temperature, top_k, top_p, vocab: int) -> Array:
    return (temperature > 0) & (((top_k > 0) & (top_k < vocab)) | (top_p < 1))


def choose_tokens(
    logits: Array, keys: Array, step: Array, temperature: Array, top_k: Array, top_p: Array
) -> Array:
    """One token per row: `first_argmax` where temperature is 0, else a draw from the softmax
    of logits / temperature filtered by the row's top-k (<= 0: off) and top-p (>= 1: off).

    logits [B, V]; keys [B] PRNG keys; step a scalar or [B] (folded into the row's key);
    temperature, top_p [B] float; top_k [B] int.
    """
    return choose_tokens_and_paths(logits, keys, step, temperature, top_k, top_p)[0]


def choose_tokens_and_norm(
    logits: Array, keys: Array, step: Array, temperature: Array, top_k: Array, top_p: Array
) -> tuple[Array, Array]:
    """`choose_tokens`, and logsumexp(logits / T) of each sampled row (which its draw computed;
    0 for greedy rows): `logprob_and_certainty` takes it instead of a pass of its own."""
    tokens, _, _, log_norm = choose_tokens_and_paths(logits, keys, step, temperature, top_k, top_p)
    return tokens, log_norm


def choose_tokens_and_paths(
    logits: Array,
    keys: Array,
    step: Array,
    temperature: Array,
    top_k: Array,
    top_p: Array,
    attempts: int = REJECTION_ATTEMPTS,
) -> tuple[Array, Array, Array, Array]:
    """`choose_tokens`, with `attempts` draws at most per rejection row, the paths taken and what
    the draw knew of the logits: (tokens [B], rejection draws made per row [B] (0: not that
    path), rows drawn by bisection [B] bool, logsumexp(logits / T) per sampled row [B] (0 for
    greedy rows, and for every row of an all-greedy batch))."""
    vocab = logits.shape[-1]
    blocks = _blocks(logits)
    block_max = _block_max(blocks)
    greedy = _argmax_in_blocks(blocks, block_max, vocab)
    none = jnp.zeros(greedy.shape, jnp.int32), jnp.zeros(greedy.shape, bool)

    def sample():
        step_keys = _step_keys(keys, step)
        u = _uniforms(step_keys)
        inv_t = 1.0 / jnp.maximum(temperature, 1e-6)
        top = block_max.max(-1)
        sums = _block_sums(blocks, top, inv_t)
        plain = _draw_blocks(blocks, sums, top, inv_t, u)
        filtered = _is_filtered(temperature, top_k, top_p, vocab)

        def with_filters():
            total = sums.sum(-1)
            k_on = (top_k > 0) & (top_k < vocab)
            # Each candidate weighs at most 1 (exp of (x - top) / T): a top-p row with
            # p * total > 2C cannot find its set among them (a flat row), so rejection draws it
            # and the candidates are not looked for when no other row needs them.
            beyond = filtered & ~k_on & (top_p * total > 2 * CANDIDATES)

            def from_candidates():
                def draw(count: int):
                    args = (top, inv_t, total, top_k, top_p, vocab, count)
                    kept, ids, exact = _filter_candidates(blocks, block_max, *args)
                    return _take(ids, _search(kept, u * kept.sum(-1))[0]), exact

                # the C only for the rows the few do not settle: whether a row reads them
                # depends on the row alone, never on its neighbours
                drawn, exact = draw(FEW_CANDIDATES)
                more = filtered & ~beyond & exact

                def with_more():
                    drawn_c, exact_c = draw(CANDIDATES)
                    return jnp.where(more, drawn_c, drawn), jnp.where(more, exact_c, exact)

                return jax.lax.cond(jnp.any(more), with_more, lambda: (drawn, exact))

            drawn, exact = jax.lax.cond(
                jnp.any(filtered & ~beyond), from_candidates, lambda: (plain, beyond)
            )
            exact = (exact | beyond) & filtered
            by_rejection = exact & ~k_on

            def reject():
                args = (blocks, sums, top, inv_t, top_p, step_keys, plain, by_rejection)
                token, draws, rejected = _draw_top_p(*args, attempts)
                return jnp.where(by_rejection, token, drawn), draws, rejected

            drawn, draws, rejected = jax.lax.cond(
                jnp.any(by_rejection), reject, lambda: (drawn, *none)
            )
            # A row rejected `attempts` times draws by bisection with a uniform no attempt used,
            # so that draw is independent of the rejections and follows the filtered softmax q
            # (bisection keeps the set the rejection test keeps: the sort's, ties included).
            # With m the top-p set's mass, the row's token is then x with probability
            # sum_i (1 - m)^(i - 1) m q(x) over the attempts, plus (1 - m)^attempts q(x): q(x).
            bisect = (exact & k_on) | rejected
            u_exact = jnp.where(rejected, _uniforms(step_keys, attempts), u)
            drawn = jax.lax.cond(
                jnp.any(bisect),
                lambda: jnp.where(
                    bisect, _draw_full(_exact_filter(logits, inv_t, top_k, top_p), u_exact), drawn
                ),
                lambda: drawn,
            )
            return jnp.where(filtered, drawn, plain), draws, bisect

        drawn, draws, bisect = jax.lax.cond(jnp.any(filtered), with_filters, lambda: (plain, *none))
        log_norm = top * inv_t + jnp.log(sums.sum(-1))
        return jnp.where(temperature > 0, drawn, greedy), draws, bisect, log_norm

    no_norm = jnp.zeros(greedy.shape, logits.dtype)
    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda: (greedy, *none, no_norm))


def kept_tokens(logits: Array, temperature: Array, top_k: Array, top_p: Array) -> Array:
    """[B, V] bool: the tokens that `choose_tokens` draws from in each sampled row (for tests
    and inspection; it computes every path; top-p rows the candidates miss as bisection keeps
    them, the set that rejection sampling's `in_top_p` keeps too)."""
    vocab = logits.shape[-1]
    blocks = _blocks(logits)
    block_max = _block_max(blocks)
    inv_t = 1.0 / jnp.maximum(temperature, 1e-6)
    top = block_max.max(-1)
    total = _block_sums(blocks, top, inv_t).sum(-1)
    args = (top, inv_t, total, top_k, top_p, vocab)
    kept, ids, exact = _filter_candidates(blocks, block_max, *args)
    rows = jnp.arange(logits.shape[0])[:, None]
    from_candidates = jnp.zeros(logits.shape, bool).at[rows, ids].set(kept > 0)
    from_exact = _exact_filter(logits, inv_t, top_k, top_p) > _NEG / 2
    everything = logits > -jnp.inf
    filtered = _is_filtered(jnp.ones_like(temperature), top_k, top_p, vocab)
    chosen = jnp.where(exact[:, None], from_exact, from_candidates)
    return jnp.where(filtered[:, None], chosen, everything)
