"""`python -m infer --mode hybrid`: a thinking model steering a base model (methods.md section 3).

    python -m infer --mode hybrid --model THINKING_DIR --base-model BASE_DIR \\
        --steering runs/steer/steering.npz --prompt "347*26"
    python -m infer --mode hybrid ... --ablation bias_only --data test.jsonl --out runs/eval_hybrid

`--model` is the thinking model, `--base-model` the base model it steers (the same vocabulary),
`--steering` the file of `python -m train steer`. Decoding is greedy; the output shows which share
of the tokens were steered. With `--data` the evaluation runner grades the hybrid like any mode.
"""

from __future__ import annotations

import json
import sys
import time

HELP = (
    "\n  hybrid               the thinking model (--model) steers a base model (--base-model) with"
    "\n                       the vectors of --steering FILE wherever their greedy tokens differ"
)


def add_arguments(parser) -> None:
    from jaxthink.decode.hybrid import ABLATIONS

    g = parser.add_argument_group("hybrid decoding (--mode hybrid)")
    g.add_argument("--base-model", help="the base model's checkpoint directory")
    g.add_argument("--steering", help="a steering file (python -m train steer)")
    g.add_argument(
        "--coefficients", help="comma list of steering coefficients (default 0.1,0.2,...,1.0)"
    )
    g.add_argument("--ablation", choices=ABLATIONS, default="none", help="default: none")


def check_args(parser, args) -> bool:
    """Whether the request is a hybrid one; validates it (and sets args.modes) if so, and calls
    parser.error on bad input."""
    from jaxthink.decode.hybrid import DEFAULT_COEFFICIENTS
    from jaxthink.policies import Mode

    if "hybrid" not in (args.mode or []):
        given = [f for f in ("base_model", "steering", "coefficients") if getattr(args, f)]
        if given or args.ablation != "none":
            flags = ", ".join("--" + f.replace("_", "-") for f in given) or "--ablation"
            parser.error(f"{flags}: only for --mode hybrid")
        return False
    if args.mode != ["hybrid"]:
        parser.error("--mode hybrid runs alone: give it as the only --mode")
    if not args.base_model or not args.steering:
        parser.error("--mode hybrid needs --base-model DIR and --steering FILE")
    if args.model is None:
        parser.error("--mode hybrid needs --model THINKING_DIR (the thinking model)")
    if args.temperature != 0 or args.n != 1:
        parser.error("--mode hybrid decodes greedily: use --temperature 0 and --n 1")
    try:
        text = args.coefficients
        args.coefficient_grid = (
            DEFAULT_COEFFICIENTS if text is None else tuple(float(c) for c in text.split(",") if c)
        )
    except ValueError:
        parser.error(f"--coefficients {args.coefficients!r}: expected numbers like 0.5,1.0")
    if not args.coefficient_grid:
        parser.error("--coefficients: give at least one coefficient")
    args.modes = [Mode("hybrid")]
    return True


def generate_fn(base_model, base_tokenizer, steering, coefficients, ablation):
    """A `jaxthink.generate`-shaped function running the hybrid (for the evaluation runner)."""
    from jaxthink.decode.hybrid import hybrid_generate

    def generate(model, tokenizer, prompts, mode, *, n=1, max_new_tokens=512, temperature=0.0,
                 seed=0, slots=None, progress=None, **_):  # fmt: skip
        if n != 1 or temperature != 0:
            raise ValueError("hybrid decoding is greedy: n must be 1 and temperature 0")
        return hybrid_generate(
            model, base_model, tokenizer, prompts, steering, base_tokenizer=base_tokenizer,
            coefficients=coefficients, ablation=ablation, max_new_tokens=max_new_tokens,
            seed=seed, slots=slots, progress=progress,
        )  # fmt: skip

    return generate


def run_cli(args, model, tokenizer, prompts: list[str], max_new: int) -> None:
    import jaxthink
    from jaxthink.steer.vectors import load_steering

    base_model, base_tokenizer, _ = jaxthink.load(args.base_model)
    steering = load_steering(args.steering)
    generate = generate_fn(
        base_model, base_tokenizer, steering, args.coefficient_grid, args.ablation
    )
    if args.data:
        from infer.evaluate import evaluate_cli

        return evaluate_cli(args, model, tokenizer, max_new, generate_fn=generate)
    if not prompts:
        sys.exit("no prompts: give --prompt TEXT (repeatable) or prompts on stdin, one per line")
    t0 = time.perf_counter()
    results = generate(
        model, tokenizer, prompts, "hybrid", max_new_tokens=max_new, seed=args.seed,
        slots=args.slots,
    )  # fmt: skip
    for g in results:
        if args.json:
            print(json.dumps(g.to_json()), flush=True)
        else:
            from infer.cli import _show

            _show(g, sys.stdout)
            print(f"steered {g.steered_tokens} of {g.num_tokens} tokens "
                  f"({100 * g.steered_fraction:.1f}%)\n")  # fmt: skip
    if not args.json:
        total = sum(g.num_tokens for g in results)
        steered = sum(g.steered_tokens for g in results)
        print(f"{len(results)} samples, {total} tokens ({100 * steered / max(total, 1):.1f}% "
              f"steered) in {time.perf_counter() - t0:.1f}s")  # fmt: skip
