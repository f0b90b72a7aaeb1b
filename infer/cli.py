"""`python -m infer`: generate with any mode from the command line, evaluate, or benchmark.

    python -m infer --mode think_budget=512 --prompt "What is 4821 + 967?"
    echo "12*34" | python -m infer --mode thinkless --json
    python -m infer --data problems.jsonl --mode think_budget=128,256 --n 8 --out runs/eval
    python -m infer --mode hybrid --model THINKING_DIR --base-model BASE_DIR --steering FILE
    python -m infer bench
    python -m infer bench-hybrid
    python -m infer bench-device          # on a GPU / TPU: a 1.5B model against its roofline
    python -m infer hybrid-study --out runs/hybrid_study

The commands are subparsers: `generate` (the default, so `python -m infer --mode ...` is
`python -m infer generate --mode ...`), `bench`, `bench-hybrid`, `bench-slots`, `bench-device`
and `hybrid-study`. The flags of
`generate` become one checked `GenerateCommand` before any model is loaded. Without --model the
shipped demo model answers. Human output shows the thinking dimmed (colours only on a terminal,
and never with NO_COLOR set), then the answer, the mode and token counts; --json prints one JSON
object per sample. Argument errors exit with status 2, Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from infer import bench, bench_device, bench_hybrid, bench_slots, hybrid, hybrid_study
from jaxthink.decode.generate import GenerateConfig
from jaxthink.eval import PRESETS
from jaxthink.policies import Mode, ModeOptions, modes_help, parse_modes

PROG = "python -m infer"
DIM, BOLD, RESET = "\033[2m", "\033[1m", "\033[0m"
DEMO_MAX_NEW, MAX_NEW = 320, 1024  # --max-new-tokens defaults: the demo model, any other
# The commands beside `generate`: (one-line help, module with add_arguments and run_command)
COMMANDS = {
    "bench": ("decode speed beside transformers' generate", bench),
    "bench-hybrid": ("cached against uncached hybrid decoding", bench_hybrid),
    "bench-slots": ("continuous batching against a static batch", bench_slots),
    "bench-device": ("a real-sized model's decode against the memory roofline", bench_device),
    "hybrid-study": ("the hybrid against its base and thinking models", hybrid_study),
}
TORCH = 'pip install torch==2.13.0 (or pip install -e ".[bench]")'


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a hint, not the usage block."""

    commands: dict[str, argparse.ArgumentParser]  # the subparsers, by command (top level)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\ntry: {self.prog} --help\n")


@dataclass(frozen=True)
class GenerateCommand:
    """What `python -m infer [generate]` was asked, checked: built once from the arguments."""

    model: str | None  # a checkpoint directory; None: the shipped demo model
    modes: tuple[Mode, ...]  # one, or a sweep for an evaluation
    settings: GenerateConfig
    prompts: tuple[str, ...] = ()  # --prompt; none: read stdin
    data: str | None = None  # a problem file: evaluate into `out`
    out: str | None = None
    preset: str = "auto"  # how --data names its fields (load_problems)
    question_field: str | None = None
    answer_field: str | None = None
    json: bool = False
    answer_prefix: str | None = None  # mode options over the checkpoint's own
    no_think_text: str | None = None
    wait_text: str | None = None
    finish_line: bool = False
    hybrid: hybrid.HybridSettings | None = None  # --mode hybrid
    raw: bool = False  # prompts as they are, no chat template
    system: str | None = None  # a system turn in the chat template


