"""`python -m train bench`: seconds per RL step, split into its phases, tokens/s and memory.

    python -m train bench                          # tiny and ~50M models, defaults below
    python -m train bench --sizes tiny --steps 5 --prompts 8 --group-size 8 --max-new-tokens 128
    python -m train bench --model CHECKPOINT_DIR   # any Hugging Face checkpoint, beside TRL

`--sizes`: each size is a fresh random model of the character vocabulary
(configs/models/char_*.yaml), so nothing needs downloading.

`--model DIR`: the RL run on that checkpoint (thinkless mode, the arithmetic task's questions,
8 prompts x 8 samples x 64 new tokens, temperature 1.0, one optimizer update, kl_coef 0 unless
the flags say otherwise), then, in a subprocess of its own, Hugging Face TRL's GRPOTrainer on the
same checkpoint, prompts and batch (the questions through the checkpoint's chat template, beta =
kl_coef, CPU, fp32, no vLLM, a reward that grades the answers), and the two side by side with
the ratio of their step seconds. TRL is a bench-only extra: `pip install -e ".[bench]"`; without
it the bench says so and prints jaxthink's numbers.

One warm-up step compiles everything; the timed steps then report rollout (sampling plus
grading), log-probs (the old and reference log-probs the update needs; none with one update per
step and no KL), update (all mini-batch optimizer updates), the whole step, its CPU seconds (the
process's, all threads: steadier than wall seconds when other work shares the cores), generated
tokens per second of rollout, trained tokens (prompt + response rows) per second of step, the
process's peak resident memory during a step and that step's own rise above the memory it
started from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "configs" / "models"
SIZES = {"tiny": CONFIGS / "char_tiny.yaml", "50m": CONFIGS / "char_50m.yaml"}
PHASES = ("seconds_rollout", "seconds_logprobs", "seconds_update", "seconds")
# (--sizes, --model) defaults of the flags whose default depends on the mode
DEFAULTS = {
    "steps": (3, 2),
    "prompts": (4, 8),
    "group_size": (4, 8),
    "mini_batches": (2, 1),
    "kl_coef": (None, 0.0),  # None: the config's own (LossConfig.kl_coef)
}
DATA = ("data.levels=1,2", "data.count=1000")  # the arithmetic task; prompts in stream order
INSTALL_HINT = 'TRL is not installed: pip install -e ".[bench]" (the bench-only extra)'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train bench", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,50m", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--model", metavar="DIR", help="a Hugging Face checkpoint (instead of --sizes)")
    p.add_argument("--steps", type=int, help="timed steps after one warm-up step (3; --model 2)")
    p.add_argument("--prompts", type=int, help="prompts per step (4; --model 8)")
    p.add_argument("--group-size", type=int, help="samples per prompt, G (4; --model 8)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--mini-batches", type=int, help="optimizer updates per step (2; --model 1)")
    p.add_argument("--kl-coef", type=float, help="KL weight (the config's; --model 0)")
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate (--model)")
    p.add_argument(
        "--trl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --model, also time TRL's GRPOTrainer (default: yes)",
    )
    p.add_argument("--only", choices=("jaxthink", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    return p


def resolve(args) -> argparse.Namespace:
    """`args` with the mode-dependent defaults filled in."""
    for name, (sizes, model) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, model if args.model else sizes)
    return args


class Memory:
    """Resident memory of this process (Linux /proc): `start()` resets the high-water mark and
    returns the current size; `peak()` is the high-water mark since. Bytes. Elsewhere the
    high-water mark is the process's lifetime one (resource.getrusage) and `start()` gives 0."""

    def __init__(self):
        self.proc = Path("/proc/self/status").is_file()

    def _status(self, key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> int:
        if not self.proc:
            return 0
        with contextlib.suppress(OSError):  # "5" resets VmHWM to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        return self._status("VmRSS")

    def peak(self) -> int:
        if self.proc:
            return self._status("VmHWM")
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rl_config(args, model: list[str], run_dir: str):
    from jaxthink.rl.config import RLConfig
    from jaxthink.runs.config_file import load_config

    loss = [] if args.kl_coef is None else [f"loss.kl_coef={args.kl_coef}"]
    optim = [f"optim.lr={args.lr}"] if args.model else []
    return load_config(
        RLConfig,
        None,
        [
            *model,
            *DATA,
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.group_size={args.group_size}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.temperature=1.0",
            f"mini_batches={args.mini_batches}",
            *loss,
            *optim,
            f"steps={args.steps + 1}",
            f"run_dir={run_dir}",
        ],
    )


def step_prompts(args) -> list[list[dict]]:
    """The records of every step (warm-up first), as both trainers get them."""
    from jaxthink.data.records import DataSource, prompt_batches, read_records
    from jaxthink.runs.config_file import load_config

    source = load_config(DataSource, None, [d.removeprefix("data.") for d in DATA])
    batches = iter(prompt_batches(read_records(source), args.prompts, seed=0))
    return [next(batches) for _ in range(args.steps + 1)]


def summarize(name: str, steps: list[dict], args, params_m: float) -> dict:
    """Means over the timed steps; memory: the largest over them."""
    import numpy as np

    mean = lambda k: float(np.mean([m[k] for m in steps]))
    return {
        "model": name,
        "params_m": params_m,
        "rows": args.prompts * args.group_size,
        **{k: mean(k) for k in PHASES},
        "generated_tokens": mean("generated_tokens"),
        "rollout_tokens_per_s": mean("generated_tokens") / mean("seconds_rollout"),
        "tokens_per_s": mean("trained_tokens") / mean("seconds"),
        "cpu_seconds": mean("cpu_seconds"),
        "peak_rss_gb": max(m["peak_rss"] for m in steps) / 1e9,
        "step_rss_gb": max(m["peak_rss"] - m["start_rss"] for m in steps) / 1e9,
    }


def bench_jaxthink(args, name: str, model: list[str]) -> dict:
    """Mean phase seconds, throughput and memory of `args.steps` RL steps after one warm-up."""
    import jax
    from flax import nnx

    from jaxthink.rl.loop import RLSetup, rl_step
    from jaxthink.runs.model import build_model
    from jaxthink.runs.run import commit

    memory = Memory()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = rl_config(args, model, tmp)
        jax_model, tokenizer, model_cfg = build_model(cfg.model, tmp)
        graphdef, params = nnx.split(jax_model)
        del jax_model
        setup, tx = RLSetup.create(cfg, graphdef, tokenizer, params)
        params, opt_state = commit((params, tx.init(params)))
        key = jax.random.key(0)
        steps = []
        for i, records in enumerate(step_prompts(args)):
            key, step_key = jax.random.split(key)
            start, cpu = memory.start(), time.process_time()
            params, opt_state, metrics = rl_step(setup, params, opt_state, records, step_key)
            jax.block_until_ready(params)
            if i > 0:  # step 0 compiles
                steps.append(
                    {
                        **metrics,
                        "trained_tokens": metrics["tokens_per_s"] * metrics["seconds"],
                        "cpu_seconds": time.process_time() - cpu,
                        "start_rss": start,
                        "peak_rss": memory.peak(),
                    }
                )
    return summarize(name, steps, args, model_cfg.num_params / 1e6)


def bench_trl(args) -> dict:
    """TRL's GRPOTrainer on `args.model`: the same prompts, batch and steps as `bench_jaxthink`."""
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from jaxthink.data.records import question_of
    from jaxthink.eval.grade import grade_many

    records = [r for batch in step_prompts(args) for r in batch]
    dataset = datasets.Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": question_of(r)}], "answer": str(r["answer"])}
            for r in records
        ]
    )

    def graded(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if v.correct else 0.0 for v in grade_many(texts, list(answer))]

    rows, memory = args.prompts * args.group_size, Memory()
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=rows // args.mini_batches,
            steps_per_generation=args.mini_batches,
            num_generations=args.group_size,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            beta=args.kl_coef,
            learning_rate=args.lr,
            max_steps=(args.steps + 1) * args.mini_batches,
            shuffle_dataset=False,  # the prompts in jaxthink's order
            use_cpu=True,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,  # as jaxthink's default (remat false)
            model_init_kwargs={"dtype": torch.float32},
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=args.model,
            reward_funcs=graded,
            args=config,
            train_dataset=dataset,
            processing_class=transformers.AutoTokenizer.from_pretrained(args.model),
        )
        rounds = TRLRounds(trainer, memory, args.mini_batches)

        class Marks(transformers.TrainerCallback):
            def on_step_begin(self, _args, state, _control, **_):
                rounds.begin(state.global_step)

            def on_step_end(self, _args, state, _control, **_):
                rounds.end(state.global_step)

        trainer.add_callback(Marks())
        trainer.train()
    params_m = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    return summarize("trl", rounds.done[1:], args, params_m)


