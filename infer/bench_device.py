"""`python -m infer bench-device`: decode speed of a real-sized model against the memory roofline.

    python -m infer bench-device                      # R1-Distill-Qwen-1.5B shape, bf16: a GPU/TPU
    python -m infer bench-device --shape tiny --dtype float32 --batch 2 --new-tokens 8 \\
        --prompt-len 16 --requests 8 --slots 4       # the same tables in seconds, on a CPU

One run on whatever device JAX has. A random-weight model of `--shape` (`jaxthink.models.shapes`)
is built directly on the device in `--dtype`. Two tables:

- the decode loop (`sampler.decode`, prefill before the clock) at each `--batch`, greedy and
  sampled (temperature 0.6, top-p 0.95: a random model's near-flat logits, the costly case), over
  `--new-tokens` steps after `--prompt-len`-token prompts: ms per step, tokens/s, and the
  roofline: the bytes a step must read (every weight but the input embedding's unread rows, and
  each row's KV cache up to its mean filled length) over the read bandwidth measured on the device
  (`read_bandwidth_gbs`), and the step's time over it;
- continuous batching (`infer.bench_slots.measure`): `--requests` sampled requests of skewed
  lengths (median 1/8 of `--new-tokens`; prompts of 15/16 to all of `--prompt-len`) through
  `--slots` slots against the static batch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench import SAMPLINGS, _sampling, _time_samplings, read_bandwidth_gbs
from infer.bench_slots import HEADER, _no_control_tokens, format_row, measure, skewed_requests
from jaxthink.models.shapes import SHAPES

DECODE_SAMPLINGS = ("greedy", "T=0.6 top-p 0.95")
BANDWIDTH_BYTES = 1 << 28  # the array the read bandwidth is measured on: far beyond any cache


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="r1-distill-qwen-1.5b", choices=list(SHAPES))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--batch", action="append", type=int, help="default: 1, 8 and 64")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--requests", type=int, default=256, help="continuous batching's requests")
    p.add_argument("--slots", type=int, default=64, help="continuous batching's slots")
    p.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")


def random_model(shape: str, dtype):
    """A random-weight model of `shape`, initialised on the default device."""
    from flax import nnx

    from jaxthink.models import ModelConfig, Qwen

    fields = {"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 32768}
    cfg = ModelConfig.from_hf({**fields, **SHAPES[shape]}, source=f"bench shape {shape}")
    return Qwen(cfg, dtype=dtype, rngs=nnx.Rngs(0))


def step_bytes(model, batch: int, cache_positions: float) -> int:
    """Bytes one decode step must read: every weight (only `batch` rows of an untied input
    embedding) and `batch` caches of `cache_positions` positions."""
    from flax import nnx

    from jaxthink.decode.engine import kv_bytes_per_slot

    cfg = model.cfg
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    dtype = leaves[0].dtype
    weights = sum(x.size for x in leaves) * dtype.itemsize
    if not cfg.tie_word_embeddings:  # the lookup reads `batch` rows of the input embedding
        weights -= (cfg.vocab_size - batch) * cfg.hidden_size * dtype.itemsize
    kv = kv_bytes_per_slot(cfg, 1, dtype) * cache_positions
    return int(weights + batch * kv)


def decode_rows(
    model, tok, batches, prompt_len: int, new_tokens: int, repeats: int, bandwidth: float
):
    """Prints and returns a row per (batch, sampling): ms per step against the roofline at
    `bandwidth` bytes / second."""
    from flax import nnx

    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        prompts = [rng.integers(10, model.cfg.vocab_size, prompt_len).tolist() for _ in range(b)]
        samplings = [_sampling(b, *SAMPLINGS[name]) for name in DECODE_SAMPLINGS]
        times, _ = _time_samplings(
            graphdef, params, prompts, new_tokens, tok, samplings, repeats, 0
        )
        floor = step_bytes(model, b, prompt_len + new_tokens / 2) / bandwidth
        for name, t in zip(DECODE_SAMPLINGS, times, strict=True):
            rows.append(dict(batch=b, sampling=name, ms=t * 1e3, floor_ms=floor * 1e3, tok_s=b / t))
            print(
                f"| {b} | {name} | {t * 1e3:.2f} | {b / t:.0f} | {floor * 1e3:.2f} | "
                f"{t / floor:.2f}x |",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m infer bench-device", description=__doc__)
    add_arguments(p)
    run_command(p.parse_args(argv))


def run_command(args: argparse.Namespace) -> None:
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); shape {args.shape}, {args.dtype}")
    model = random_model(args.shape, dtype)
    bandwidth = read_bandwidth_gbs(BANDWIDTH_BYTES)
    print(f"read bandwidth: {bandwidth:.0f} GB/s")
    print("| batch | sampling | ms/step | tok/s | roofline ms | x roofline |")
    print("|---|---|---|---|---|---|")
    tok = _no_control_tokens(model.cfg.vocab_size)
    batches = args.batch or [1, 8, 64]
    timing = (args.prompt_len, args.new_tokens, args.repeats, bandwidth * 1e9)
    decode_rows(model, tok, batches, *timing)
    # prompts of 15/16 to all of --prompt-len: one or two 32-token buckets, so few programs to
    # compile; the lengths that differ tenfold are the outputs'
    prompts = (max(1, args.prompt_len * 15 // 16), args.prompt_len + 1)
    requests = skewed_requests(args.requests, args.new_tokens, model.cfg.vocab_size, prompts)
    print(HEADER)
    print(format_row(measure("skewed", model, tok, requests, args.slots)), flush=True)
