"""End to end on the tiny character model: SFT lowers the loss and exports a model that
`python -m infer` loads; a run killed with SIGKILL resumes to the same parameters; a non-finite
step stops the run with the last good checkpoint intact; DeGRPO raises the reward.

The task is 1-digit addition (81 problems). After 200 SFT steps on its paired traces the model
answers well in both modes and picks `<think>` about half the time. RL then runs with
max_new_tokens = 12: a `<short>` answer fits, a trace cannot close its `</think>` in time, so
thinking always earns the truncation reward -1. The reward is easy to move honestly: the policy
must learn to choose `<short>`, which it does within 10 DeGRPO steps.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import jaxthink
import train.__main__ as train_main
from infer.cli import main
from jaxthink.data.arithmetic import make_record, write_jsonl
from jaxthink.data.records import MODE_OPTIONS
from jaxthink.rl.config import RLConfig
from jaxthink.rl.loop import RLSetup, batch_logprobs, train_rl, training_arrays
from jaxthink.rl.rollout import collect, rollout_metrics
from jaxthink.runs.config_file import load_config
from jaxthink.runs.logs import read_metrics
from jaxthink.runs.run import Interrupted, TrainingStopped, commit
from jaxthink.sft.config import SFTConfig
from jaxthink.sft.loop import train_sft

REPO = Path(__file__).parents[2]
ADDITIONS = [make_record(f"{a}+{b}", 1) for a in range(1, 10) for b in range(1, 10)]
SFT_STEPS = 200
SFT_OVERRIDES = [
    f"model={REPO / 'configs/models/char_tiny.yaml'}",
    "seq_len=64",
    "batch_size=16",
    "optim.lr=5e-3",
    "optim.warmup_steps=10",
    f"steps={SFT_STEPS}",
    "save_every=50",
    "log_every=50",
]
RL_OVERRIDES = [
    "rollout.group_size=8",
    "rollout.prompts_per_step=8",
    "rollout.temperature=1.0",
    "rollout.max_new_tokens=12",
    "optim.lr=3e-4",
    "loss.alpha=1.0",
    "mini_batches=2",
    "steps=10",
    "save_every=5",
]


def quiet(*_):
    pass


def same_weights(dir_a: Path, dir_b: Path, atol: float = 1e-6) -> float:
    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff <= atol, f"weights differ by {diff}"
    return diff


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(ADDITIONS, tmp_path_factory.mktemp("data") / "add1.jsonl")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, data) -> Path:
    run_dir = tmp_path_factory.mktemp("sft")
    cfg = load_config(SFTConfig, None, [*SFT_OVERRIDES, f"data.path={data}", f"run_dir={run_dir}"])
    train_sft(cfg, log=quiet)
    return run_dir


def test_sft_lowers_the_loss(sft_run):
    records = read_metrics(sft_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, SFT_STEPS + 1))
    first = np.mean([r["loss"] for r in records[:10]])
    last = np.mean([r["loss"] for r in records[-10:]])
    assert first > 3.0 and last < 0.3, (first, last)
    assert np.mean([r["accuracy"] for r in records[-10:]]) > 0.9
    assert sorted(p.name for p in (sft_run / "checkpoints").iterdir()) == ["100", "150", "200"]


def test_a_finished_run_is_not_clobbered_without_resume(sft_run):
    cfg = load_config(SFTConfig, sft_run / "config.yaml", ["resume=false"])
    with pytest.raises(FileExistsError, match="pass resume=true to continue that run"):
        train_sft(cfg, log=quiet)


def test_sft_export_loads_in_python_m_infer(sft_run, capsys):
    main(
        [
            "--model",
            str(sft_run / "hf"),
            "--mode",
            "short",
            "--prompt",
            "3+4",
            "--json",
            "--max-new-tokens",
            "16",
        ]
    )
    sample = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sample["text"] == "<short>\\boxed{7}"
    assert sample["finish_reason"] == "eos"


def test_a_character_model_exports_the_demo_task_mode_options(sft_run):
    config = json.loads((sft_run / "hf" / "config.json").read_text())
    assert config["mode_options"] == MODE_OPTIONS  # budget forcing continues with \boxed{
    _, _, cfg = jaxthink.load(sft_run / "hf", tokenizer=False)
    assert jaxthink.ModeOptions.for_model(cfg).answer_prefix == "\\boxed{"


def _checkpoints(run_dir: Path) -> list[int]:
    path = run_dir / "checkpoints"
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def test_killed_run_resumes_to_the_same_parameters(sft_run, tmp_path):
    """SIGKILL a subprocess after its first checkpoint; the same command then resumes it, and
    the result equals the uninterrupted in-process run (the `sft_run` fixture)."""
    run_dir = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "train",
        "sft",
        "--config",
        str(sft_run / "config.yaml"),
        f"run_dir={run_dir}",
    ]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _checkpoints(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _checkpoints(run_dir)
    assert killed_at and killed_at[-1] < SFT_STEPS
    assert not (run_dir / "hf").exists()

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {run_dir.absolute() / 'checkpoints' / str(killed_at[-1])}" in done.stdout
    same_weights(run_dir / "hf", sft_run / "hf")
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, SFT_STEPS + 1))


def test_ctrl_c_saves_the_last_step_and_the_rerun_resumes_from_it(sft_run, data, tmp_path):
    """Ctrl-C at step 60 (between the checkpoints at 50 and 100): step 60 is saved, the message
    says so, and the same command finishes with the uninterrupted run's weights."""
    run_dir = tmp_path / "ctrl_c"
    cfg = load_config(SFTConfig, None, [*SFT_OVERRIDES, f"data.path={data}", f"run_dir={run_dir}"])

    def ctrl_c_at_60(line):
        if line.startswith("step 60 "):
            raise KeyboardInterrupt

    short = dataclasses.replace(cfg, log_every=10)  # a line at step 60; logging may change
    with pytest.raises(Interrupted, match="interrupted at step 60; step 60 is saved: rerun"):
        train_sft(short, log=ctrl_c_at_60)
    assert _checkpoints(run_dir) == [50, 60]
    lines = []
    train_sft(cfg, log=lines.append)
    assert lines[0] == f"resumed from {run_dir.absolute() / 'checkpoints' / '60'}"
    same_weights(run_dir / "hf", sft_run / "hf")