class TRLRounds:
    """Phases of TRL's rounds (one generation and its optimizer steps): wraps the trainer's
    generation and log-prob methods; `begin` / `end` mark its optimizer steps."""

    def __init__(self, trainer, memory: Memory, steps_per_round: int):
        self.memory, self.per_round = memory, steps_per_round
        self.done, self.current, self.in_rollout = [], None, False
        generate = trainer._generate_and_score_completions
        logprobs = trainer._get_per_token_logps_and_entropies

        def timed_generate(*a, **kw):
            t0, self.in_rollout = time.perf_counter(), True
            try:
                out = generate(*a, **kw)
            finally:
                self.in_rollout = False
            self.current["seconds_rollout"] += time.perf_counter() - t0
            prompt, completion = out["prompt_mask"], out["completion_mask"]
            self.current["generated_tokens"] += float(completion.sum())
            self.current["trained_tokens"] += float(prompt.numel() + completion.numel())
            return out

        def timed_logprobs(*a, **kw):
            t0 = time.perf_counter()
            out = logprobs(*a, **kw)
            if self.in_rollout:  # old / reference log-probs, made with the rollout
                seconds = time.perf_counter() - t0
                self.current["seconds_logprobs"] += seconds
                self.current["seconds_rollout"] -= seconds
            return out

        trainer._generate_and_score_completions = timed_generate
        trainer._get_per_token_logps_and_entropies = timed_logprobs

    def begin(self, step: int) -> None:
        if step % self.per_round == 0:
            keys = ("seconds_rollout", "seconds_logprobs", "generated_tokens", "trained_tokens")
            self.current = dict.fromkeys(keys, 0.0)
            self.current["start_rss"] = self.memory.start()
            self.current["t0"], self.current["cpu0"] = time.perf_counter(), time.process_time()

    def end(self, step: int) -> None:  # `step` counts the steps done, this one included
        if step % self.per_round == 0:
            r = self.current
            r["seconds"] = time.perf_counter() - r.pop("t0")
            r["cpu_seconds"] = time.process_time() - r.pop("cpu0")
            r["seconds_update"] = r["seconds"] - r["seconds_rollout"] - r["seconds_logprobs"]
            r["peak_rss"] = self.memory.peak()
            self.done.append(r)


