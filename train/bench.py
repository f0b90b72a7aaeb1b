"""`python -m train bench`: seconds per RL step, split into its phases, and tokens/s.

    python -m train bench                          # tiny and ~50M models, defaults below
    python -m train bench --sizes tiny --steps 5 --prompts 8 --group-size 8 --max-new-tokens 128

Each size is a fresh random model of the character vocabulary (configs/models/char_*.yaml), so
nothing needs downloading. One warm-up step compiles everything; the timed steps then report
rollout (the compiled sampler, `thinkless` mode, plus grading), log-probs (old and reference,
recomputed with `forward`), update (all mini-batch optimizer updates), the whole step, generated
tokens per second of rollout, and trained tokens (prompt + response rows) per second of step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "configs" / "models"
SIZES = {"tiny": CONFIGS / "char_tiny.yaml", "50m": CONFIGS / "char_50m.yaml"}
PHASES = ("seconds_rollout", "seconds_logprobs", "seconds_update", "seconds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train bench", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,50m", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--mini-batches", type=int, default=2, help="optimizer updates per step")
    p.add_argument("--json", action="store_true", help="one JSON object per size")
    return p


def rl_config(args, model_file: Path, run_dir: str):
    from jaxthink.training.config import RLConfig
    from jaxthink.training.configfile import load_config

    return load_config(
        RLConfig,
        None,
        [
            f"model={model_file}",
            "data.levels=1,2",
            "data.count=1000",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.group_size={args.group_size}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.temperature=1.0",
            f"mini_batches={args.mini_batches}",
            f"steps={args.steps + 1}",
            f"run_dir={run_dir}",
        ],
    )


def bench_size(args, name: str) -> dict:
    """Mean phase seconds and throughput of `args.steps` RL steps of one model size."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxthink.training.model_setup import build_model
    from jaxthink.training.records import prompt_batches, read_records
    from jaxthink.training.rl import RLSetup, rl_step
    from jaxthink.training.run import commit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = rl_config(args, SIZES[name], tmp)
        model, tokenizer, model_cfg = build_model(cfg.model, tmp)
        graphdef, params = nnx.split(model)
        setup, tx = RLSetup.create(cfg, graphdef, tokenizer, params)
        params, opt_state = commit((params, tx.init(params)))
        prompts = iter(prompt_batches(read_records(cfg.data), args.prompts, seed=0))
        key = jax.random.key(0)
        steps = []
        for i in range(args.steps + 1):
            key, step_key = jax.random.split(key)
            params, opt_state, metrics = rl_step(setup, params, opt_state, next(prompts), step_key)
            if i > 0:  # step 0 compiles
                steps.append(metrics)
    mean = lambda k: float(np.mean([m[k] for m in steps]))
    rows = args.prompts * args.group_size
    return {
        "model": name,
        "params_m": model_cfg.num_params / 1e6,
        "rows": rows,
        **{k: mean(k) for k in PHASES},
        "generated_tokens": mean("generated_tokens"),
        "rollout_tokens_per_s": mean("rollout_tokens_per_s"),
        "tokens_per_s": mean("tokens_per_s"),
    }


def table(results: list[dict]) -> str:
    head = (
        f"{'model':<6} {'params':>8} {'rows':>5} {'gen tok':>8} {'rollout s':>10} "
        f"{'logprob s':>10} {'update s':>9} {'step s':>8} {'gen tok/s':>10} {'tok/s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['model']:<6} {r['params_m']:>7.2f}M {r['rows']:>5} {r['generated_tokens']:>8.0f} "
            f"{r['seconds_rollout']:>10.3f} {r['seconds_logprobs']:>10.3f} "
            f"{r['seconds_update']:>9.3f} {r['seconds']:>8.3f} "
            f"{r['rollout_tokens_per_s']:>10.0f} {r['tokens_per_s']:>8.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown or not names or args.steps < 1:
        build_parser().error(
            f"--sizes {args.sizes!r}: choose from {', '.join(SIZES)}; --steps must be >= 1"
        )
    results = []
    for name in names:
        results.append(bench_size(args, name))
        if args.json:
            print(json.dumps(results[-1]), flush=True)
    if not args.json:
        print(table(results))
        print(
            "rollout: sampling + grading; logprob: old + reference log-probs; update: "
            f"{args.mini_batches} optimizer updates; gen tok/s: generated tokens per rollout "
            "second; tok/s: prompt + response rows per step second"
        )


if __name__ == "__main__":
    main()
