"""`python -m infer bench`: decode speed of jaxthink next to transformers `generate`, one run.

Both run the same random-weight model (written once in the HF format and loaded by each) on the
same token-id prompts, fp32 on CPU, greedy, exactly N new tokens a row (`--new-tokens`; no end
token). Every time is the best of several runs (`--repeats`, `--min-seconds`) after warm-up runs.
The columns of a (model, batch) row:

- decode tok/s, jaxthink: batch x N / the compiled decode loop alone (`sampler.decode`: N
  steps after the prefill, which runs before the clock starts, on the weights as the engine lays
  them out for the batch; at batch > 1 the loop makes its own transposed head copy each call,
  where the engine passes the one it keeps);
- decode tok/s, transformers: batch / the time of one decode step of `generate`, that is (a run
  of N new tokens - a run of one, the prefill) / (N - 1);
- decode speedup: their ratio (jaxthink over transformers);
- e2e tok/s, jaxthink: batch x N / one call as `jaxthink.generate` makes it from token ids
  (`end_to_end`): `Request`s built, `Engine(model).run(requests, tok, slots=batch)` (prefill,
  inserting into slots, the step loop, copying each sample's arrays to the host) and each sample
  turned into a `Generation` by `generate`'s own conversion. The random model has no tokenizer,
  so what is left out is the tokenizer's share: chat formatting, encoding the prompts and
  decoding the text (the conversion gets a stand-in whose `decode` returns ""). The two calls
  before the clock compile the programs and lay out the weights for the batch (the `[out, in]`
  copy at batch 1, the transposed tied head at batch > 1); the engine keeps that layout with the
  model, so the timed calls only look it up: a line before each row gives the first call's time,
  the layout's share of it, the best timed call and the longest look-up in the timed calls, and
  the bench checks that every call ran on the same kept arrays;
- e2e tok/s, transformers: batch x N / a whole `generate` call of N new tokens (prefill
  included; left-padded batch, torch tensors in and out);
- e2e speedup: their ratio;
- ms/step: jaxthink's decode step; floor ms: the memory-bandwidth floor per step (weight bytes /
  the read bandwidth measured in this run); x floor: ms/step over the floor;
- 4-mode batch cost: the decode loop with four modes mixed in the batch (budget, extend,
  thinkless, no_think) against all-greedy rows, the median ratio over runs made in alternation.

`python -m infer bench --sampling`: instead, what sampling costs next to greedy decoding on a
small model with Qwen's 151,936-token vocabulary, 64 rows (`sampling_costs`).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench_slots import _no_control_tokens
from jaxthink.decode.engine import Engine, Request
from jaxthink.decode.generate import _to_generation, prompt_key
from jaxthink.models.shapes import SHAPES as SHAPES_BY_NAME
from jaxthink.policies.modes import ANSWER, FREE, NO_BUDGET, Mode

SHAPES = {name: SHAPES_BY_NAME[name] for name in ("tiny", "qwen2.5-0.5b")}  # what the bench runs


def read_bandwidth_gbs(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """The fastest streaming read of a large array by XLA, in bytes / second: the best of `repeats`
    runs of each of a sum and a matrix-vector product (what a decode step does to its weights)."""
    x = jnp.ones((nbytes // 4 // 4096, 4096), jnp.float32)
    vector = jnp.ones((4096,), jnp.float32)
    best = float("inf")
    for read in (jax.jit(jnp.sum), jax.jit(lambda x: x @ vector)):
        run = lambda read=read: read(x).block_until_ready()
        run()  # compile
        best = min(best, _best_of(run, repeats))
    return x.nbytes / best / 1e9


def _write_model(shape: dict, directory: str):
    """A random-weight Qwen2 of `shape` (a `SHAPES` entry), fp32, in the HF format."""
    import torch
    import transformers

    kw = dict(shape)
    theta = kw.pop("rope_theta", 10000.0)
    cfg = transformers.Qwen2Config(
        **kw,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).float().eval()
    model.save_pretrained(directory)
    return model


def _prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab, length - 3 * r).tolist() for r in range(batch)]


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(repeats: int, min_seconds: float = 0.0):
    """Round numbers: at least `repeats`, and on until `min_seconds` have passed, so that a fast
    run (the tiny model's 4 ms) is the best of many and a slow one the best of `repeats`."""
    start, i = time.perf_counter(), 0
    while i < repeats or time.perf_counter() - start < min_seconds:
        yield i
        i += 1


def _best_of(fn, repeats: int, min_seconds: float = 0.0) -> float:
    return min(_seconds(fn) for _ in _rounds(repeats, min_seconds))


def _time_jaxthink(
    graphdef, params, layout, prompts, new_tokens, row_sets, tok, repeats, min_seconds
) -> tuple[list[float], list[float]]:
    """Seconds per decode step for each set of policy rows: the compiled decode loop alone over
    `new_tokens` steps on `layout` (`Engine.decoding`'s weights; its prefill run before the
    clock starts), the best of the rounds; and
    each set's time relative to the first set's, the median over the rounds. The sets are timed
    in alternation within a round, so a slow spell of this shared machine falls on them alike."""
    from jaxthink.decode import sampler

    b = len(prompts)
    sampling = sampler.Sampling(
        temperature=jnp.zeros((b,)),
        top_k=jnp.zeros((b,), jnp.int32),
        top_p=jnp.ones((b,)),
        keys=jax.random.split(jax.random.key(0), b),
    )

    decoding = layout[:2]

    def decode_seconds(rows) -> float:
        state = jax.block_until_ready(
            sampler.start(graphdef, params, prompts, rows, tok, new_tokens)
        )
        run = lambda: sampler.decode(*decoding, state, rows, tok, sampling, jnp.int32(0))
        return _seconds(lambda: jax.block_until_ready(run()))

    for rows in row_sets:
        decode_seconds(rows)  # warm-up: compiles prefill and decode
    times = np.array(
        [[decode_seconds(rows) for rows in row_sets] for _ in _rounds(repeats, min_seconds)]
    )
    relative = np.median(times / times[:, :1], axis=0)
    return list(times.min(axis=0) / new_tokens), list(relative)


class _TimedEngine(Engine):
    """`Engine` as `generate` uses it, noting what its `decoding` (the weight layout for the
    slots: made by the first call on a model, kept and looked up after) returned and took."""

    def decoding(self, slots: int):
        t0 = time.perf_counter()
        self.layout = super().decoding(slots)
        jax.block_until_ready(self.layout[1:])
        self.layout_seconds = time.perf_counter() - t0
        return self.layout


class _NoText:
    """The tokenizer's part of `generate`'s conversion, for a model that has none: no text."""

    @staticmethod
    def decode(ids, skip_special_tokens: bool = False) -> str:
        return ""


def end_to_end(model, prompts: list[list[int]], new_tokens: int):
    """One greedy call as `jaxthink.generate` makes it, from token ids: requests built, the engine
    run with one slot per prompt, each finished sample turned into a `Generation` (text left
    empty: no tokenizer). Returns (generations in prompt order, the engine that ran)."""
    mode = Mode("no_think")  # what the rows' (ANSWER, FREE, ...) setup is
    requests = [
        Request(
            prompt=ids,
            key=prompt_key(0, p),
            mode=(ANSWER, FREE, NO_BUDGET, 0, 0),
            max_new_tokens=new_tokens,
        )
        for p, ids in enumerate(prompts)
    ]
    tok = _no_control_tokens(model.cfg.vocab_size)
    ends_row = np.asarray(tok.eos) | np.asarray(tok.stop)
    end_think = int(tok.end_think)
    engine = _TimedEngine(model)
    out = [None] * len(prompts)
    for sample in engine.run(requests, tok, slots=len(prompts)):
        p = sample.request
        out[p] = _to_generation(_NoText, "", prompts[p], mode, sample, ends_row, end_think)
    return out, engine


def _time_end_to_end(model, prompts, new_tokens, repeats, min_seconds) -> float:
    """Seconds of an `end_to_end` call, the best of the rounds, after two calls (the first
    compiles and lays out the weights). Prints the first call's time and its layout's share,
    and checks that every later call ran on the layout the first one made."""
    b = len(prompts)

    def call():
        gens, engine = end_to_end(model, prompts, new_tokens)
        if short := [g.num_tokens for g in gens if g.num_tokens != new_tokens]:
            raise RuntimeError(f"rows of {short} tokens, not new_tokens={new_tokens}")
        engines.append(engine)

    engines: list = []
    first = _seconds(call)
    call()
    seconds = _best_of(call, repeats, min_seconds)
    kept = engines[0].layout
    if any(e.layout is not kept for e in engines):
        raise RuntimeError(f"batch {b}: a later call laid out the weights again")
    lookup = max(e.layout_seconds for e in engines[1:])
    print(
        f"batch {b}: end to end, first call {first:.2f} s (weight layout "
        f"{engines[0].layout_seconds:.2f} s of it; the rest compiling and running), timed calls "
        f"{seconds:.2f} s (best): later calls reuse that layout, look-up <= {lookup * 1e3:.2f} ms",
        flush=True,
    )
    return seconds


def hf_greedy(model, prompts: list[list[int]], new_tokens: int):
    """transformers `generate`: greedy, exactly `new_tokens` per row of a left-padded batch."""
    import torch

    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[:, width:].numpy()


def _time_transformers(model, prompts, new_tokens, repeats, min_seconds) -> tuple[float, float]:
    """Seconds per decode step of `generate`: a run of `new_tokens` minus a run of one (the
    prefill), each the best of the rounds, over the `new_tokens - 1` steps between; and the
    seconds of the whole run of `new_tokens` (end to end)."""
    hf_greedy(model, prompts, 8)  # warm-up
    best = lambda k: _best_of(lambda: hf_greedy(model, prompts, k), repeats, min_seconds)
    whole = best(new_tokens)
    return (whole - best(1)) / (new_tokens - 1), whole


def _mode_rows(b: int, kind: str):
    """Policy rows: all plain greedy, or four modes mixed (budget, extend, thinkless, no_think)."""
    from jaxthink.policies.modes import ANSWER, CHOOSE, FREE, NO_BUDGET, PRE, THINK
    from jaxthink.policies.policy import PolicyParams

    if kind == "greedy":
        mix = [(ANSWER, FREE, NO_BUDGET, 0)] * b
    else:
        four = [
            (THINK, FREE, 32, 0),
            (THINK, FREE, NO_BUDGET, 2),
            (PRE, CHOOSE, 64, 0),
            (ANSWER, FREE, NO_BUDGET, 0),
        ]
        mix = [four[r % 4] for r in range(b)]
    col = lambda j: jnp.array([m[j] for m in mix], jnp.int32)
    return PolicyParams(col(0), col(1), col(2), jnp.zeros((b,), jnp.int32), col(3))


def _bench_tokens(vocab: int):
    """Stand-in control ids for a random model (ids 1-5 play <think>, </think>, <short>...)."""
    from jaxthink.policies.policy import PolicyTokens

    none = jnp.zeros(vocab, bool)
    return PolicyTokens(
        think=jnp.int32(1),
        end_think=jnp.int32(2),
        short=jnp.int32(3),
        end_seq=jnp.array([2, 4, 5], jnp.int32),
        wait_seq=jnp.array([6, -1, -1], jnp.int32),
        newline=none.at[7].set(True),
        eos=none,
        stop=none,
    )


def run(
    shapes, batches, new_tokens: int, prompt_len: int, repeats: int, min_seconds: float = 0.0
) -> list[dict]:
    import torch
    from flax import nnx

    import jaxthink

    torch.set_num_threads(max(1, torch.get_num_threads()))
    bandwidth = read_bandwidth_gbs()
    print(f"read bandwidth: {bandwidth:.1f} GB/s; devices: {jax.devices()}")
    print(HEADER, flush=True)
    rows = []
    for shape in shapes:
        with tempfile.TemporaryDirectory() as d:
            hf = _write_model(SHAPES[shape], d)
            model, _, cfg = jaxthink.load(d, tokenizer=False)
        graphdef, params = nnx.split(model)
        weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        tok = _bench_tokens(cfg.vocab_size)
        for b in batches:
            prompts = _prompts(b, prompt_len, cfg.vocab_size)
            ours_e2e = _time_end_to_end(model, prompts, new_tokens, repeats, min_seconds)
            layout = Engine(model).decoding(b)  # the layout the end-to-end calls made and kept
            row_sets = [_mode_rows(b, kind) for kind in ("greedy", "mixed")]
            (ours, _), (_, mixed) = _time_jaxthink(
                graphdef, params, layout, prompts, new_tokens, row_sets, tok, repeats, min_seconds
            )
            theirs, theirs_e2e = _time_transformers(hf, prompts, new_tokens, repeats, min_seconds)
            floor_ms = weight_bytes / (bandwidth * 1e9) * 1e3
            rows.append(
                dict(
                    model=shape,
                    batch=b,
                    params_m=cfg.num_params / 1e6,
                    jaxthink_tok_s=b / ours,
                    transformers_tok_s=b / theirs,
                    speedup=theirs / ours,
                    e2e_jaxthink_tok_s=b * new_tokens / ours_e2e,
                    e2e_transformers_tok_s=b * new_tokens / theirs_e2e,
                    e2e_speedup=theirs_e2e / ours_e2e,
                    ms_per_step=ours * 1e3,
                    floor_ms=floor_ms,
                    vs_floor=ours * 1e3 / floor_ms,
                    mixed_overhead=mixed - 1,
                )
            )
            print(_format_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| model | batch | decode tok/s jaxthink | decode tok/s transformers | decode speedup "
    "| e2e tok/s jaxthink | e2e tok/s transformers | e2e speedup | ms/step | floor ms "
    "| x floor | 4-mode batch cost |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _format_row(r: dict) -> str:
    return (
        f"| {r['model']} ({r['params_m']:.1f}M) | {r['batch']} | {r['jaxthink_tok_s']:.1f} | "
        f"{r['transformers_tok_s']:.1f} | {r['speedup']:.2f}x | {r['e2e_jaxthink_tok_s']:.1f} | "
        f"{r['e2e_transformers_tok_s']:.1f} | {r['e2e_speedup']:.2f}x | {r['ms_per_step']:.2f} | "
        f"{r['floor_ms']:.2f} | {r['vs_floor']:.2f} | {100 * r['mixed_overhead']:+.1f}% |"
    )


# --- what sampling costs next to greedy --------------------------------------------------------

# A user's small checkpoint with Qwen's vocabulary: choosing the token is much of its step.
SAMPLING_SHAPE = dict(
    vocab_size=151936,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
SAMPLINGS = {"greedy": (0.0, 1.0), "T=0.6": (0.6, 1.0), "T=0.6 top-p 0.95": (0.6, 0.95)}
SPREAD_SCALE = 10.0  # the tied embedding's factor for the "spread" model


def _sampling(b: int, temperature: float, top_p: float):
    from jaxthink.decode import sampler

    return sampler.Sampling(
        temperature=jnp.full((b,), temperature),
        top_k=jnp.zeros((b,), jnp.int32),
        top_p=jnp.full((b,), top_p),
        keys=jax.random.split(jax.random.key(0), b),
    )


def _time_samplings(graphdef, params, prompts, new_tokens, tok, samplings, repeats, min_seconds):
    """Seconds per decode step for each of `samplings` (plain greedy policy rows): the compiled
    decode loop alone over `new_tokens` steps, the best of the rounds; and each one's time
    relative to the first's, the median over the rounds (timed in alternation within a round)."""
    from jaxthink.decode import sampler

    fresh = lambda tree: jax.tree.map(jnp.copy, tree)  # the loop may donate what it is given

    def decode_seconds(sampling) -> float:
        rows = _mode_rows(len(prompts), "greedy")
        state = jax.block_until_ready(
            sampler.start(graphdef, params, prompts, rows, tok, new_tokens)
        )
        args = fresh(rows), tok, fresh(sampling), jnp.int32(0)
        return _seconds(
            lambda: jax.block_until_ready(sampler.decode(graphdef, params, state, *args))
        )

    for sampling in samplings:
        decode_seconds(sampling)  # warm-up: compiles prefill and decode
    times = np.array(
        [[decode_seconds(s) for s in samplings] for _ in _rounds(repeats, min_seconds)]
    )
    return list(times.min(axis=0) / new_tokens), list(np.median(times / times[:, :1], axis=0))


def _logit_spread(graphdef, params, prompts, tok) -> dict:
    """Of the first decode step's logits: their std across the vocabulary (mean over rows),
    the mass of the 64 most likely tokens at T = 0.6 (median over rows), and the share of rows
    whose top-p 0.95 set at T = 0.6 is among those 64 (sampling's fast path)."""
    from flax import nnx

    from jaxthink.decode import sampler

    rows = _mode_rows(len(prompts), "greedy")
    hidden = sampler.start(graphdef, params, prompts, rows, tok, 1).hidden
    logits = np.asarray(nnx.merge(graphdef, params).logits(hidden), np.float64)
    z = np.sort(logits / 0.6, axis=-1)[:, ::-1]
    probs = np.exp(z - z[:, :1])
    mass = np.cumsum(probs, axis=-1) / probs.sum(-1, keepdims=True)
    return dict(
        std=logits.std(-1).mean(), top64=np.median(mass[:, 63]), fits=np.mean(mass[:, 63] >= 0.95)
    )


def sampling_costs(
    batch: int,
    new_tokens: int,
    prompt_len: int,
    repeats: int,
    min_seconds: float = 0.0,
    shape: dict = SAMPLING_SHAPE,
    label: str | None = None,
) -> list[dict]:
    """ms per decode step of greedy, T = 0.6 and T = 0.6 with top-p 0.95 rows (all rows alike),
    and each one's ratio to greedy, for two models of `shape` (named "`label`: ..." in the
    table when given):

    - "as initialised": random weights; its logits are near-flat (std ~0.2), so top-p 0.95
      keeps most of the vocabulary and takes sampling's exact (rejection) path;
    - "spread": the same weights with the tied embedding (so the lm head too) multiplied by
      SPREAD_SCALE = 10. A random model's residual stream is mostly its input token's
      embedding, so its logits get a std of ~2.3 units across the vocabulary with the input
      token's own logit ~25 above the mean: at T = 0.6 the top 64 tokens hold all the mass
      (a trained reasoning model's top-p 0.95 set is a handful of tokens), and top-p takes
      sampling's 64-candidate path. The table prints the measured std and top-64 mass.
    """
    from flax import nnx

    import jaxthink

    with tempfile.TemporaryDirectory() as d:
        _write_model(shape, d)
        model, _, cfg = jaxthink.load(d, tokenizer=False)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, cfg.vocab_size, prompt_len - r % 8).tolist() for r in range(batch)]
    tok = _bench_tokens(cfg.vocab_size)
    samplings = [_sampling(batch, *SAMPLINGS[name]) for name in SAMPLINGS]
    print(SAMPLING_HEADER, flush=True)
    rows = []
    for name, scale in [("as initialised", 1.0), ("spread", SPREAD_SCALE)]:
        model.embed[...] = model.embed[...] * scale
        graphdef, params = nnx.split(model)
        spread = _logit_spread(graphdef, params, prompts, tok)
        times, ratios = _time_samplings(
            graphdef, params, prompts, new_tokens, tok, samplings, repeats, min_seconds
        )
        for sampling, t, ratio in zip(SAMPLINGS, times, ratios):
            rows.append(
                dict(
                    model=name if label is None else f"{label}: {name}",
                    batch=batch,
                    sampling=sampling,
                    ms_per_step=t * 1e3,
                    vs_greedy=ratio,
                    **spread,
                )
            )
            print(_format_sampling_row(rows[-1]), flush=True)
    return rows


SAMPLING_HEADER = (
    "| model | batch | logits std | top-64 mass (T=0.6) | top-p 0.95 in 64 | sampling | ms/step "
    "| x greedy |\n|---|---|---|---|---|---|---|---|"
)


def _format_sampling_row(r: dict) -> str:
    return (
        f"| {r['model']} | {r['batch']} | {r['std']:.2f} | {r['top64']:.3f} | "
        f"{100 * r['fits']:.0f}% | {r['sampling']} | {r['ms_per_step']:.2f} | "
        f"{r['vs_greedy']:.2f}x |"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shape",
        action="append",
        choices=list(SHAPES),
        help="default: all (with --sampling: a 3-layer model of hidden size 128)",
    )
    p.add_argument("--batch", action="append", type=int, help="default: 1 and 8")
    p.add_argument("--new-tokens", type=int, help="default: 128 (with --sampling: 32)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="best of at least this many timed runs")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="and of as many more as fit in this many seconds per timing",
    )
    p.add_argument(
        "--sampling",
        action="store_true",
        help="instead: what sampling costs next to greedy (sampling_costs; batch default 64)",
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m infer bench", description=__doc__)
    add_arguments(p)
    run_command(p.parse_args(argv))


def run_command(args: argparse.Namespace) -> None:
    """The bench the parsed flags ask for (`add_arguments`)."""
    if args.sampling:
        for name in args.shape or [None]:
            shape = SAMPLING_SHAPE if name is None else SHAPES[name]
            for b in args.batch or [64]:
                timing = args.new_tokens or 32, args.prompt_len, args.repeats, args.min_seconds
                sampling_costs(b, *timing, shape=shape, label=name)
        return
    shapes, batches = args.shape or list(SHAPES), args.batch or [1, 8]
    new_tokens = args.new_tokens or 128
    run(shapes, batches, new_tokens, args.prompt_len, args.repeats, args.min_seconds)