def trl_installed() -> bool:
    try:
        import trl  # noqa: F401  (a lazy module: torch and transformers load on first use)
    except ImportError:
        return False
    return True


def run_trl_subprocess(args) -> dict | str:
    """TRL's row from a fresh process (its memory apart from jaxthink's), or why there is none."""
    if not trl_installed():
        return INSTALL_HINT
    argv = [sys.executable, "-m", "train", "bench", "--model", args.model, "--only", "trl"]
    for flag in ("steps", "prompts", "group_size", "max_new_tokens", "mini_batches", "kl_coef"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    argv += ["--lr", str(args.lr), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-20:])
        return f"TRL's run failed (exit {done.returncode}):\n{tail}"
    return json.loads(lines[-1])


def table(results: list[dict]) -> str:
    head = (
        f"{'model':<8} {'params':>8} {'rows':>5} {'gen tok':>8} {'rollout s':>10} "
        f"{'logprob s':>10} {'update s':>9} {'step s':>8} {'cpu s':>7} {'gen tok/s':>10} "
        f"{'tok/s':>8} "
        f"{'peak GB':>8} {'step +GB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['model']:<8} {r['params_m']:>7.2f}M {r['rows']:>5} {r['generated_tokens']:>8.0f} "
            f"{r['seconds_rollout']:>10.3f} {r['seconds_logprobs']:>10.3f} "
            f"{r['seconds_update']:>9.3f} {r['seconds']:>8.3f} {r['cpu_seconds']:>7.2f} "
            f"{r['rollout_tokens_per_s']:>10.0f} {r['tokens_per_s']:>8.0f} "
            f"{r['peak_rss_gb']:>8.2f} {r['step_rss_gb']:>9.2f}"
        )
    return "\n".join(lines)


