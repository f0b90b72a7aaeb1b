"""`jaxthink.generate`: prompts and modes in, every sample's arrays and a `Generation` view out.

This layer does everything that is not compiled: it checks the request and its `GenerateConfig`
(before any compilation), formats prompts with the checkpoint's chat template plus each mode's
prefill, makes one engine request per prompt (its mode row, sampling row and key) and runs the
continuous-batching engine (`jaxthink.decode.engine`). `stream` turns each finished sample into a
readable `Generation` as it ends; `generate` returns `Generations`: all samples' arrays in order
(left-padded prompts, right-padded responses, per-row statistics), a sequence whose item i is
sample i's `Generation`, decoded when first asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.decode import engine
from jaxthink.decode.choice import check_sampling
from jaxthink.decode.sampler import FINISH_REASONS, left_pad
from jaxthink.policies.modes import ANSWER, THINK, Mode, ModeOptions, parse_mode, row_setup
from jaxthink.policies.policy import PolicyTokens
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
    prompt_ids: list[int]  # the prompt as the model saw it: template, mode prefill and all
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
    seconds: float  # from the sample's start in a decode slot to its end, compilation left out

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What turning a finished sample into a `Generation` needs, per prompt of one call."""

    tokenizer: object
    questions: list[str]
    prompt_ids: list[list[int]]  # as encoded: template, mode prefill and all
    modes: list[Mode]
    ends_row: np.ndarray  # [V] bool: the ids that end a response (eos and stop tokens)
    end_think: int
    pad_id: int  # the tokenizer's pad (its eos if it has none)
    # the engine run's statistics (compilation time, occupancy, ...)
    stats: engine.Stats = dataclasses.field(default_factory=engine.Stats)

    def generation(self, p: int, sample) -> Generation:
        """A finished engine `Sample` of prompt `p` as a `Generation`."""
        return _generation(
            self,
            p,
            sample.tokens,
            sample.logprobs,
            sample.phases,
            sample.finish,
            sample.certainty_sum,
            sample.thought,
            sample.think_count,
            sample.answer_count,
            sample.forced_end,
            sample.seconds,
        )