def test_ctrl_c_in_the_train_command_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise Interrupted(
            "interrupted at step 7; step 7 is saved: rerun the same command to resume"
        )

    monkeypatch.setattr(train_main, "run", interrupted)
    monkeypatch.setattr(
        train_main.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code))
    )
    with pytest.raises(SystemExit) as exit_:
        train_main.main(["sft", "data.levels=[1]"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err == (
        "python -m train sft: interrupted at step 7; step 7 is saved: rerun the same command to "
        "resume\n"
    )


def test_non_finite_update_stops_with_the_last_checkpoint_intact(sft_run, tmp_path):
    run_dir = tmp_path / "nan"
    shutil.copytree(sft_run, run_dir)
    shutil.rmtree(run_dir / "hf")
    overrides = [f"run_dir={run_dir}", "optim.lr=nan", f"steps={SFT_STEPS + 10}"]
    overrides.append("on_change=resume")  # other settings, asked for
    cfg = load_config(SFTConfig, sft_run / "config.yaml", overrides)
    with pytest.raises(TrainingStopped) as stopped:
        train_sft(cfg, log=quiet)
    message = str(stopped.value)
    assert message.startswith(f"step {SFT_STEPS + 1}: non-finite loss or update")
    assert "update_norm=nan" in message
    assert f"Last good checkpoint: {run_dir.absolute() / 'checkpoints' / str(SFT_STEPS)}" in message
    assert _checkpoints(run_dir)[-1] == SFT_STEPS
    assert not (run_dir / "hf").exists()
    # the checkpoint left behind still holds the good parameters: finishing from it exports them
    back = [f"run_dir={run_dir}", "on_change=resume"]  # the first settings again, asked for
    train_sft(load_config(SFTConfig, sft_run / "config.yaml", back), log=quiet)
    same_weights(run_dir / "hf", sft_run / "hf", atol=0.0)


def rl_config(sft_run: Path, data: Path, run_dir: Path) -> RLConfig:
    overrides = [f"model.checkpoint={sft_run / 'hf'}", f"data.path={data}", f"run_dir={run_dir}"]
    return load_config(RLConfig, None, [*RL_OVERRIDES, *overrides])


def evaluate(model_dir: Path, cfg: RLConfig) -> dict:
    """Reward and think ratio over 5 x 64 samples (the training rollout's shape and settings)."""
    model, tokenizer, _ = jaxthink.load(model_dir)
    graphdef, params = nnx.split(model)
    model = nnx.merge(graphdef, commit(params))  # placed as the trainer places its parameters
    runs = [
        collect(model, tokenizer, ADDITIONS[8 * i : 8 * i + 8], cfg.rollout, cfg.reward, 100 + i)
        for i in range(5)
    ]
    stats = [rollout_metrics(r) for r in runs]
    return {k: float(np.mean([s[k] for s in stats])) for k in ("reward", "think_ratio")}


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory, sft_run, data):
    run_dir = tmp_path_factory.mktemp("rl")
    cfg = rl_config(sft_run, data, run_dir)
    before = evaluate(sft_run / "hf", cfg)
    train_rl(cfg, log=quiet)
    return run_dir, before, evaluate(run_dir / "hf", cfg)


def test_degrpo_raises_the_reward(rl_run):
    _, before, after = rl_run
    assert before["think_ratio"] > 0.3, before  # SFT left both modes in play
    assert after["think_ratio"] < before["think_ratio"] - 0.2, (before, after)
    assert after["reward"] > before["reward"] + 0.2, (before, after)


def test_trainer_logprobs_are_the_samplers(rl_run, sft_run, data):
    """Old log-probs recomputed with `forward` match what the sampler drew the tokens with: the
    response starts at the control token and each token is scored by its predecessor's logits."""
    cfg = rl_config(sft_run, data, rl_run[0])
    model, tokenizer, _ = jaxthink.load(sft_run / "hf")
    graphdef, params = nnx.split(model)
    params = commit(params)
    rollout = collect(
        nnx.merge(graphdef, params), tokenizer, ADDITIONS[:8], cfg.rollout, cfg.reward, 7
    )
    setup, _ = RLSetup.create(cfg, graphdef, tokenizer, params)
    logp = batch_logprobs(setup, params, training_arrays(rollout, cfg), cfg.micro_rows)
    for row, sample in enumerate(rollout.generations):
        np.testing.assert_allclose(logp[row, : sample.num_tokens], sample.logprobs, atol=1e-4)
        assert not logp[row, sample.num_tokens :].any()


def test_rl_logs_every_metric_and_plots_the_think_ratio(rl_run):
    run_dir, _, _ = rl_run
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    expected = {
        "reward",
        "accuracy",
        "think_ratio",
        "accuracy_short",
        "length_short",
        "kl_mean",
        "clip_frac",
        "entropy_mean",
        "grad_norm",
        "loss",
        "seconds_rollout",
        "seconds_logprobs",
        "seconds_update",
        "seconds_checkpoint",
        "tokens_per_s",
    }
    assert expected <= set(records[-1])
    assert all(0.0 <= r["think_ratio"] <= 1.0 for r in records)
    assert (run_dir / "think_ratio.png").stat().st_size > 1000


def test_interrupted_rl_run_resumes_exactly(rl_run, sft_run, data, tmp_path):
    """Ctrl-C after step 7 (checkpoints every 5): step 7 is saved, and the resumed run ends with the
    uninterrupted run's parameters (the rollouts' seeds, the prompt stream and the optimizer state
    all come back)."""
    run_dir, _, _ = rl_run
    cfg = rl_config(sft_run, data, tmp_path / "rl")

    def stop_at_7(line):
        if line.startswith("step 7 "):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="interrupted at step 7; step 7 is saved"):
        train_rl(cfg, log=stop_at_7)
    assert _checkpoints(tmp_path / "rl") == [5, 7]
    assert (tmp_path / "rl" / "think_ratio.png").is_file()  # drawn at the checkpoint of step 5
    lines = []
    train_rl(cfg, log=lines.append)
    assert lines[0].startswith("resumed from") and lines[1].startswith("step 8 ")
    same_weights(tmp_path / "rl" / "hf", run_dir / "hf")


