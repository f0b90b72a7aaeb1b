"""`jaxthink.generate`: prompts and modes in, one `Generation` per sample out.

This layer does everything that is not compiled: it checks the request (before any compilation),
formats prompts with the checkpoint's chat template plus each mode's prefill, left-pads the
batch, builds the per-row arrays, runs the sampler and turns its arrays into readable results.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxthink.decode import sampler
from jaxthink.decode.sampler import FINISH_REASONS, Sampling
from jaxthink.policies.modes import ANSWER, THINK, Mode, ModeOptions, parse_mode, row_setup
from jaxthink.policies.policy import PolicyParams, PolicyTokens
from jaxthink.sharding import batch_size_multiple, mesh_of
from jaxthink.tokenizer import (
    control_tokens,
    encode_prompts,
    format_prompt,
    thinking_prefix_in_prompt,
)


@dataclasses.dataclass
class Generation:
    """One generated sample."""

    prompt: str
    text: str  # the whole response, control tokens and `</think>` included
    thinking: str
    answer: str
    mode: str  # the requested mode
    chosen_mode: str  # "think" if the row thought, else "short"
    token_ids: list[int]
    logprobs: list[float]
    num_thinking_tokens: int
    num_answer_tokens: int
    num_tokens: int
    confidence: float  # self-certainty, mean over the response tokens
    finish_reason: str  # "eos", "stop" or "length"
    budget_forced: bool  # budget forcing closed the thinking
    seconds: float  # wall time of the batch this sample ran in

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A validated request: everything needed to build the arrays."""

    prompts: list[str]  # formatted prompt text, one per row (n rows per input prompt)
    questions: list[str]
    modes: list[Mode]
    setups: list


def _as_list(x, n: int, name: str) -> list:
    if isinstance(x, (str, Mode)) or not isinstance(x, Sequence):
        return [x] * n
    if len(x) != n:
        raise ValueError(f"{name}: got {len(x)} values for {n} prompts; give one or one per prompt")
    return list(x)


def prepare(tokenizer, questions: Sequence[str], mode, n: int, opts: ModeOptions, chat: bool):
    """Validates the request and formats every row's prompt. Raises before anything compiles."""
    if isinstance(questions, str):
        questions = [questions]
    if n < 1:
        raise ValueError(f"n={n}: the number of samples per prompt must be at least 1")
    if not questions:
        raise ValueError("no prompts given")
    control = control_tokens(tokenizer)
    opens = thinking_prefix_in_prompt(tokenizer) if chat else False
    modes = [parse_mode(m) for m in _as_list(mode, len(questions), "mode")]
    prompts, rows_q, rows_m, setups = [], [], [], []
    for q, m in zip(questions, modes, strict=True):
        setup = row_setup(m, opts, control, opens)
        text = (format_prompt(tokenizer, q) if chat else q) + setup.prefill
        for _ in range(n):
            prompts.append(text)
            rows_q.append(q)
            rows_m.append(m)
            setups.append(setup)
    return GenerateRequest(prompts, rows_q, rows_m, setups)


