"""`python -m infer`: generate with any mode from the command line.

    python -m infer --mode think_budget=512 --prompt "What is 4821 + 967?"
    echo "12*34" | python -m infer --mode thinkless --json
    python -m infer --data problems.jsonl --mode think_budget=128,256 --n 8 --out runs/eval
    python -m infer bench
    python -m infer --mode hybrid --model THINKING_DIR --base-model BASE_DIR --steering FILE
    python -m infer bench-hybrid

Without --model the shipped demo model answers. Human output shows the thinking dimmed, then the
answer, the mode and token counts; --json prints one JSON object per sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from infer import hybrid
from jaxthink.policies import ModeError, ModeOptions, modes_help, parse_modes

DIM, BOLD, RESET = "\033[2m", "\033[1m", "\033[0m"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infer",
        description="Generate with a reasoning mode (subcommands `bench`: decode speed, "
        "`bench-hybrid`: cached against uncached hybrid decoding).",
        epilog=modes_help() + hybrid.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument(
        "--mode", action="append", help="a mode, e.g. think_budget=512 (repeat or comma-sweep)"
    )
    p.add_argument("--prompt", action="append", help="a question (repeatable; default: stdin)")
    p.add_argument("--data", help="a JSONL/Parquet file of problems: evaluate instead")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 1024 (demo: 320)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--slots", "--batch-size", type=int, default=None, dest="slots",
        help="decode slots: rows decoded together, refilled from the queue as rows end "
        "(default: one per sample, within a quarter of the device's memory, at most 64 on CPU)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per sample on stdout")
    p.add_argument("--out", help="output directory for an evaluation (--data)")
    own = "default: the checkpoint's mode_options, else"
    p.add_argument("--answer-prefix", help=f"{own} {ModeOptions.answer_prefix!r}")
    p.add_argument("--no-think-text", help=f"{own} {ModeOptions.no_think_text!r}")
    p.add_argument("--wait-text", help=f"{own} {ModeOptions.wait_text!r}")
    p.add_argument(
        "--finish-line", action="store_true", help="budget forcing: end the line first (10%% grace)"
    )
    hybrid.add_arguments(p)
    return p


def parse_args(argv: list[str] | None):
    """Parses and validates everything cheap to check, before any model is loaded."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.hybrid = hybrid.check_args(parser, args)  # sets args.modes for --mode hybrid
        if not args.hybrid:
            args.modes = [m for text in (args.mode or ["think"]) for m in parse_modes(text)]
    except ModeError as e:
        parser.error(str(e))
    if args.n < 1:
        parser.error(f"--n {args.n}: the number of samples per prompt must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.data and not args.out:
        parser.error(
            f"--data {args.data} needs --out DIR (samples, summary, table and plots go there)"
        )
    if args.data is None and len(args.modes) > 1:
        parser.error("several modes are for evaluation sweeps: give --data FILE, or one --mode")
    return args


def mode_options(args, model_cfg) -> ModeOptions:
    """The checkpoint's own mode options with the command line's explicit values on top."""
    return ModeOptions.for_model(
        model_cfg,
        no_think_text=args.no_think_text,
        answer_prefix=args.answer_prefix,
        finish_line=args.finish_line or None,
        wait_text=args.wait_text,
    )


def _prompts(args) -> list[str]:
    if args.prompt:
        return args.prompt
    if sys.stdin is not None and not sys.stdin.isatty():
        lines = [line.strip() for line in sys.stdin]
        if any(lines):
            return [line for line in lines if line]
    return []


def _show(g, out) -> None:
    tokens_s = g.num_tokens / g.seconds if g.seconds > 0 else float("nan")
    print(f"{BOLD}Q:{RESET} {g.prompt}", file=out)
    if g.thinking:
        print(f"{DIM}{g.thinking.strip()}{RESET}", file=out)
    print(f"{BOLD}A:{RESET} {g.answer.strip()}", file=out)
    forced = ", budget forced" if g.budget_forced else ""
    print(
        f"{DIM}[mode {g.mode} -> {g.chosen_mode}{forced} | thinking {g.num_thinking_tokens} "
        f"+ answer {g.num_answer_tokens} tokens | {g.finish_reason} | {tokens_s:.0f} tok/s]{RESET}\n",
        file=out,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from infer.bench import main as bench

        return bench(argv[1:])
    if argv[:1] == ["bench-hybrid"]:
        from infer.bench_hybrid import main as bench_hybrid

        return bench_hybrid(argv[1:])
    if argv[:1] == ["bench-slots"]:
        from infer.bench_slots import main as bench_slots

        return bench_slots(argv[1:])
    args = parse_args(argv)
    try:
        _main(args)
    except ValueError as e:  # every input error jaxthink raises is a ValueError with a message
        sys.exit(f"python -m infer: error: {e}")


def _main(args) -> None:
    import jaxthink
    from jaxthink.loading import demo_model_dir

    model_dir = args.model or demo_model_dir()
    model, tokenizer, model_cfg = jaxthink.load(model_dir)
    args.options = mode_options(args, model_cfg)
    demo = args.model is None
    max_new = args.max_new_tokens or (320 if demo else 1024)
    if args.hybrid:
        return hybrid.run_cli(args, model, tokenizer, _prompts(args), max_new)
    if args.data:
        from infer.evaluate import evaluate_cli

        return evaluate_cli(args, model, tokenizer, max_new)
    prompts = _prompts(args) or (demo_examples() if demo else [])
    if demo:  # the demo model knows one format: "What is 4821 + 967?" -> "4821+967"
        from jaxthink.data.arithmetic import question_from_text

        prompts = [question_from_text(p) for p in prompts]
    if not prompts:
        sys.exit("no prompts: give --prompt TEXT (repeatable) or prompts on stdin, one per line")
    run(args, model, tokenizer, prompts, max_new)


def demo_examples() -> list[str]:
    """A few built-in problems, one per level of the demo task, for the demo model with no prompt."""
    return ["4821*10", "482*100", "739215+8", "4821+967", "23*47", "4821*36"]


def settings_of(args, max_new: int):
    """The command line's `GenerateConfig` (checked: a bad value is refused before compiling)."""
    from jaxthink.decode.generate import GenerateConfig

    return GenerateConfig(
        n=args.n, max_new_tokens=max_new, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, seed=args.seed, slots=args.slots,
    )  # fmt: skip


def run(args, model, tokenizer, prompts: list[str], max_new: int) -> None:
    import jaxthink

    settings = settings_of(args, max_new)
    many = len(prompts) * args.n > (args.slots or 64)
    progress = _progress_bar(len(prompts) * args.n) if many else None
    t0 = time.perf_counter()
    results = jaxthink.generate(
        model, tokenizer, prompts, args.modes[0], settings, options=args.options,
        progress=progress.update if progress else None,
    )  # fmt: skip
    if progress:
        progress.close()
    for g in results:
        if args.json:
            print(json.dumps(g.to_json()), flush=True)
        else:
            _show(g, sys.stdout)
    if not args.json:
        total = sum(g.num_tokens for g in results)
        print(f"{len(results)} samples, {total} tokens in {time.perf_counter() - t0:.1f}s")


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", file=sys.stderr)
