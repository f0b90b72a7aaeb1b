"""Continuous batching: a fixed number of decode slots, fed from a queue of requests.

    requests (prompt ids, mode row, sampling row, max_new_tokens, key, sample indices)
      --prefill: a few requests' prompts at once, each prompt once (its n samples share it)
      --insert: one sample's prompt KV, hidden state, mode and sampling rows into a free slot, or
        into a staging row (up to MAX_STAGED samples wait there, prefilled, inside the loop)
      --run_steps: every slot decodes; a row that ends hands its slot to the next staged sample
        between two steps (no return to the host), until one ends with none left to take it
      --> finished samples, as they end (`Sample`: host arrays)

The programs have fixed shapes (prefill and insert per (rows, prompt bucket), the step loop once
per slot count, with and without staging), so requests come and go without recompiling. Sample
j of a request draws from fold_in(request key, j), keyed again by its own step count, so its
tokens depend on (seed, request, sample index) only: not on its slot, its neighbours, the number
of slots or the order in which samples end (the JetStream prefill / insert / generate pattern,
with multi-sampling).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import os
import time
import weakref
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxthink.decode import sampler
from jaxthink.decode.sampler import LoopState, Sampling, bucket, init_loop, left_pad, params_dtype
from jaxthink.distributed import to_host
from jaxthink.models.qwen import KVCache, forward_cached, init_cache
from jaxthink.policies import policy
from jaxthink.policies.policy import PolicyParams, PolicyTokens
from jaxthink.sharding import batch_size_multiple, mesh_of

Array = jax.Array
KV_BUDGET_FRACTION = 0.25  # default share of the device's memory the slots' caches may take
MAX_DEFAULT_SLOTS = {"cpu": 64}  # by backend; elsewhere 512: where a bigger batch stops paying
MAX_PREFILL_ROWS = 16  # prompts prefilled together
MAX_STAGED = 16  # samples waiting inside the step loop for a slot, at most (and at most the slots)
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weight refs, layouts)


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt and how to sample it; `samples` are the sample indices wanted (each its own
    key, fold_in(key, j)), all from one prefill."""

    prompt: Sequence[int]
    key: Array  # a PRNG key
    mode: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # PolicyParams' phase .. extend
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 512
    samples: tuple[int, ...] = (0,)
    base_prompt: Sequence[int] | None = None  # hybrid decoding: the prompt as the base reads it


@dataclasses.dataclass
class Sample:
    """A finished sample, on the host."""

    request: int  # index into the requests given to `Engine.run`
    index: int  # the sample index j
    tokens: np.ndarray  # [n] int32, the end token included
    logprobs: np.ndarray  # [n] float32 under the sampling temperature
    phases: np.ndarray  # [n] int8 phase each token was emitted in
    finish: int  # sampler.EOS / STOP / LENGTH
    certainty_sum: float
    thought: bool
    think_count: int
    answer_count: int
    forced_end: bool
    seconds: float  # wall time of the steps it ran (see `Timeline`), compilation left out
    steered: np.ndarray | None = None  # hybrid decoding: [n] bool, the two greedy tokens differed
    latents: np.ndarray | None = None  # [n] int32 latent picked at each token
    coefficients: np.ndarray | None = None  # [n] int32 index of the coefficient emitted, -1 none


@dataclasses.dataclass
class Stats:
    """What a run did: slot occupancy = generated tokens / slot-steps; `compile_seconds`: time
    spent tracing and compiling programs (calls return once dispatched, so a call that compiled
    took that long) and setting up the slots and the weights' layouts."""

    slots: int = 0
    kv_bytes_per_slot: int = 0
    steps: int = 0
    slot_steps: int = 0
    tokens: int = 0
    prefills: int = 0
    prefilled_rows: int = 0
    compile_seconds: float = 0.0

    @property
    def occupancy(self) -> float:
        return self.tokens / max(self.slot_steps, 1)


def staging_rows(samples: int, slots: int) -> int:
    """Rows of staging (prefilled samples waiting in the loop) for `samples` over `slots`."""
    return min(slots, MAX_STAGED) if samples > slots else 0


def kv_bytes_per_slot(cfg, length: int, dtype) -> int:
    """Bytes of one slot's KV cache: keys and values of every layer over `length` positions."""
    per_position = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    return per_position * length * jnp.dtype(dtype).itemsize