def build_parser() -> Parser:
    """The parser of every command; `parse_args` adds `generate` when no command is named."""
    parser = Parser(
        prog=PROG, description="Generate with a reasoning mode, evaluate, or benchmark."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate",
        prog=PROG,
        help="generate or evaluate with a mode (the default command)",
        description="Generate with a reasoning mode, or with --data evaluate modes on a problem "
        f"set.\nThis is the default command ({PROG} generate ... is the same). The others:\n"
        + "".join(f"  {name:<14} {text}\n" for name, (text, _) in COMMANDS.items())
        + f"({PROG} COMMAND --help shows a command's flags)",
        epilog=modes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generate_arguments(generate)
    for name, (text, module) in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
    parser.commands = commands.choices
    return parser


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument(
        "--mode", action="append", help="a mode, e.g. think_budget=512 (repeat or comma-sweep)"
    )
    p.add_argument("--prompt", action="append", help="a question (repeatable; default: stdin)")
    p.add_argument("--data", help="a JSONL/Parquet file of problems: evaluate instead")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (default: %(default)s)")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature, 0 = greedy (default: %(default)s)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default: %(default)s)")
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="most likely tokens kept, 0 = all (default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"generated tokens per sample (default: {MAX_NEW}; the demo model: {DEMO_MAX_NEW})",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument(
        "--slots",
        "--batch-size",
        type=int,
        default=None,
        dest="slots",
        help="decode slots: rows decoded together, refilled from the queue as rows end "
        "(default: one per sample, within a quarter of the device's memory, at most 64 on CPU)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the prompts as they are, without the chat template (base models, few-shot)",
    )
    p.add_argument("--system", metavar="TEXT", help="a system message for the chat template")
    p.add_argument("--json", action="store_true", help="one JSON object per sample on stdout")
    p.add_argument("--out", help="output directory for an evaluation (--data)")
    p.add_argument(
        "--preset",
        choices=["auto", *PRESETS],
        default="auto",
        help="how --data names its fields (default: auto, told from the first record's keys)",
    )
    p.add_argument("--question-field", help="--data's question field (instead of the preset's)")
    p.add_argument("--answer-field", help="--data's answer field (instead of the preset's)")
    own = "default: the checkpoint's mode_options, else"
    p.add_argument("--answer-prefix", help=f"{own} {ModeOptions.answer_prefix!r}")
    p.add_argument("--no-think-text", help=f"{own} {ModeOptions.no_think_text!r}")
    p.add_argument("--wait-text", help=f"{own} {ModeOptions.wait_text!r}")
    p.add_argument(
        "--finish-line", action="store_true", help="budget forcing: end the line first (10%% grace)"
    )
    hybrid.add_arguments(p)


def parse_args(argv: list[str]) -> GenerateCommand | argparse.Namespace:
    """A `GenerateCommand` for `generate` (checked), a bench's flags for a bench. Bad input ends
    here with exit status 2, before any model is loaded."""
    parser = build_parser()
    if not argv or argv[0] not in parser.commands:
        argv = ["generate", *argv]
    args, unknown = parser.parse_known_args(argv)
    command = parser.commands[args.command]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command != "generate":
        return args
    try:
        return generate_command(args)
    except ValueError as e:  # ModeError and GenerateConfig's checks are ValueErrors
        command.error(str(e))