@dataclasses.dataclass(eq=False, repr=False)
class Generations(Sequence[Generation]):
    """The samples of one `generate` call as host arrays, R rows in result order (prompt p's n
    samples at rows p*n .. p*n+n-1), and a sequence of R `Generation`s: `results[i]` is sample
    i's, built (its text decoded) when first asked for and kept."""

    prompt_tokens: np.ndarray  # [R, P] int32, left-padded: the prompt as the model saw it
    prompt_valid: np.ndarray  # [R, P] bool
    tokens: np.ndarray  # [R, N] int32, right-padded with pad_id; the end token included
    lengths: np.ndarray  # [R] int32: generated tokens
    logprobs: np.ndarray  # [R, N] float32 under the sampling temperature; 0 past the length
    phases: np.ndarray  # [R, N] int8: the phase each token was emitted in; 0 past the length
    finish: np.ndarray  # [R] int8: sampler.EOS / STOP / LENGTH
    certainty_sum: np.ndarray  # [R] float32: self-certainty summed over the response
    thought: np.ndarray  # [R] bool: the row thought (chose or was put in thinking)
    think_count: np.ndarray  # [R] int32: thinking tokens
    answer_count: np.ndarray  # [R] int32: answer tokens
    forced_end: np.ndarray  # [R] bool: budget forcing closed the thinking
    seconds: np.ndarray  # [R] float64: from the sample's start in a decode slot to its end
    prompt_index: np.ndarray  # [R] int32: the prompt of each row
    sample_index: np.ndarray  # [R] int32: its sample index j
    pad_id: int
    context: _Context = dataclasses.field(repr=False)
    _views: list = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        self._views = [None] * len(self.lengths)

    @classmethod
    def from_samples(cls, samples: Sequence, context: _Context) -> Generations:
        """The arrays of the engine's finished `Sample`s, in the given order."""
        rows, width = len(samples), max((len(s.tokens) for s in samples), default=0)
        tokens = np.full((rows, width), context.pad_id, np.int32)
        logprobs = np.zeros((rows, width), np.float32)
        phases = np.zeros((rows, width), np.int8)
        for r, s in enumerate(samples):
            k = len(s.tokens)
            tokens[r, :k], logprobs[r, :k], phases[r, :k] = s.tokens, s.logprobs, s.phases
        prompt_index = np.array([s.request for s in samples], np.int32)
        prompt_tokens, prompt_valid = left_pad(
            [context.prompt_ids[p] for p in prompt_index], context.pad_id
        )
        column = lambda name, dtype: np.array([getattr(s, name) for s in samples], dtype)
        return cls(
            prompt_tokens,
            prompt_valid,
            tokens,
            np.array([len(s.tokens) for s in samples], np.int32),
            logprobs,
            phases,
            column("finish", np.int8),
            column("certainty_sum", np.float32),
            column("thought", bool),
            column("think_count", np.int32),
            column("answer_count", np.int32),
            column("forced_end", bool),
            column("seconds", np.float64),
            prompt_index,
            column("index", np.int32),
            context.pad_id,
            context,
        )

    @property
    def stats(self) -> engine.Stats:
        """The engine run's statistics: slots, occupancy, `compile_seconds`, ..."""
        return self.context.stats

    @property
    def confidence(self) -> np.ndarray:
        """[R] float64: self-certainty, mean over each response's tokens."""
        return self.certainty_sum.astype(np.float64) / np.maximum(self.lengths, 1)

    def responses(self, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded response tokens [R, width] int32 (pad_id past each length) and their mask
        [R, width] float32 (1 on every generated token, the end token included); `width`
        (default N) must hold the longest response."""
        rows, have = self.tokens.shape
        width = have if width is None else width
        if width < int(self.lengths.max(initial=0)):
            raise ValueError(
                f"width={width}: shorter than the longest response "
                f"({int(self.lengths.max())} tokens)"
            )
        tokens = np.full((rows, width), self.pad_id, np.int32)
        tokens[:, : min(width, have)] = self.tokens[:, :width]
        mask = (np.arange(width) < self.lengths[:, None]).astype(np.float32)
        return tokens, mask

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} generations")
        i %= len(self)
        if self._views[i] is None:
            self._views[i] = self._view(i)
        return self._views[i]

    def __repr__(self) -> str:
        prompts, responses = self.prompt_tokens.shape, self.tokens.shape
        return f"Generations({len(self)} samples, prompts {prompts}, responses {responses})"

    def _view(self, i: int) -> Generation:
        k = int(self.lengths[i])
        return _generation(
            self.context,
            int(self.prompt_index[i]),
            self.tokens[i, :k],
            self.logprobs[i, :k],
            self.phases[i, :k],
            int(self.finish[i]),
            float(self.certainty_sum[i]),
            bool(self.thought[i]),
            int(self.think_count[i]),
            int(self.answer_count[i]),
            bool(self.forced_end[i]),
            float(self.seconds[i]),
        )


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A validated request: everything needed to build the arrays."""

    prompts: list[str]  # formatted prompt text, one per input prompt
    questions: list[str]
    modes: list[Mode]
    setups: list


def _as_list(x, n: int, name: str) -> list:
    if isinstance(x, (str, Mode)) or not isinstance(x, Sequence):
        return [x] * n
    if len(x) != n:
        raise ValueError(f"{name}: got {len(x)} values for {n} prompts; give one or one per prompt")
    return list(x)


def prepare(tokenizer, questions: Sequence[str], mode, opts: ModeOptions, chat: bool, system=None):
    """Validates the request and formats each prompt (one row per prompt; its samples share it):
    the chat template with `system` as a system turn if given (`chat=False`: the text as it is),
    then the mode's prefill. Raises before anything compiles."""
    if isinstance(questions, str):
        questions = [questions]
    if not questions:
        raise ValueError("no prompts given")
    if empty := [i for i, q in enumerate(questions) if not str(q).strip()]:
        raise ValueError(f"prompt {empty[0]} is empty; give each prompt some text")
    control = control_tokens(tokenizer)
    opens = thinking_prefix_in_prompt(tokenizer) if chat else False
    modes = [parse_mode(m) for m in _as_list(mode, len(questions), "mode")]
    setups = [row_setup(m, opts, control, opens) for m in modes]
    prompts = [
        (format_prompt(tokenizer, q, system=system) if chat else q) + setup.prefill
        for q, setup in zip(questions, setups, strict=True)
    ]
    return GenerateRequest(prompts, list(questions), modes, setups)


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


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """How to sample: the one settings object that the CLI, `generate`, evaluation and RL
    rollouts pass on. `seed` is one seed or one per prompt; `slots` is the number of decode
    slots (None: as many as the samples, within the memory budget; see `jaxthink.decode.engine`)."""

    n: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | tuple[int, ...] = 0
    slots: int | None = None

    def __post_init__(self):
        if isinstance(self.seed, list):
            object.__setattr__(self, "seed", tuple(self.seed))
        self.check()

    def check(self) -> None:
        """Refuses bad values before anything compiles, naming the value and what is accepted."""
        if self.n < 1:
            raise ValueError(f"n={self.n}: the number of samples per prompt must be at least 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be at least 1")
        check_sampling(self.temperature, self.top_p, self.top_k)
        if self.slots is not None:
            engine.check_slots(self.slots)

    def replace(self, **fields) -> GenerateConfig:
        return dataclasses.replace(self, **fields)


def settings_from(settings: GenerateConfig | None, fields: dict) -> GenerateConfig:
    """`settings` (default: GenerateConfig()) with the keyword fields given to `generate`
    (`batch_size` is the former name of `slots`)."""
    if "batch_size" in fields:
        fields["slots"] = fields.pop("batch_size")
    known = {f.name for f in dataclasses.fields(GenerateConfig)}
    if unknown := sorted(set(fields) - known):
        raise TypeError(f"unknown generate settings {unknown}; accepted: {sorted(known)}")
    return dataclasses.replace(settings or GenerateConfig(), **fields)


def _start(
    model, tokenizer, prompts, mode, settings, options, stop_tokens, chat, system, samples
) -> tuple[_Context, Iterator]:
    """Checks and formats the request (raising before anything compiles); (its context, the
    engine's finished samples as they end)."""
    settings = settings or GenerateConfig()
    opts = options or ModeOptions.for_model(getattr(model, "cfg", None))
    req = prepare(tokenizer, prompts, mode, opts, chat, system)
    seed, n, count = settings.seed, settings.n, len(req.prompts)
    if isinstance(seed, Sequence) and len(seed) != count:
        raise ValueError(f"seed: got {len(seed)} seeds for {count} prompts")
    if samples is not None and len(samples) != count:
        raise ValueError(f"samples: got {len(samples)} lists for {count} prompts")
    encoded = encode_prompts(tokenizer, req.prompts)
    cfg = model.cfg
    for i, ids in enumerate(encoded):
        if len(ids) + settings.max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens={settings.max_new_tokens} "
                f"it does not fit the model's context of {cfg.max_position_embeddings} tokens"
            )
    requests = [
        engine.Request(
            prompt=ids,
            key=prompt_key(seed, p),
            mode=tuple(
                getattr(setup, f) for f in ("phase", "control", "budget", "grace", "extend")
            ),
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            samples=tuple(range(n) if samples is None else samples[p]),
        )
        for p, (ids, setup) in enumerate(zip(encoded, req.setups, strict=True))
    ]
    tok = policy_tokens(tokenizer, opts, cfg.vocab_size, stop_tokens)
    ends_row = np.asarray(tok.eos) | np.asarray(tok.stop)
    runner = engine.Engine(model, tokenizer.pad_token_id or 0)
    context = _Context(
        tokenizer,
        req.questions,
        [list(ids) for ids in encoded],
        req.modes,
        ends_row,
        int(tok.end_think),
        control_tokens(tokenizer).pad,
        runner.stats,
    )
    return context, runner.run(requests, tok, settings.slots)