def memory_budget_bytes() -> int:
    """KV_BUDGET_FRACTION of this process's first device's memory (the host's RAM on CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    total = stats.get("bytes_limit") or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(KV_BUDGET_FRACTION * total)


def check_slots(slots: int) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots={slots!r}: the number of decode slots must be an integer >= 1")
    return slots


# ---------------------------------------------------------------------------------------------
# The compiled verbs


@struct.dataclass
class Prefix:
    """Prefilled prompts: their cache, the last position's residual stream after the last
    block (the decode step makes the logits from it) and, if asked for, after one block."""

    cache: KVCache  # exactly P slots
    hidden: Array  # [R, E]
    captured: Array | None = None  # [R, E]


@functools.partial(jax.jit, static_argnames=("graphdef", "capture_layer"))
def prefill(graphdef, params, tokens: Array, valid: Array, capture_layer=None) -> Prefix:
    """Left-padded prompts [R, P] into a cache of exactly P slots."""
    sampler.TRACE_COUNT["prefill"] += 1
    model = nnx.merge(graphdef, params)
    cache = init_cache(model.cfg, tokens.shape[0], tokens.shape[1], params_dtype(params))
    out = forward_cached(
        model, tokens, valid, cache, last_only=True, capture_layer=capture_layer, return_hidden=True
    )
    captured = None if capture_layer is None else out[2][:, 0]
    return Prefix(out[1], out[0][:, 0], captured)


def put(big: Array, x: Array, slot) -> Array:
    """big[slot] = x."""
    return jax.lax.dynamic_update_index_in_dim(big, x, slot, 0)


def put_cache(cache: KVCache, prefix: KVCache, row, slot) -> KVCache:
    """Slot `slot` of `cache` takes row `row` of a prefill's cache: its keys and values at
    positions 0..P-1, its validity, write index and RoPE position."""
    heads = prefix.k[0].shape[0] // prefix.valid.shape[0]

    def put_kv(big, small):  # row's kv heads (rows row*K ..) at the slot's (rows slot*K ..)
        piece = jax.lax.dynamic_slice_in_dim(small, row * heads, heads, 0).astype(big.dtype)
        return jax.lax.dynamic_update_slice(big, piece, (slot * heads, 0, 0))

    p = prefix.length
    valid = jnp.zeros((cache.length,), bool).at[:p].set(prefix.valid[row])
    return KVCache(
        k=tuple(put_kv(b, s) for b, s in zip(cache.k, prefix.k, strict=True)),
        v=tuple(put_kv(b, s) for b, s in zip(cache.v, prefix.v, strict=True)),
        valid=put(cache.valid, valid, slot),
        index=put(cache.index, jnp.int32(p), slot),
        pos=put(cache.pos, prefix.pos[row], slot),
    )


@functools.partial(jax.jit, donate_argnames=("state",))
def insert(state: LoopState, prefix, row, slot, pparams, sampling, sample, max_new):
    """Slot `slot` of `state` takes row `row` of a prefill (`prefix`: a `Prefix`, or in hybrid
    decoding the (thinking, base) pair): its prompt's cache, last hidden state, and a fresh
    policy state for `pparams` [1], with `sampling` [1] (its key the request's: sample `sample`
    draws from fold_in(key, sample)) and `max_new`. Every argument but the state and the prefill
    may be a host (numpy) value."""
    sampler.TRACE_COUNT["insert"] += 1
    sampling = sampling.replace(keys=jax.vmap(jax.random.fold_in)(sampling.keys, sample[None]))
    put_rows = lambda big, small: jax.tree.map(
        lambda b, x: jax.lax.dynamic_update_slice_in_dim(b, x, slot, 0), big, small
    )
    hybrid = state.hybrid
    if hybrid is not None:
        prefix, base = prefix
        hybrid = hybrid.insert(base, prefix.captured[row], row, slot)
    return state.replace(
        cache=put_cache(state.cache, prefix.cache, row, slot),
        hidden=put(state.hidden, prefix.hidden[row].astype(state.hidden.dtype), slot),
        done=put(state.done, False, slot),
        lengths=put(state.lengths, 0, slot),
        finish=put(state.finish, sampler.RUNNING, slot),
        certainty_sum=put(state.certainty_sum, 0.0, slot),
        policy=put_rows(state.policy, policy.init_state(pparams, state.policy.queue.shape[1])),
        pparams=put_rows(state.pparams, pparams),
        sampling=put_rows(state.sampling, sampling),
        max_new=put(state.max_new, max_new, slot),
        hybrid=hybrid,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "slots", "length", "max_new", "queue", "dtype"))
def empty_slots(cfg, slots: int, length: int, max_new: int, queue: int, dtype) -> LoopState:
    """`slots` free slots (all done) with caches of `length` positions."""
    zeros = jnp.zeros((slots,), jnp.int32)
    pparams = PolicyParams(zeros, zeros, zeros, zeros, zeros)
    hidden = jnp.zeros((slots, cfg.hidden_size), dtype)
    cache = init_cache(cfg, slots, length, dtype)
    state = init_loop(hidden, cache, pparams, queue, max_new)
    return state.replace(
        done=jnp.ones((slots,), bool), sampling=sampler.greedy_rows(slots), max_new=zeros
    )


@struct.dataclass
class Refills:
    """Staged samples and what the step loop did with them: `order[:count]` are the staging rows
    holding samples, first to go first; the first `taken` of them went into slots, the e-th into
    slot `slot[e]` after step `step[e]` of the call, and `out[e]` holds what that slot's previous
    sample had produced (`_outputs`' arrays, a row each)."""

    order: Array  # [Q] int32
    count: Array  # int32
    taken: Array  # int32
    slot: Array  # [Q] int32
    step: Array  # [Q] int32
    out: dict


def take_row(dst: LoopState, src: LoopState, row, slot) -> LoopState:
    """`dst` with slot `slot` replaced by `src`'s row `row`, in every array of the state (an
    array holding several rows per slot, as a KV cache its kv heads, moves all of them)."""
    slots, rows = dst.done.shape[0], src.done.shape[0]

    def one(d, x):
        per = d.shape[0] // slots
        assert d.shape[0] == per * slots and x.shape[0] == per * rows, (d.shape, x.shape)
        piece = jax.lax.dynamic_slice_in_dim(x, row * per, per, 0)
        return jax.lax.dynamic_update_slice_in_dim(d, piece, slot * per, 0)

    return jax.tree.map(one, dst, src)


def refill(staging: LoopState):
    """The step loop's `between`: while a row that was running has ended and staged samples are
    left, its outputs go to `out` and the next staged sample takes its slot."""

    def between(i, s: LoopState, running, r: Refills):
        def more(carry):
            s, r = carry
            return jnp.any(running & s.done) & (r.taken < r.count)

        def one(carry):
            s, r = carry
            slot, e = jnp.argmax(running & s.done), r.taken
            out = jax.tree.map(lambda o, x: put(o, x[slot], e), r.out, _outputs(s))
            s = take_row(s, staging, r.order[e], slot)
            slots, steps = put(r.slot, slot, e), put(r.step, i, e)
            return s, r.replace(taken=e + 1, slot=slots, step=steps, out=out)

        return jax.lax.while_loop(more, one, (s, r))

    return between


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"), donate_argnames=("state",))
def run_steps(
    graphdef,
    params,
    state: LoopState,
    tok,
    pad_id,
    max_steps,
    until_one_ends,
    head=None,
    mesh=None,
    steer=None,
    staging: LoopState | None = None,
    order=None,
    count=None,
):
    """`sampler.loop` over the slots: until every row has ended, or `max_steps` steps have run,
    or (with `until_one_ends`) a row that was running has ended and no staged sample is left to
    take its slot (the host then refills it). `staging` (a LoopState whose rows `insert` filled)
    with `order` [Q] and `count`: the staged samples, taken in that order. Both limits and the
    order are traced values, so changing them never recompiles. `head` is `output_matrix`'s, made
    once by the caller (this runs many times a generation); `steer` makes it hybrid decoding
    (see `sampler.step`). Returns (steps run, state, `Refills` or None)."""
    sampler.TRACE_COUNT["decode"] += 1
    model = nnx.merge(graphdef, params)
    between = refills = None
    if staging is not None:
        q = order.shape[0]
        zeros = jnp.zeros((q,), jnp.int32)
        out = jax.tree.map(lambda x: jnp.zeros((q, *x.shape[1:]), x.dtype), _outputs(state))
        refills, between = Refills(order, count, jnp.int32(0), zeros, zeros, out), refill(staging)
    run = (model, head, state, tok, pad_id, max_steps, until_one_ends, mesh, steer, between)
    return sampler.loop(*run, refills)


# ---------------------------------------------------------------------------------------------
# The host side: a queue, the slots, finished samples out


class Engine:
    """Decode slots over one model's weights, for any tokenizer-side `PolicyTokens`.

    With `hybrid` (a `jaxthink.hybrid.decoding.Hybrid`: a base model and its steering) the model is
    the thinking model of hybrid decoding: every request also gives the base model's prompt, each
    slot holds both models' caches, and samples carry what was steered."""

    def __init__(self, model, pad_id: int = 0, hybrid=None):
        self.model = model
        self.graphdef, self.params = nnx.split(model)
        self.cfg = model.cfg
        self.pad_id = pad_id
        self.hybrid = hybrid
        self.mesh = mesh_of(self.params)
        self.stats = Stats()

    def decoding(self, slots: int):
        """(graphdef, params, head) the step loop runs on for `slots` rows: the weights as
        `sampler.for_decoding` lays them out and `sampler.output_matrix`'s head. Where either is
        a copy it is kept with the model and reused while the model holds the same weight arrays
        (checked through weak references, so weights an optimizer has replaced are not kept
        alive), so only the first call pays for it."""
        leaves = jax.tree.leaves(self.params)
        kept = _LAYOUTS.get(self.model)
        if (
            kept is None
            or len(kept[0]) != len(leaves)
            or any(ref() is not leaf for ref, leaf in zip(kept[0], leaves, strict=True))
        ):
            kept = (tuple(weakref.ref(leaf) for leaf in leaves), {})
        if slots not in kept[1]:
            graphdef, params = sampler.for_decoding(self.graphdef, self.params, slots)
            head = output_matrix(self.model, slots)
            if params is self.params and head is None:
                return graphdef, params, head  # nothing was copied: nothing to keep
            kept[1][slots] = (graphdef, params, head)
            _LAYOUTS[self.model] = kept
        return kept[1][slots]

    def slots_for(self, requests: Sequence[Request], slots: int | None) -> int:
        """The slot count: `slots`, else as many as the samples, within MAX_DEFAULT_SLOTS and
        what the memory budget holds (with the staging rows, where samples outnumber the slots);
        rounded up to a multiple of the mesh's batch axes."""
        wanted = sum(len(r.samples) for r in requests)
        if slots is None:
            per_slot = kv_bytes_per_slot(self.cfg, self.cache_length(requests), self.dtype)
            if self.hybrid is not None:
                per_slot += self.hybrid.kv_bytes_per_slot(self.cache_length(requests, base=True))
            cap = MAX_DEFAULT_SLOTS.get(jax.default_backend(), 512)
            rows = memory_budget_bytes() // per_slot  # slots and staging rows together
            slots = min(wanted, cap, rows)
            while slots > 1 and slots + staging_rows(wanted, slots) > rows:
                slots -= 1
            slots = max(1, slots)
        multiple = batch_size_multiple(self.mesh)
        return -(-check_slots(slots) // multiple) * multiple

    @property
    def dtype(self):
        return params_dtype(self.params)

    @staticmethod
    def cache_length(requests: Sequence[Request], base: bool = False) -> int:
        """Positions a slot's cache holds: the longest prompt's bucket plus max_new_tokens (of the
        base model's prompts with `base`)."""
        prompt = lambda r: r.base_prompt if base else r.prompt
        return bucket(max(len(prompt(r)) for r in requests)) + max_new_of(requests)

    def run(
        self, requests: Sequence[Request], tok: PolicyTokens, slots: int | None = None
    ) -> Iterator[Sample]:
        """Yields every wanted sample of `requests` as it ends (not in request order)."""
        if not requests or not any(r.samples for r in requests):
            return
        slots = self.slots_for(requests, slots)
        wanted = sum(len(r.samples) for r in requests)
        staging_count = staging_rows(wanted, slots)
        length, new = self.cache_length(requests), max_new_of(requests)
        self.stats.slots = slots
        self.stats.kv_bytes_per_slot = kv_bytes_per_slot(self.cfg, length, self.dtype)
        if self.hybrid is not None and any(r.base_prompt is None for r in requests):
            raise ValueError("hybrid decoding: every request needs the base model's prompt")
        t0 = time.perf_counter()  # setting up: the empty slots and the weights' layouts
        queue_width = tok.end_seq.shape[0]
        state = self._empty(requests, slots, queue_width)
        staging = self._empty(requests, staging_count, queue_width) if staging_count else None
        steer = None if self.hybrid is None else self.hybrid.steer(slots)
        decoding = jax.block_until_ready(self.decoding(slots))
        self.stats.compile_seconds += time.perf_counter() - t0
        waiting = collections.deque(range(len(requests)))  # not yet prefilled
        ready: collections.deque = collections.deque()  # (request, j, prefill, row)
        occupant: list[tuple[int, int, int] | None] = [None] * slots  # (request, j, first step)
        staged: dict[int, tuple[int, int]] = {}  # staging row -> (request, j)
        order: collections.deque = collections.deque()  # staging rows, first to go first
        timeline = Timeline()
        pad = jnp.int32(self.pad_id)

        def next_ready():
            if not ready:
                ready.extend(self._prefill(requests, waiting))
            return ready.popleft()

        def finished(host, row, who, end_step):
            r, j, first = who
            seconds = timeline.seconds(first, end_step)
            sample = _sample(host, row, r, j, seconds)
            self.stats.tokens += len(sample.tokens)
            return sample

        while waiting or ready or order or any(o is not None for o in occupant):
            for slot in (i for i, o in enumerate(occupant) if o is None):
                if not (ready or waiting):
                    break
                r, j, prefix, row = next_ready()
                state = self._call(insert, state, prefix, row, slot, *self._row(requests[r], j))
                occupant[slot] = (r, j, self.stats.steps)
            for row in range(staging_count):
                if row in staged or not (ready or waiting):
                    continue
                r, j, prefix, prow = next_ready()
                args = (prefix, prow, row, *self._row(requests[r], j))
                staging = self._call(insert, staging, *args)
                staged[row] = (r, j)
                order.append(row)
            graphdef, params, head = decoding
            more = jnp.bool_(bool(waiting or ready))  # what the host holds: stop as one ends
            queue = ()
            if staging is not None:
                rows = np.full((staging_count,), -1, np.int32)
                rows[: len(order)] = list(order)
                queue = (staging, rows, np.int32(len(order)))
            start, first_step = self._clock(), self.stats.steps
            limits = (pad, jnp.int32(new), more)
            call = (graphdef, params, state, tok, *limits, head, self.mesh, steer, *queue)
            steps, state, refills = self._call(run_steps, *call)
            done = np.asarray(to_host(state.done))
            steps = int(steps)
            timeline.add(first_step, steps, start, self._clock())
            self.stats.steps += steps
            self.stats.slot_steps += steps * slots
            taken = 0 if refills is None else int(refills.taken)
            if taken:  # samples that ended inside the loop, their slots taken by staged ones
                host = to_host(refills.replace(order=None))
                for e in range(taken):
                    slot, after = int(host.slot[e]), first_step + int(host.step[e])
                    yield finished(host.out, e, occupant[slot], after + 1)
                    occupant[slot] = (*staged.pop(order.popleft()), after + 1)
            ended = [i for i, o in enumerate(occupant) if o is not None and done[i]]
            if ended:
                host = to_host(_outputs(state))
                for slot in ended:
                    r, j, first = occupant[slot]
                    occupant[slot] = None
                    yield finished(host, slot, (r, j, first), first + int(host["lengths"][slot]))

    def _empty(self, requests: Sequence[Request], rows: int, queue_width: int) -> LoopState:
        """`rows` free rows (slots, or staging rows) with caches long enough for `requests`."""
        length, new = self.cache_length(requests), max_new_of(requests)
        state = empty_slots(self.cfg, rows, length, new, queue_width, self.dtype)
        if self.hybrid is None:
            return state
        base_length = self.cache_length(requests, base=True)
        return state.replace(hybrid=self.hybrid.empty(rows, base_length, new))

    def _clock(self) -> float:
        """Seconds that leave out compilation: a sample's time runs on this clock."""
        return time.perf_counter() - self.stats.compile_seconds

    def _call(self, fn, *args):
        """fn(*args), its tracing and compiling (if it did) counted in `compile_seconds`, which a
        sample's seconds leave out."""
        before = sum(sampler.TRACE_COUNT.values())
        t0 = time.perf_counter()
        out = fn(*args)
        if sum(sampler.TRACE_COUNT.values()) != before:
            self.stats.compile_seconds += time.perf_counter() - t0
        return out

    def _prefill(self, requests, waiting: collections.deque):
        """Prefills the next MAX_PREFILL_ROWS requests (fewer at the end of the queue) in one
        batch of a power-of-two row count; returns their samples, ready to insert as slots free
        up (one prefill call serves many inserts)."""
        picked = [waiting.popleft() for _ in range(min(MAX_PREFILL_ROWS, len(waiting)))]
        rows = 1 << (len(picked) - 1).bit_length()
        prompts = [list(requests[r].prompt) for r in picked]
        prompts += [prompts[-1]] * (rows - len(picked))
        tokens, valid = left_pad(prompts, self.pad_id)
        hybrid = self.hybrid
        capture = None if hybrid is None else hybrid.steering.sae_layer
        prefix = self._call(prefill, self.graphdef, self.params, tokens, valid, capture)
        if hybrid is not None:  # the base model's prompts, its steering block captured
            bases = [list(requests[r].base_prompt) for r in picked]
            bases += [bases[-1]] * (rows - len(picked))
            tokens, valid = left_pad(bases, self.pad_id)
            base = self._call(prefill, *hybrid.split, tokens, valid, hybrid.steering.layer)
            prefix = (prefix, base)
        self.stats.prefills += 1
        self.stats.prefilled_rows += len(picked)
        return [(r, j, prefix, row) for row, r in enumerate(picked) for j in requests[r].samples]

    @staticmethod
    def _row(request: Request, j: int):
        """`insert`'s (pparams [1], sampling [1], sample index, max_new) for sample j of
        `request`, as host values (no device work until `insert` runs)."""
        pparams = PolicyParams(*(np.array([x], np.int32) for x in request.mode))
        sampling = Sampling(
            temperature=np.array([request.temperature], np.float32),
            top_k=np.array([request.top_k], np.int32),
            top_p=np.array([request.top_p], np.float32),
            keys=request.key[None],
        )
        return pparams, sampling, np.int32(j), np.int32(request.max_new_tokens)


def output_matrix(model, rows: int):
    """`sampler.output_matrix`'s head for `rows` rows, as an array of its own (made outside any
    loop, so it needs no barrier against fusion), or None."""
    if not sampler.transposed_head(model.cfg, rows):
        return None
    return _transpose(model.embed[...])


_transpose = jax.jit(jnp.transpose)


def max_new_of(requests: Sequence[Request]) -> int:
    return max(r.max_new_tokens for r in requests)


def _outputs(state: LoopState) -> dict:
    p, h = state.policy, state.hybrid
    out = dict(
        tokens=state.tokens,
        logprobs=state.logprobs,
        phases=state.phases,
        lengths=state.lengths,
        finish=state.finish,
        certainty_sum=state.certainty_sum,
        thought=p.thought,
        think_count=p.think_count,
        answer_count=p.answer_count,
        forced_end=p.forced_end,
    )
    if h is not None:
        out.update(steered=h.steered, latents=h.latents, coefficients=h.coefficient)
    return out


def _sample(host: dict, slot: int, request: int, j: int, seconds: float) -> Sample:
    n = int(host["lengths"][slot])
    row = lambda name: np.array(host[name][slot, :n]) if name in host else None
    scalar = lambda name: host[name][slot].item()
    return Sample(
        request=request,
        index=j,
        tokens=row("tokens"),
        logprobs=row("logprobs"),
        phases=row("phases"),
        finish=scalar("finish"),
        certainty_sum=scalar("certainty_sum"),
        thought=scalar("thought"),
        think_count=scalar("think_count"),
        answer_count=scalar("answer_count"),
        forced_end=scalar("forced_end"),
        seconds=seconds,
        steered=row("steered"),
        latents=row("latents"),
        coefficients=row("coefficients"),
    )


class Timeline:
    """When the engine's steps ran: each call of the step loop as (first step, steps, start,
    end) on the engine's clock, steps spread evenly over their call."""

    def __init__(self):
        self.calls: list[tuple[int, int, float, float]] = []
        self.firsts: list[int] = []  # each call's first step, ascending

    def add(self, first: int, steps: int, start: float, end: float) -> None:
        if steps:
            self.calls.append((first, steps, start, end))
            self.firsts.append(first)

    def at(self, step: int, starting: bool) -> float:
        """The time step `step` began (`starting`) or step `step - 1` ended."""
        i = bisect.bisect_right(self.firsts, step if starting else step - 1) - 1
        first, steps, start, end = self.calls[max(i, 0)]
        return start + (end - start) * min(max(step - first, 0), steps) / steps

    def seconds(self, first: int, end: int) -> float:
        """Seconds from the start of step `first` to the end of step `end - 1`."""
        return self.at(end, starting=False) - self.at(first, starting=True)
