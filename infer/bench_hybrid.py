"""`python -m infer bench-hybrid`: cached hybrid decoding against the uncached published loop.

Both decode the same prompt greedily with the same pair of random-weight models and the same
random steering file, one prompt (the published algorithm's batch), fp32 on CPU, after warm-up:
    cached     jaxthink.hybrid.decoding: KV caches, the slot engine's loop, candidates batched
    uncached   jaxthink.hybrid.reference: every sequence re-run in full for every token,
               once per coefficient when the models disagree
The base model is the thinking model with Gaussian noise on every weight (`--base-noise`, relative
to each tensor's spread), so that the two agree on most tokens as a real pair does; the uncached
loop's cost grows with the steered fraction, which is printed next to the speeds. The two token
sequences are compared too (they must be equal).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from infer.bench import _best_of
from jaxthink.models.shapes import SHAPES, demo_shape

BENCH_SHAPES = {"demo": demo_shape(), "tiny": SHAPES["tiny"]}


def make_pair(shape: str, noise: float, seed: int = 0):
    """(thinking model, base model): random weights, the base a noisy copy of the thinking one."""
    from flax import nnx

    from jaxthink.models import ModelConfig, Qwen

    cfg = ModelConfig.from_hf(
        {
            **BENCH_SHAPES[shape],
            "architectures": ["Qwen2ForCausalLM"],
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
        },
        source=f"bench shape {shape}",
    )
    graphdef, params = nnx.split(Qwen(cfg, rngs=nnx.Rngs(seed)))
    leaves, treedef = jax.tree.flatten(params)
    # Matrices at 4x the init spread (0.08, as tests/hf_models.py): greedy text that does not
    # collapse onto one repeated token, so the two models' choices are worth comparing.
    leaves = [4.0 * x if x.ndim > 1 else x for x in leaves]
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [
        x + noise * jnp.std(x) * jax.random.normal(k, x.shape, x.dtype) if x.ndim > 1 else x
        for x, k in zip(leaves, keys, strict=True)
    ]
    merge = lambda xs: nnx.merge(graphdef, jax.tree.unflatten(treedef, xs))
    return merge(leaves), merge(noisy), cfg


def random_steering(cfg, n_latents: int, norm: float, seed: int = 0):
    """A steering file of random directions (SAE and vectors) at the middle blocks."""
    from jaxthink.hybrid.sae import init_sae
    from jaxthink.hybrid.vectors import SteeringVectors

    rng = np.random.default_rng(seed)
    e = cfg.hidden_size
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    return SteeringVectors(
        layer=cfg.num_layers // 2,
        bias=(norm * unit(rng.normal(size=e))).astype(np.float32),
        vectors=(norm * unit(rng.normal(size=(n_latents, e)))).astype(np.float32),
        sae=init_sae(rng, n_latents, e),
        sae_mean=np.zeros(e, np.float32),
        sae_layer=cfg.num_layers // 2,
        meta={"note": "random, for benchmarking"},
    )


def warm_reference(thinking, base, steering, prompt_len: int, new_tokens: int) -> None:
    """Compiles the uncached loop's programs for every padded length the timed run meets."""
    from flax import nnx

    from jaxthink.hybrid.reference import _BUCKET, _base_position, _thinking_position

    (td, tp), (bd, bp) = nnx.split(thinking), nnx.split(base)
    vector = jnp.zeros(base.cfg.hidden_size)
    sae = jax.tree.map(jnp.asarray, steering.sae)
    for width in range(_BUCKET, prompt_len + new_tokens + _BUCKET, _BUCKET):
        row = np.zeros((1, width), np.int32)
        _thinking_position(td, tp, row, 1, sae, jnp.asarray(steering.sae_mean), steering.sae_layer)
        _base_position(bd, bp, row, 1)
        _base_position(bd, bp, row, 1, vector=vector, steer_layer=steering.layer)


def bench(args) -> dict:
    from jaxthink.hybrid.decoding import DEFAULT_COEFFICIENTS, run_hybrid
    from jaxthink.hybrid.reference import hybrid_reference

    thinking, base, cfg = make_pair(args.shape, args.base_noise)
    steering = random_steering(cfg, args.latents, args.vector_norm)
    prompt = np.random.default_rng(1).integers(10, cfg.vocab_size, args.prompt_len).tolist()
    coefficients = DEFAULT_COEFFICIENTS
    run = lambda: run_hybrid(
        thinking,
        base,
        [prompt],
        [prompt],
        steering,
        coefficients=coefficients,
        max_new_tokens=args.new_tokens,
        eos_ids=(),
    )
    (cached_sample,) = run()  # warm-up: compiles, and lays the weights out for one slot
    cached = _best_of(run, args.repeats)
    warm_reference(thinking, base, steering, args.prompt_len, args.new_tokens)
    t0 = time.perf_counter()
    ref = hybrid_reference(
        thinking,
        base,
        prompt,
        prompt,
        steering,
        coefficients=coefficients,
        max_new_tokens=args.new_tokens,
    )
    uncached = time.perf_counter() - t0
    same = ref.tokens == cached_sample.tokens.tolist()
    return dict(
        shape=args.shape,
        params_m=cfg.num_params / 1e6,
        new_tokens=args.new_tokens,
        coefficients=len(coefficients),
        steered=float(np.mean(ref.steered)),
        forwards_per_token=ref.forwards / len(ref.tokens),
        cached_tok_s=args.new_tokens / cached,
        uncached_tok_s=args.new_tokens / uncached,
        speedup=uncached / cached,
        same_tokens=same,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", choices=list(BENCH_SHAPES), default="demo")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--latents", type=int, default=15, help="SAE latents (one vector each)")
    p.add_argument("--vector-norm", type=float, default=8.0)
    p.add_argument("--base-noise", type=float, default=0.03, help="relative noise on the base")
    p.add_argument("--repeats", type=int, default=3, help="best of this many cached runs")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m infer bench-hybrid", description=__doc__)
    add_arguments(p)
    run_command(p.parse_args(argv))


def run_command(args: argparse.Namespace) -> None:
    """Times the cached hybrid decode against the uncached loop and prints the table row."""
    r = bench(args)
    print(f"devices: {jax.devices()}")
    print(
        "| model | new tokens | coefficients | steered | uncached runs/token | cached tok/s "
        "| uncached tok/s | speedup | same tokens |\n|---|---|---|---|---|---|---|---|---|"
    )
    print(
        f"| {r['shape']} ({r['params_m']:.2f}M) x2 | {r['new_tokens']} | {r['coefficients']} "
        f"| {100 * r['steered']:.1f}% | {r['forwards_per_token']:.2f} | {r['cached_tok_s']:.1f} "
        f"| {r['uncached_tok_s']:.1f} | {r['speedup']:.1f}x | {'yes' if r['same_tokens'] else 'NO'} |"
    )
