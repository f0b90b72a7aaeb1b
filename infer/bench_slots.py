"""`python -m infer bench-slots`: continuous batching against the static batch, one run.

    python -m infer bench-slots                          # both workloads, defaults below
    python -m infer bench-slots --workload skewed --requests 64 --slots 16 --max-new 256
    python -m infer bench-slots --workload demo --requests 3360 --slots 64   # the README's run

Both decode the same requests with the same keys, so they emit the same tokens (checked):
- `skewed`: a Qwen2 model with the real 151,936-token vocabulary (hidden 128, 3 layers, random
  weights, the tied embedding scaled by LOGIT_SCALE so that the logits spread over a few units
  as a trained model's do, not the near-flat distribution of a fresh initialisation), sampled at
  temperature 0.6 / top-p 0.95, each request's length drawn from a long-tailed (log-normal)
  distribution whose median is 1/8 of the longest, as reasoning traces run; lengths are imposed
  by per-request max_new_tokens (no end token).
- `demo`: the shipped demo model, greedy, the README's demo evaluation (think, no_think,
  think_budget=32,64,128, short and thinkless on problems of every level, 256 new tokens at
  most), each row ending where the model ends it.
The static batch is the sampler before the engine: batches of `--slots` rows, each decoded until
its longest row ends. Slot occupancy = generated tokens / slot-steps. Before the clock, each
runs a few of the requests (`warm_up_set`: compiling what it needs). "same tokens" counts requests whose
tokens are equal in both: a sampled token can differ where the two batch layouts' logits differ
in their last bits and the draw falls on a boundary.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxthink
from jaxthink.data.arithmetic import generate_problems
from jaxthink.decode import sampler
from jaxthink.decode.engine import Engine, Request
from jaxthink.decode.generate import policy_tokens, prepare, prompt_key
from jaxthink.loading import demo_model_dir
from jaxthink.policies import ModeOptions
from jaxthink.policies.policy import PolicyTokens
from jaxthink.tokenizer import encode_prompts

QWEN_SMALL = dict(
    vocab_size=151936,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
LOGIT_SCALE = 16.0  # logits' std across the vocabulary ~3.5 instead of ~0.2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infer bench-slots", description=__doc__.split("\n")[0]
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", default="skewed,demo", help="comma list of skewed, demo")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--max-new", type=int, default=128, help="the longest request (skewed)")


def skewed_lengths(count: int, longest: int, seed: int = 0) -> list[int]:
    """Log-normal lengths with median longest / 8, clipped to [4, longest]."""
    rng = np.random.default_rng(seed)
    drawn = rng.lognormal(np.log(longest / 8), 1.0, count)
    return np.clip(drawn, 4, longest).astype(int).tolist()


def _skewed(args):
    import transformers

    directory = tempfile.mkdtemp()
    cfg = transformers.Qwen2Config(**QWEN_SMALL, max_position_embeddings=4096)
    hf = transformers.Qwen2ForCausalLM(cfg)
    hf.get_input_embeddings().weight.data *= LOGIT_SCALE
    hf.save_pretrained(directory)
    model, _, _ = jaxthink.load(directory, tokenizer=False)
    requests = skewed_requests(args.requests, args.max_new, QWEN_SMALL["vocab_size"], (8, 40))
    return model, _no_control_tokens(QWEN_SMALL["vocab_size"]), requests


def skewed_requests(count: int, longest: int, vocab: int, prompt_lengths: tuple[int, int]):
    """`count` requests sampled at temperature 0.6 / top-p 0.95, answering only (no thinking
    phase), with random prompts (lengths in [lo, hi)) and `skewed_lengths` max_new_tokens."""
    rng = np.random.default_rng(1)
    return [
        Request(
            prompt=rng.integers(10, vocab - 1, rng.integers(*prompt_lengths)).tolist(),
            key=prompt_key(0, i),
            mode=(2, 0, 2**30, 0, 0),
            temperature=0.6,
            top_p=0.95,
            max_new_tokens=n,
        )
        for i, n in enumerate(skewed_lengths(count, longest))
    ]


def _no_control_tokens(vocab: int) -> PolicyTokens:
    """A tokenizer side with no thinking or end tokens: rows run to their max_new_tokens."""
    none = jnp.zeros(vocab, bool)
    no_queue = jnp.full((1,), -1, jnp.int32)
    return PolicyTokens(
        jnp.int32(-1), jnp.int32(-1), jnp.int32(-1), no_queue, no_queue, none, none, none
    )


DEMO_MODES = (
    "think",
    "no_think",
    "think_budget=32",
    "think_budget=64",
    "think_budget=128",
    "short",
    "thinkless",
)  # the README's demo evaluation


def _demo(args):
    """The README's demo evaluation: every mode on `--requests` / 7 problems of every level, in
    mode-major order (the order the evaluator ran them in before the engine, one static batch
    per `--slots` consecutive rows)."""
    model, tokenizer, _ = jaxthink.load(demo_model_dir())
    count = max(1, args.requests // len(DEMO_MODES))
    questions = [r["question"] for r in generate_problems(count, (1, 2, 3, 4, 5, 6), seed=11)]
    opts = ModeOptions.for_model(model.cfg)
    requests = []
    for mode in DEMO_MODES:
        req = prepare(tokenizer, questions, mode, opts, True)
        for ids, s in zip(encode_prompts(tokenizer, req.prompts), req.setups, strict=True):
            requests.append(
                Request(
                    prompt=ids,
                    key=prompt_key(0, len(requests)),
                    max_new_tokens=256,
                    mode=tuple(
                        getattr(s, f) for f in ("phase", "control", "budget", "grace", "extend")
                    ),
                )
            )
    return model, policy_tokens(tokenizer, opts, model.cfg.vocab_size), requests


def run_static(model, tok, requests, slots: int):
    """The static batch: `slots` requests at a time, each batch until its longest row ends.
    Returns ({request: tokens}, slot-steps)."""
    graphdef, params = nnx.split(model)
    decoding = Engine(model).decoding(slots)[:2]
    width = max(r.max_new_tokens for r in requests)
    out, slot_steps = {}, 0
    for start in range(0, len(requests), slots):
        batch = requests[start : start + slots]
        rows = len(batch)
        batch = batch + [batch[-1]] * (slots - rows)  # one compiled shape
        pparams, sampling, _, max_new = (
            jax.tree.map(lambda *x: jnp.concatenate([jnp.atleast_1d(a) for a in x]), *items)
            for items in zip(*(Engine._row(r, 0) for r in batch), strict=True)
        )
        sampling = sampling.replace(keys=jax.vmap(jax.random.fold_in, (0, None))(sampling.keys, 0))
        state = sampler.start(
            graphdef, params, [list(r.prompt) for r in batch], pparams, tok, width
        )
        state = state.replace(max_new=max_new)
        state = sampler.decode(*decoding, state, pparams, tok, sampling, jnp.int32(0))
        lengths = np.asarray(state.lengths)
        tokens = np.asarray(state.tokens)
        slot_steps += int(lengths.max()) * slots
        out.update({start + i: tokens[i, : lengths[i]].tolist() for i in range(rows)})
    return out, slot_steps


def run_engine(model, tok, requests, slots: int):
    engine = Engine(model)
    out = {s.request: s.tokens.tolist() for s in engine.run(requests, tok, slots)}
    return out, engine.stats


def warm_up_set(requests, slots: int):
    """The first 2 x slots requests and those with the longest prompt and max_new_tokens: the
    same buffer and cache shapes as the whole set."""
    longest = max(requests, key=lambda r: r.max_new_tokens)
    widest = max(requests, key=lambda r: len(r.prompt))
    return [*requests[: 2 * slots], longest, widest]


def measure(name: str, model, tok, requests, slots: int) -> dict:
    timed = {}
    for label, fn in (("static", run_static), ("engine", run_engine)):
        fn(model, tok, warm_up_set(requests, slots), slots)  # compiles
        t0 = time.perf_counter()
        out, extra = fn(model, tok, requests, slots)
        timed[label] = (time.perf_counter() - t0, out, extra)
    (t_static, static, slot_steps), (t_engine, engine, stats) = timed["static"], timed["engine"]
    tokens = sum(map(len, engine.values()))
    lengths = sorted(map(len, engine.values()))
    return dict(
        workload=name,
        requests=len(requests),
        slots=slots,
        tokens=tokens,
        median=lengths[len(lengths) // 2],
        longest=lengths[-1],
        same_tokens=sum(static[r] == engine[r] for r in engine),
        static_tok_s=tokens / t_static,
        engine_tok_s=tokens / t_engine,
        static_occupancy=tokens / slot_steps,
        engine_occupancy=stats.occupancy,
        speedup=t_static / t_engine,
        kv_mib=stats.kv_bytes_per_slot / 2**20,
    )


def main(argv: list[str] | None = None) -> None:
    run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> None:
    """Measures each workload of --workload and prints its table row."""
    builders = {"skewed": _skewed, "demo": _demo}
    print(f"devices: {jax.devices()}")
    print(HEADER)
    for name in args.workload.split(","):
        print(format_row(measure(name, *builders[name](args), args.slots)), flush=True)


HEADER = (
    "| workload | requests | slots (KV MiB each) | tokens | median / longest | same tokens | "
    "static tok/s | engine tok/s | static occupancy | engine occupancy | speedup |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r: dict) -> str:
    """A `measure` result as a row of HEADER's table."""
    return (
        f"| {r['workload']} | {r['requests']} | {r['slots']} ({r['kv_mib']:.2f}) | {r['tokens']} | "
        f"{r['median']} / {r['longest']} | {r['same_tokens']} of {r['requests']} | "
        f"{r['static_tok_s']:.0f} | {r['engine_tok_s']:.0f} | "
        f"{100 * r['static_occupancy']:.1f}% | {100 * r['engine_occupancy']:.1f}% | "
        f"{r['speedup']:.2f}x |"
    )