def stream(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    mode: str | Mode | Sequence[str | Mode] = "think",
    settings: GenerateConfig | None = None,
    *,
    options: ModeOptions | None = None,
    stop_tokens: Sequence[int] = (),
    chat: bool = True,
    system: str | None = None,
    samples: Sequence[Sequence[int]] | None = None,
) -> Iterator[tuple[int, int, Generation]]:
    """(prompt index, sample index, Generation) of every sample, as each ends.

    `samples` gives the sample indices wanted per prompt (default: 0..n-1 for each): sample j of
    prompt p is the same whichever others are asked for, since it draws from its own key.
    """
    context, finished = _start(
        model, tokenizer, prompts, mode, settings, options, stop_tokens, chat, system, samples
    )
    for sample in finished:
        yield sample.request, sample.index, context.generation(sample.request, sample)


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    mode: str | Mode | Sequence[str | Mode] = "think",
    settings: GenerateConfig | None = None,
    *,
    options: ModeOptions | None = None,
    stop_tokens: Sequence[int] = (),
    chat: bool = True,
    system: str | None = None,
    progress=None,
    **fields,
) -> Generations:
    """Generates `n` samples for each prompt; `mode` is one mode or one per prompt.

    The settings are a `GenerateConfig`, or its fields as keywords (`n`, `max_new_tokens`,
    `temperature`, `top_p`, `top_k`, `seed`, `slots`), which override it. Rows may mix modes and
    budgets; they run through the continuous-batching engine (`jaxthink.decode.engine`).
    `chat=False` uses the prompts as already-formatted text (no chat template: base models,
    few-shot prompts); `system` adds a system turn to the template. Results come in prompt order, the n
    samples of a prompt next to each other, as `Generations`: the samples' arrays, and a sequence
    of their `Generation`s. Sample j of prompt p draws from its own key, so it depends neither on
    the slots nor on the other prompts. `progress(k)` is called as k samples end.
    """
    settings = settings_from(settings, fields)
    if isinstance(prompts, str):
        prompts = [prompts]
    context, finished = _start(
        model, tokenizer, prompts, mode, settings, options, stop_tokens, chat, system, None
    )
    n = settings.n
    results: list = [None] * (len(prompts) * n)
    for sample in finished:
        results[sample.request * n + sample.index] = sample
        if progress is not None:
            progress(1)
    return Generations.from_samples(results, context)


