"""`python -m train sft|rl|sae|steer --config FILE.yaml [key=value ...]`, `python -m train bench`,
`python -m train bench --model DIR` (an RL step on any checkpoint, beside TRL's GRPOTrainer),
`python -m train plot RUN_DIR... --out FILE.png [--key think_ratio]` (runs side by side).

Each command is a subparser (`python -m train --help` lists them, `python -m train COMMAND
--help` shows its flags). A config is a YAML file of a typed dataclass
(`jaxthink.runs.config.SFTConfig` / `RLConfig`, `jaxthink.hybrid.sae_run.SAERunConfig`,
`jaxthink.hybrid.steer_run.SteerRunConfig`); `key=value` arguments override it, dotted for
nested sections (`optim.lr=3e-4 rollout.group_size=4`), before or after the flags.
`--print-config` shows the resolved config and exits.
Exit status: 0 done, 1 training stopped (non-finite loss), 2 bad config or input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from train import bench

COMMANDS = {
    "sft": "supervised warm-up on paired <think>/<short> data",
    "rl": "on-policy DeGRPO / GRPO rounds (rollout, rewards, updates)",
    "sae": "reasoning taxonomy: thinking traces, sentence vectors, top-k SAE grid, reports",
    "steer": "steering vectors on the base model for the clusters of one SAE run",
    "bench": "seconds (by phase), tokens/s and memory of an RL step; --model DIR: beside TRL",
    "plot": "one metric of several runs over steps (e.g. DeGRPO against GRPO)",
}
CONFIG_COMMANDS = ("sft", "rl", "sae", "steer")  # a run config, overrides, --print-config


def _not_the_torch_notice(record: logging.LogRecord) -> bool:
    """transformers' import-time notice that PyTorch is missing: training never needs torch."""
    return not record.getMessage().startswith("PyTorch was not found.")


logging.getLogger("transformers").addFilter(_not_the_torch_notice)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train", description="Train, benchmark or plot jaxthink runs."
    )
    commands = p.add_subparsers(dest="command", required=True)
    for name in CONFIG_COMMANDS:
        sub = commands.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
        sub.add_argument("--config", help="a YAML run config (default: the dataclass defaults)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        sub.add_argument(
            "--print-config", action="store_true", help="print the resolved config, exit"
        )
    commands.add_parser(  # train/bench.py's own flags
        "bench",
        parents=[bench.build_parser()],
        add_help=False,
        help=COMMANDS["bench"],
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot = commands.add_parser("plot", help=COMMANDS["plot"], description=COMMANDS["plot"])
    plot.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (label=DIR names a line)"
    )
    plot.add_argument("--out", required=True, help="the PNG to write")
    plot.add_argument("--key", default="think_ratio", help="the metric (default think_ratio)")
    plot.add_argument("--title")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The parsed command; `key=value` overrides may come before or after the flags."""
    args, unknown = parser.parse_known_args(argv)
    overrides = [a for a in unknown if "=" in a and not a.startswith("-")]
    if unknown and (args.command not in CONFIG_COMMANDS or len(overrides) < len(unknown)):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def config_class(command: str):
    from jaxthink.hybrid.sae_run import SAERunConfig
    from jaxthink.hybrid.steer_run import SteerRunConfig
    from jaxthink.rl.config import RLConfig
    from jaxthink.sft.config import SFTConfig

    return {"sft": SFTConfig, "rl": RLConfig, "sae": SAERunConfig, "steer": SteerRunConfig}[command]


def run(args) -> None:
    import yaml

    from jaxthink.runs.config_file import load_config, to_dict

    cfg = load_config(config_class(args.command), args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return
    if args.command == "sft":
        from jaxthink.sft.loop import train_sft

        train_sft(cfg)
    elif args.command == "sae":
        from jaxthink.hybrid.sae_run import train_sae_run

        train_sae_run(cfg)
    elif args.command == "steer":
        from jaxthink.hybrid.steer_run import train_steer_run

        train_steer_run(cfg)
    else:
        from jaxthink.rl.loop import train_rl

        train_rl(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(build_parser(), argv)
    if args.command == "bench":  # parsed again by train/bench.py, which resolves its defaults
        return bench.main(argv[argv.index("bench") + 1 :])
    from jaxthink.runs.run import Interrupted, TrainingStopped

    try:
        if args.command == "plot":
            plot(args)
        else:
            run(args)
    except Interrupted as e:  # Ctrl-C in the step loop: what was kept was saved
        exit_interrupted(f"python -m train {args.command}: {e}")
    except KeyboardInterrupt:
        exit_interrupted(
            f"python -m train {args.command}: interrupted; rerun the same command to resume"
        )
    except TrainingStopped as e:
        print(f"python -m train {args.command}: stopped: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"python -m train {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def plot(args) -> None:
    """`python -m train plot RUN_DIR... --out FILE.png`: one line per run (its metrics.jsonl)."""
    from jaxthink.runs.logs import plot_metric

    runs = {}
    for item in args.runs:
        label, _, path = item.rpartition("=")
        metrics = Path(path) / "metrics.jsonl"
        if not metrics.is_file():
            raise ValueError(f"{path}: no metrics.jsonl (expected a training run directory)")
        runs[label or Path(path).name] = metrics
    if plot_metric(runs, args.out, args.key, args.title) is None:
        raise ValueError(f"no run logged {args.key!r}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()


def exit_interrupted(message: str) -> NoReturn:
    """One line and exit status 130, at once: tearing the interpreter down after an interrupt
    inside a running XLA computation can crash it, and everything the run keeps is saved."""
    print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