@functools.lru_cache(maxsize=8)
def _newline_ids(tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Ids of tokens whose text holds a newline (a walk over the vocabulary, so cached)."""
    return tuple(
        i
        for token, i in tokenizer.get_vocab().items()
        if i < vocab_size and "\n" in tokenizer.convert_tokens_to_string([token])
    )


def policy_tokens(tokenizer, opts: ModeOptions, vocab_size: int, stop_ids=()) -> PolicyTokens:
    control = control_tokens(tokenizer)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    end_seq = [control.end_think] + enc(opts.answer_prefix) if control.end_think is not None else []
    wait_seq = enc(opts.wait_text)
    width = max(len(end_seq), len(wait_seq), 1)
    pad = lambda seq: jnp.array(seq + [-1] * (width - len(seq)), jnp.int32)
    newline = np.zeros(vocab_size, bool)
    newline[list(_newline_ids(tokenizer, vocab_size))] = True
    mask = lambda ids: jnp.zeros(vocab_size, bool).at[jnp.array(list(ids), jnp.int32)].set(True)
    scalar = lambda i: jnp.int32(-1 if i is None else i)
    return PolicyTokens(
        think=scalar(control.think),
        end_think=scalar(control.end_think),
        short=scalar(control.short),
        end_seq=pad(end_seq),
        wait_seq=pad(wait_seq),
        newline=jnp.asarray(newline),
        eos=mask(control.eos),
        stop=mask(stop_ids) if stop_ids else jnp.zeros(vocab_size, bool),
    )


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    mode: str | Mode | Sequence[str | Mode] = "think",
    *,
    n: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | Sequence[int] = 0,
    options: ModeOptions | None = None,
    stop_tokens: Sequence[int] = (),
    batch_size: int | None = None,
    chat: bool = True,
    progress=None,
) -> list[Generation]:
    """Generates `n` samples for each prompt; `mode` is one mode or one per prompt.

    Rows of one batch may mix modes and budgets. `chat=False` uses the prompts as already-formatted
    text. Results come in prompt order, the n samples of a prompt next to each other.
    `seed` is one seed, or one per prompt; sample j of prompt p draws from its own key, so it
    does not depend on batching or on the other prompts. With one row per batch on CPU, the
    decode loop runs on a copy of the block weights laid out for it (`sampler.for_decoding`).
    """
    opts = options or ModeOptions.for_model(getattr(model, "cfg", None))
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be at least 1")
    req = prepare(tokenizer, prompts, mode, n, opts, chat)
    if isinstance(seed, Sequence) and len(seed) * n != len(req.prompts):
        raise ValueError(f"seed: got {len(seed)} seeds for {len(req.prompts) // n} prompts")
    encoded = encode_prompts(tokenizer, req.prompts)
    cfg = model.cfg
    for i, ids in enumerate(encoded):
        if len(ids) + max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(
                f"prompt {i // n} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it "
                f"does not fit the model's context of {cfg.max_position_embeddings} tokens"
            )
    graphdef, params = nnx.split(model)
    tok = policy_tokens(tokenizer, opts, cfg.vocab_size, stop_tokens)
    rows = len(encoded)
    multiple = batch_size_multiple(mesh_of(params))
    batch_size = batch_size or rows
    # one layout for the decode loops of all batches, made once (a copy of the weights at batch 1)
    decoding = sampler.for_decoding(graphdef, params, min(batch_size, rows))
    results: list[Generation] = []
    for start in range(0, rows, batch_size):
        idx = list(range(start, min(start + batch_size, rows)))
        filler = [idx[-1]] * (-len(idx) % multiple)  # rows split evenly over the mesh's batch axes
        results += _run_batch(
            (graphdef, params), decoding, tokenizer, req, encoded, idx + filler, tok,
            max_new_tokens, (temperature, top_k, top_p, seed, n),
        )[: len(idx)]  # fmt: skip
        if progress is not None:
            progress(len(idx))
    return results


def row_key(seed: int | Sequence[int], prompt: int, sample: int) -> jax.Array:
    """The PRNG key of sample `sample` of prompt `prompt`."""
    base = (
        jax.random.key(seed[prompt])
        if isinstance(seed, Sequence)
        else jax.random.fold_in(jax.random.key(seed), prompt)
    )
    return jax.random.fold_in(base, sample)


def _run_batch(model, decoding, tokenizer, req, encoded, idx, tok, max_new, sampling_args):
    temperature, top_k, top_p, seed, n = sampling_args
    b = len(idx)
    setups = [req.setups[i] for i in idx]
    column = lambda field: jnp.array([getattr(s, field) for s in setups], jnp.int32)
    pparams = PolicyParams(
        phase=column("phase"),
        control=column("control"),
        budget=column("budget"),
        grace=column("grace"),
        extend=column("extend"),
    )
    sampling = Sampling(
        temperature=jnp.full((b,), temperature, jnp.float32),
        top_k=jnp.full((b,), top_k, jnp.int32),
        top_p=jnp.full((b,), top_p, jnp.float32),
        keys=jnp.stack([row_key(seed, i // n, i % n) for i in idx]),
    )
    t0 = time.perf_counter()
    pad_id = tokenizer.pad_token_id or 0
    state = sampler.sample(
        *model, [encoded[i] for i in idx], pparams, tok, sampling, max_new, pad_id, decoding
    )
    out = (
        state.tokens,
        state.logprobs,
        state.phases,
        state.finish,
        state.certainty_sum,
        state.lengths,
    )
    pstate = state.policy
    seconds = time.perf_counter() - t0
    ends_row = np.asarray(tok.eos) | np.asarray(tok.stop)  # tokens that end a row, once per batch
    end_think = int(tok.end_think)
    return [
        _to_generation(tokenizer, req, i, r, out, pstate, ends_row, end_think, seconds)
        for r, i in enumerate(idx)
    ]


def _to_generation(tokenizer, req, i, r, out, pstate, ends_row, end_think, seconds) -> Generation:
    tokens, logprobs, phases, finish, certainty, lengths = out
    reason, length = int(finish[r]), int(lengths[r])
    ids = tokens[r, :length].tolist()
    ph = phases[r, :length]
    ends = ends_row[ids] if ids else np.zeros(0, bool)
    think_ids = [
        t for t, p, e in zip(ids, ph, ends, strict=True) if p == THINK and t != end_think and not e
    ]
    answer_ids = [t for t, p, e in zip(ids, ph, ends, strict=True) if p == ANSWER and not e]
    decode = lambda x: tokenizer.decode(x, skip_special_tokens=False)
    content = ids[:-1] if (ids and ends[-1]) else ids
    return Generation(
        prompt=req.questions[i],
        text=decode(content),
        thinking=decode(think_ids),
        answer=decode(answer_ids),
        mode=str(req.modes[i]),
        chosen_mode="think" if bool(pstate.thought[r]) else "short",
        token_ids=ids,
        logprobs=[float(x) for x in logprobs[r, :length]],
        num_thinking_tokens=int(pstate.think_count[r]),
        num_answer_tokens=int(pstate.answer_count[r]),
        num_tokens=length,
        confidence=float(certainty[r]) / max(length, 1),
        finish_reason=FINISH_REASONS.get(reason, "length"),
        budget_forced=bool(pstate.forced_end[r]),
        seconds=seconds,
    )