def prompt_key(seed: int | Sequence[int], prompt: int) -> jax.Array:
    """The PRNG key of prompt `prompt`: key(seed[prompt]) for per-prompt seeds, else
    fold_in(key(seed), prompt). Sample j draws from fold_in(this, j)."""
    if isinstance(seed, Sequence):
        return jax.random.key(seed[prompt])
    return jax.random.fold_in(jax.random.key(seed), prompt)


def row_key(seed: int | Sequence[int], prompt: int, sample: int) -> jax.Array:
    """The PRNG key of sample `sample` of prompt `prompt`."""
    return jax.random.fold_in(prompt_key(seed, prompt), sample)


def _to_generation(
    tokenizer, question, prompt_ids, mode, sample, ends_row, end_think
) -> Generation:
    """A finished engine `Sample` of the prompt `prompt_ids` as a `Generation`."""
    context = _Context(tokenizer, [question], [prompt_ids], [mode], ends_row, end_think, 0)
    return context.generation(0, sample)


def _generation(
    context: _Context,
    p: int,
    tokens,
    logprobs,
    phases,
    finish,
    certainty_sum,
    thought,
    think_count,
    answer_count,
    forced_end,
    seconds,
) -> Generation:
    """One response of prompt `p` (its arrays cut to its length, and its statistics) as text."""
    ids = tokens.tolist()
    ends = context.ends_row[ids] if ids else np.zeros(0, bool)
    end_think = context.end_think
    rows = list(zip(ids, phases, ends, strict=True))
    think_ids = [t for t, ph, e in rows if ph == THINK and t != end_think and not e]
    answer_ids = [t for t, ph, e in rows if ph == ANSWER and not e]
    decode = lambda x: context.tokenizer.decode(x, skip_special_tokens=False)
    content = ids[:-1] if (ids and ends[-1]) else ids
    length = len(ids)
    return Generation(
        prompt=context.questions[p],
        prompt_ids=list(context.prompt_ids[p]),
        text=decode(content),
        thinking=decode(think_ids),
        answer=decode(answer_ids),
        mode=str(context.modes[p]),
        chosen_mode="think" if thought else "short",
        token_ids=ids,
        logprobs=[float(x) for x in logprobs],
        num_thinking_tokens=int(think_count),
        num_answer_tokens=int(answer_count),
        num_tokens=length,
        confidence=float(certainty_sum) / max(length, 1),
        finish_reason=FINISH_REASONS.get(finish, "length"),
        budget_forced=bool(forced_end),
        seconds=seconds,
    )
