"""`python -m infer --mode hybrid`: a thinking model steering a base model (docs/methods.md 3).

    python -m infer --mode hybrid --prompt "347*26"        # the shipped demo pair
    python -m infer --mode hybrid --model THINKING_DIR --base-model BASE_DIR \\
        --steering runs/steer/steering.npz --prompt "347*26"
    python -m infer --mode hybrid ... --ablation bias_only --data test.jsonl --out runs/eval_hybrid

`--model` is the thinking model, `--base-model` the base model it steers (the same vocabulary),
`--steering` the file of `python -m train steer`; with none of the three, the demo pair shipped in
the package (`jaxthink/demo_pair`: thinking/, base/, steering.npz). Decoding is greedy; the output shows which share
of the tokens were steered. With `--data` the evaluation runner grades the hybrid like any mode.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class HybridSettings:
    """What `--mode hybrid` adds to a request: the thinking model, the base model it steers, the
    steering file, the steering coefficients to choose from and the ablation."""

    model: str
    base_model: str
    steering: str
    coefficients: tuple[float, ...]
    ablation: str = "none"


def add_arguments(parser) -> None:
    from jaxthink.hybrid.decoding import ABLATIONS

    g = parser.add_argument_group("hybrid decoding (--mode hybrid)")
    g.add_argument("--base-model", help="the base model's checkpoint directory")
    g.add_argument("--steering", help="a steering file (python -m train steer)")
    g.add_argument(
        "--coefficients", help="comma list of steering coefficients (default 0.1,0.2,...,1.0)"
    )
    g.add_argument("--ablation", choices=ABLATIONS, default="none", help="default: none")


def settings_of(args) -> HybridSettings | None:
    """The hybrid settings of parsed arguments, None for a request that is not a hybrid one;
    raises ValueError naming the flag for bad or misplaced hybrid flags."""
    from jaxthink.hybrid.decoding import DEFAULT_COEFFICIENTS

    if "hybrid" not in (args.mode or []):
        given = [f for f in ("base_model", "steering", "coefficients") if getattr(args, f)]
        if given or args.ablation != "none":
            flags = ", ".join("--" + f.replace("_", "-") for f in given) or "--ablation"
            raise ValueError(f"{flags}: only for --mode hybrid")
        return None
    if args.mode != ["hybrid"]:
        raise ValueError("--mode hybrid runs alone: give it as the only --mode")
    paths = pair_paths("--mode hybrid", args.model, args.base_model, args.steering)
    if args.temperature != 0 or args.n != 1:
        raise ValueError("--mode hybrid decodes greedily: use --temperature 0 and --n 1")
    grid = (
        DEFAULT_COEFFICIENTS
        if args.coefficients is None
        else parse_grid(args.coefficients, "--coefficients")
    )
    return HybridSettings(*paths, tuple(grid), args.ablation)


def pair_paths(command: str, model, base_model, steering) -> tuple[str, str, str]:
    """(thinking model, base model, steering file) as given, or the shipped demo pair's when none
    of the three is given; raises ValueError naming the missing flags of a partial set."""
    if not any((model, base_model, steering)):
        from jaxthink.loading import demo_pair_dir

        pair = demo_pair_dir()
        return str(pair / "thinking"), str(pair / "base"), str(pair / "steering.npz")
    flags = (
        ("--model THINKING_DIR", model),
        ("--base-model DIR", base_model),
        ("--steering FILE", steering),
    )
    missing = [flag for flag, value in flags if not value]
    if missing:
        raise ValueError(
            f"{command} needs {' and '.join(missing)} (or none of the three: the shipped demo pair)"
        )
    return str(model), str(base_model), str(steering)


def parse_grid(text: str, flag: str) -> tuple[float, ...]:
    """`"0.1,0.5,1"` -> (0.1, 0.5, 1.0); raises ValueError naming `flag` for bad or no numbers."""
    try:
        grid = tuple(float(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected numbers like 0.1,0.5,1.0") from None
    if not grid:
        raise ValueError(f"{flag} {text!r}: give at least one coefficient")
    return grid


def load_generate(settings: HybridSettings):
    """`hybrid_generate_fn` with the base model and steering file of `settings` loaded."""
    import jaxthink
    from jaxthink.hybrid.decoding import hybrid_generate_fn
    from jaxthink.hybrid.vectors import load_steering

    base_model, base_tokenizer, _ = jaxthink.load(settings.base_model)
    steering = load_steering(settings.steering)
    return hybrid_generate_fn(
        base_model, base_tokenizer, steering, settings.coefficients, settings.ablation
    )


def run_cli(command, generate, model, tokenizer, prompts: list[str]) -> None:
    """Decodes the prompts of `command` (a `GenerateCommand`) with `generate` (`load_generate`)
    and prints them with the share of steered tokens."""
    from infer.cli import _show

    settings = command.settings
    t0 = time.perf_counter()
    results = generate(
        model,
        tokenizer,
        prompts,
        "hybrid",
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        slots=settings.slots,
        chat=not command.raw,
    )
    for g in results:
        if command.json:
            print(json.dumps(g.to_json()), flush=True)
        else:
            _show(g, sys.stdout)
            print(
                f"steered {g.steered_tokens} of {g.num_tokens} tokens "
                f"({100 * g.steered_fraction:.1f}%)\n"
            )
    if not command.json:
        total = sum(g.num_tokens for g in results)
        steered = sum(g.steered_tokens for g in results)
        print(
            f"{len(results)} samples, {total} tokens ({100 * steered / max(total, 1):.1f}% "
            f"steered) in {time.perf_counter() - t0:.1f}s"
        )