def generate_command(args: argparse.Namespace) -> GenerateCommand:
    """The checked command of `generate`'s parsed flags; raises ValueError naming a bad flag."""
    hybrid_settings = hybrid.settings_of(args)
    if hybrid_settings:
        modes = (Mode("hybrid"),)
    else:
        modes = tuple(m for text in (args.mode or ["think"]) for m in parse_modes(text))
    if args.n < 1:
        raise ValueError(f"--n {args.n}: the number of samples per prompt must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.data and not args.out:
        raise ValueError(
            f"--data {args.data} needs --out DIR (samples, summary, table and plots go there)"
        )
    if args.data is None and len(modes) > 1:
        raise ValueError("several modes are for evaluation sweeps: give --data FILE, or one --mode")
    fields = {
        "--preset": args.preset != "auto",
        "--question-field": args.question_field,
        "--answer-field": args.answer_field,
    }
    if args.data is None and any(fields.values()):
        raise ValueError(
            f"{', '.join(f for f, given in fields.items() if given)}: only with --data"
        )
    if args.raw and args.system is not None:
        raise ValueError("--system goes into the chat template, which --raw leaves out")
    if hybrid_settings and args.system is not None:
        raise ValueError("--system: not available with --mode hybrid")
    if args.prompt and not all(p.strip() for p in args.prompt):
        raise ValueError("--prompt: an empty prompt; give each --prompt some text")
    max_new = args.max_new_tokens or (DEMO_MAX_NEW if args.model is None else MAX_NEW)
    return GenerateCommand(
        model=args.model,
        modes=modes,
        settings=settings_of(args, max_new),
        prompts=tuple(args.prompt or ()),
        data=args.data,
        out=args.out,
        preset=args.preset,
        question_field=args.question_field,
        answer_field=args.answer_field,
        json=args.json,
        answer_prefix=args.answer_prefix,
        no_think_text=args.no_think_text,
        wait_text=args.wait_text,
        finish_line=args.finish_line,
        hybrid=hybrid_settings,
        raw=args.raw,
        system=args.system,
    )


def settings_of(args: argparse.Namespace, max_new: int) -> GenerateConfig:
    """The command line's `GenerateConfig` (checked: a bad value is refused before compiling)."""
    return GenerateConfig(
        n=args.n,
        max_new_tokens=max_new,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        slots=args.slots,
    )


def mode_options(command: GenerateCommand, model_cfg) -> ModeOptions:
    """The checkpoint's own mode options with the command line's explicit values on top."""
    return ModeOptions.for_model(
        model_cfg,
        no_think_text=command.no_think_text,
        answer_prefix=command.answer_prefix,
        finish_line=command.finish_line or None,
        wait_text=command.wait_text,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = parse_args(argv)
    try:
        if isinstance(command, GenerateCommand):
            _generate(command)
        else:
            _run_command(command)
    except KeyboardInterrupt:
        exit_interrupted(interrupted(command))
    except ValueError as e:  # every input error jaxthink raises is a ValueError with a message
        if not isinstance(command, GenerateCommand):
            raise
        sys.exit(f"{PROG}: error: {e}")


def interrupted(command: GenerateCommand | argparse.Namespace) -> str:
    """The one line Ctrl-C ends with (an evaluation says where it resumes from)."""
    if not isinstance(command, GenerateCommand):
        return f"{PROG} {command.command}: interrupted"
    if command.data is None:
        return f"{PROG}: interrupted"
    from infer.evaluate import SAMPLES_JSONL

    return (
        f"{PROG}: interrupted; finished samples are kept in {Path(command.out) / SAMPLES_JSONL}: "
        "rerun the same command to resume"
    )


def exit_interrupted(message: str) -> NoReturn:
    """Prints `message` and ends the process with status 130 at once. Tearing the interpreter
    down after an interrupt inside a compile or a running XLA computation can crash it (SIGSEGV,
    with or without a traceback), and whatever the command wrote is complete: an evaluation
    appends whole lines, and its reader drops a line cut short."""
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "bench":
        require_torch("bench", "the bench compares jaxthink with transformers' PyTorch models")
    if args.command == "bench-slots" and "skewed" in args.workload.split(","):
        require_torch(
            "bench-slots",
            "the skewed workload builds its model with transformers' PyTorch classes "
            "(--workload demo needs no torch)",
        )
    COMMANDS[args.command][1].run_command(args)


def require_torch(command: str, why: str) -> None:
    """Exits with one line saying what to install when torch is missing."""
    if importlib.util.find_spec("torch") is None:
        sys.exit(f"{PROG} {command}: error: {why}, and torch is not installed: {TORCH}")


def _generate(command: GenerateCommand) -> None:
    import jaxthink
    from jaxthink.loading import demo_model_dir

    if command.data:  # a file that cannot be read is refused before any model loads
        from infer.evaluate import evaluate_cli, load_cli_problems

        problems = load_cli_problems(command)
    t0 = time.perf_counter()
    path = command.hybrid.model if command.hybrid else command.model
    model, tokenizer, model_cfg = jaxthink.load(path or demo_model_dir())
    if not command.json:
        print(
            f"loaded {path or 'the demo model'} in {time.perf_counter() - t0:.1f}s", file=sys.stderr
        )
    options = mode_options(command, model_cfg)
    generate_fn = hybrid.load_generate(command.hybrid) if command.hybrid else None
    if command.data:
        return evaluate_cli(command, problems, model, tokenizer, options, generate_fn)
    prompts = _prompts(command)  # free text: the demo model's chat template reads it as the task
    if not prompts:
        sys.exit(
            f"{PROG}: error: no prompts: give --prompt TEXT (repeatable) or prompts on stdin, one per line"
        )
    if command.hybrid:
        return hybrid.run_cli(command, generate_fn, model, tokenizer, prompts)
    run(command, model, tokenizer, options, prompts)


def demo_examples() -> list[str]:
    """A few built-in problems, one per level of the demo task, for the demo model with no prompt."""
    return ["4821*10", "482*100", "739215+8", "4821+967", "23*47", "4821*36"]


def _prompts(command: GenerateCommand) -> list[str]:
    """--prompt, else the non-empty lines of stdin when it is not a terminal, else (a terminal,
    or a stdin that ends at once, like /dev/null) the demo model's built-in examples (for another
    model: none). A stdin of only empty lines is refused."""
    if command.prompts:
        return list(command.prompts)
    if sys.stdin is not None and not sys.stdin.isatty():
        lines = sys.stdin.readlines()
        if lines and not any(line.strip() for line in lines):
            sys.exit(f"{PROG}: error: stdin held only empty lines; give one prompt per line")
        if lines:
            return [line.strip() for line in lines if line.strip()]
    return demo_examples() if command.model is None else []


def run(command: GenerateCommand, model, tokenizer, options: ModeOptions, prompts: list[str]):
    import jaxthink

    settings = command.settings
    many = len(prompts) * settings.n > (settings.slots or 64)
    progress = _progress_bar(len(prompts) * settings.n) if many else None
    t0 = time.perf_counter()
    try:
        results = jaxthink.generate(
            model,
            tokenizer,
            prompts,
            command.modes[0],
            settings,
            options=options,
            progress=progress.update if progress else None,
            chat=not command.raw,
            system=command.system,
        )
    finally:
        if progress:
            progress.close()
    n = settings.n
    for p in range(len(prompts)):
        group = results[p * n : (p + 1) * n]
        for j, g in enumerate(group):
            if command.json:
                print(json.dumps(g.to_json()), flush=True)
            else:
                _show(g, sys.stdout, f" sample {j + 1}/{n}" if n > 1 else "")
        if n > 1 and not command.json:
            print(majority_line(group) + "\n")
    if not command.json:
        total, seconds = sum(g.num_tokens for g in results), time.perf_counter() - t0
        compiling = results.stats.compile_seconds
        print(
            f"{len(results)} samples, {total} tokens in {seconds:.1f}s ({compiling:.1f}s "
            f"compiling and setting up; {total / max(seconds - compiling, 1e-9):.0f} tok/s "
            "after it)"
        )


def styles(out) -> tuple[str, str, str]:
    """(dim, bold, reset): ANSI codes when `out` is a terminal and NO_COLOR is unset, else ""."""
    if os.environ.get("NO_COLOR") or not (hasattr(out, "isatty") and out.isatty()):
        return "", "", ""
    return DIM, BOLD, RESET


def majority_line(group) -> str:
    """The majority answer of one prompt's samples and how many agree with it."""
    from jaxthink.eval import canonical_answer, extract_answer, majority_vote

    answers = [extract_answer(g.text) for g in group]
    winner = majority_vote(answers)
    if winner is None:
        return f"majority answer: none (no sample of {len(group)} gave an answer)"
    agree = sum(a is not None and canonical_answer(a) == canonical_answer(winner) for a in answers)
    return f"majority answer: {winner} ({agree} of {len(group)} samples agree)"


def _show(g, out, label: str = "") -> None:
    dim, bold, reset = styles(out)
    tokens_s = g.num_tokens / g.seconds if g.seconds > 0 else float("nan")
    print(f"{bold}Q{label}:{reset} {g.prompt}", file=out)
    if g.thinking:
        print(f"{dim}{g.thinking.strip()}{reset}", file=out)
    print(f"{bold}A:{reset} {g.answer.strip()}", file=out)
    forced = ", budget forced" if g.budget_forced else ""
    print(
        f"{dim}[mode {g.mode} -> {g.chosen_mode}{forced} | thinking {g.num_thinking_tokens} "
        f"+ answer {g.num_answer_tokens} tokens | {g.finish_reason} | {tokens_s:.0f} tok/s]{reset}\n",
        file=out,
    )


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", file=sys.stderr)