def legend(args) -> str:
    return (
        "rollout: sampling + grading; logprob: old + reference log-probs; update: "
        f"{args.mini_batches} optimizer update(s); cpu s: the process's CPU seconds per step (all "
        "threads; steadier than wall seconds on a shared machine); gen tok/s: generated tokens "
        "per rollout second; tok/s: prompt + response rows per step second; peak GB: the "
        "process's resident high-water mark in a step; step +GB: its rise over the step's start"
    )


def main_model(args) -> None:
    """`--model DIR`: jaxthink here, TRL in a subprocess, side by side."""
    if args.only == "trl":
        if not trl_installed():
            print(INSTALL_HINT)
            return
        print(json.dumps(bench_trl(args)), flush=True)
        return
    ours = bench_jaxthink(args, "jaxthink", [f"model.checkpoint={args.model}"])
    if args.json:
        print(json.dumps(ours), flush=True)
    trl = run_trl_subprocess(args) if args.trl and args.only is None else None
    if isinstance(trl, dict) and args.json:
        print(json.dumps(trl), flush=True)
    if args.json:
        if isinstance(trl, str):
            print(trl, file=sys.stderr)
        return
    print(
        f"{args.model}: {args.prompts} prompts x {args.group_size} samples x "
        f"{args.max_new_tokens} new tokens, {args.mini_batches} update(s) per step, kl_coef "
        f"{args.kl_coef}; means of {args.steps} timed step(s) after a warm-up"
    )
    print(table([ours] + ([trl] if isinstance(trl, dict) else [])))
    print(legend(args))
    if isinstance(trl, dict):
        print(
            f"TRL / jaxthink step seconds: {trl['seconds'] / ours['seconds']:.2f}x "
            f"({trl['seconds']:.2f} s / {ours['seconds']:.2f} s); CPU seconds: "
            f"{trl['cpu_seconds'] / ours['cpu_seconds']:.2f}x "
            f"({trl['cpu_seconds']:.2f} s / {ours['cpu_seconds']:.2f} s)"
        )
    elif isinstance(trl, str):
        print(trl)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = resolve(parser.parse_args(argv))
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.model:
        if not Path(args.model, "config.json").is_file():
            parser.error(f"--model {args.model}: no config.json (expected a checkpoint directory)")
        return main_model(args)
    names = [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown or not names:
        parser.error(f"--sizes {args.sizes!r}: choose from {', '.join(SIZES)}")
    results = []
    for name in names:
        results.append(bench_jaxthink(args, name, [f"model={SIZES[name]}"]))
        if args.json:
            print(json.dumps(results[-1]), flush=True)
    if not args.json:
        print(table(results))
        print(legend(args))


if __name__ == "__main__":
    main()