@pytest.mark.slow
def test_thinkless_setting_moves_easy_problems_to_short_answers(sft_run, data, tmp_path):
    """The paper's setting on easy problems: thinking fits the budget and earns 1 - gamma = 0.5,
    a correct short answer earns 1. DeGRPO should shift the choice towards `<short>`."""
    cfg = load_config(
        RLConfig,
        None,
        [
            *RL_OVERRIDES,
            "rollout.max_new_tokens=32",
            "steps=20",
            f"model.checkpoint={sft_run / 'hf'}",
            f"data.path={data}",
            f"run_dir={tmp_path / 'rl'}",
        ],
    )
    before = evaluate(sft_run / "hf", cfg)
    train_rl(cfg, log=quiet)
    after = evaluate(tmp_path / "rl" / "hf", cfg)
    assert after["think_ratio"] < before["think_ratio"] - 0.15, (before, after)
    assert after["reward"] > before["reward"] + 0.05, (before, after)


@pytest.mark.slow
def test_bench_reports_every_phase(capsys):
    from train.bench import main

    main(["--sizes", "tiny", "--steps", "1", "--prompts", "2", "--group-size", "2", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "tiny" and result["rows"] == 4
    for key in ("seconds_rollout", "seconds_logprobs", "seconds_update", "tokens_per_s"):
        assert result[key] > 0
