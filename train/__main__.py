"""`python -m train sft|rl|sae|steer --config FILE.yaml [key=value ...]`, `python -m train bench`,
`python -m train bench --model DIR` (an RL step on any checkpoint, beside TRL's GRPOTrainer),
`python -m train plot RUN_DIR... --out FILE.png [--key think_ratio]` (runs side by side).

A config is a YAML file of a typed dataclass (`jaxthink.training.config.SFTConfig` /
`RLConfig`, `jaxthink.training.sae_run.SAERunConfig`,
`jaxthink.training.steer_run.SteerRunConfig`); `key=value` arguments override it, dotted for
nested sections
(`optim.lr=3e-4 rollout.group_size=4`). `--print-config` shows the resolved config and exits.
Exit status: 0 done, 1 training stopped (non-finite loss), 2 bad config or input.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "sft": "supervised warm-up on paired <think>/<short> data",
    "rl": "on-policy DeGRPO / GRPO rounds (rollout, rewards, updates)",
    "sae": "reasoning taxonomy: thinking traces, sentence vectors, top-k SAE grid, reports",
    "steer": "steering vectors on the base model for the clusters of one SAE run",
    "bench": "seconds (by phase), tokens/s and memory of an RL step; --model DIR: beside TRL",
    "plot": "one metric of several runs over steps (e.g. DeGRPO against GRPO)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="; ".join(f"{name}: {text}" for name, text in COMMANDS.items()),
    )
    p.add_argument("command", choices=[c for c in COMMANDS if c not in ("bench", "plot")])
    p.add_argument("--config", help="a YAML run config (default: the dataclass defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    return p


def config_class(command: str):
    from jaxthink.training.config import RLConfig, SFTConfig
    from jaxthink.training.sae_run import SAERunConfig
    from jaxthink.training.steer_run import SteerRunConfig

    return {"sft": SFTConfig, "rl": RLConfig, "sae": SAERunConfig, "steer": SteerRunConfig}[command]


def run(args) -> None:
    import yaml

    from jaxthink.training.configfile import load_config, to_dict

    cfg = load_config(config_class(args.command), args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return
    if args.command == "sft":
        from jaxthink.training.sft import train_sft

        train_sft(cfg)
    elif args.command == "sae":
        from jaxthink.training.sae_run import train_sae_run

        train_sae_run(cfg)
    elif args.command == "steer":
        from jaxthink.training.steer_run import train_steer_run

        train_steer_run(cfg)
    else:
        from jaxthink.training.rl import train_rl

        train_rl(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from train.bench import main as bench

        return bench(argv[1:])
    if argv[:1] == ["plot"]:
        return plot(argv[1:])
    args = build_parser().parse_intermixed_args(argv)
    from jaxthink.training.run import TrainingStopped

    try:
        run(args)
    except TrainingStopped as e:
        print(f"python -m train {args.command}: stopped: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"python -m train {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def plot(argv: list[str]) -> None:
    """`python -m train plot RUN_DIR... --out FILE.png`: one line per run (its metrics.jsonl)."""
    from pathlib import Path

    from jaxthink.training.metrics import plot_metric

    p = argparse.ArgumentParser(prog="python -m train plot", description=COMMANDS["plot"])
    p.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (label=DIR names a line)"
    )
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--key", default="think_ratio", help="the metric (default think_ratio)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, _, path = item.rpartition("=")
        metrics = Path(path) / "metrics.jsonl"
        if not metrics.is_file():
            p.error(f"{path}: no metrics.jsonl (expected a training run directory)")
        runs[label or Path(path).name] = metrics
    if plot_metric(runs, args.out, args.key, args.title) is None:
        p.error(f"no run logged {args.key!r}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
