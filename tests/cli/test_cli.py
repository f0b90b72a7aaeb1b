"""The two command lines: `python -m infer` (generate by default, the benches as subcommands) and
`python -m train` (a subparser per command), their typed settings and the errors a user meets."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

import infer.evaluate as evaluate_module
import jaxthink
from infer import bench, bench_slots, cli
from infer.hybrid import HybridSettings
from jaxthink import GenerateConfig
from jaxthink.hybrid.decoding import DEFAULT_COEFFICIENTS
from jaxthink.loading import demo_pair_dir
from jaxthink.policies import Mode
from train.__main__ import COMMANDS
from train.__main__ import main as train_main


def refused(capsys, argv: list[str], main=cli.main) -> str:
    """stderr of a command the argument parser refuses (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# python -m infer: commands and typed settings


def test_no_command_is_generate():
    argv = ["--mode", "think_budget=512", "--prompt", "What is 4821 + 967?", "--n", "2"]
    command = cli.parse_args(argv)
    assert command == cli.parse_args(["generate", *argv])
    assert command.modes == (Mode("think_budget", 512),)
    assert command.prompts == ("What is 4821 + 967?",) and command.model is None
    assert command.settings == GenerateConfig(n=2, max_new_tokens=cli.DEMO_MAX_NEW)


def test_the_flags_become_one_checked_command():
    command = cli.parse_args(
        [
            "--model",
            "ckpt",
            "--data",
            "p.jsonl",
            "--out",
            "runs/x",
            "--mode",
            "think_budget=128,256",
            "--mode",
            "no_think",
            "--temperature",
            "0.6",
            "--top-p",
            "0.95",
            "--top-k",
            "20",
            "--seed",
            "3",
            "--slots",
            "8",
            "--finish-line",
            "--preset",
            "gsm8k",
            "--json",
        ]
    )
    assert command.settings == GenerateConfig(
        n=1, max_new_tokens=cli.MAX_NEW, temperature=0.6, top_p=0.95, top_k=20, seed=3, slots=8
    )
    assert command.modes == (Mode("think_budget", 128), Mode("think_budget", 256), Mode("no_think"))
    assert (command.data, command.out, command.preset) == ("p.jsonl", "runs/x", "gsm8k")
    assert command.finish_line and command.json and command.hybrid is None
    with pytest.raises(AttributeError):  # frozen: nothing is added on the way
        command.options = None


def test_hybrid_flags_become_hybrid_settings():
    hybrid = ["--mode", "hybrid", "--model", "T", "--base-model", "B", "--steering", "s.npz"]
    command = cli.parse_args([*hybrid, "--coefficients", "0.5,1", "--ablation", "bias_only"])
    assert command.hybrid == HybridSettings("T", "B", "s.npz", (0.5, 1.0), "bias_only")
    assert command.modes == (Mode("hybrid"),)
    assert cli.parse_args(hybrid).hybrid.coefficients == tuple(DEFAULT_COEFFICIENTS)


def test_each_bench_parses_its_own_flags():
    args = cli.parse_args(["bench", "--shape", "tiny", "--batch", "2", "--sampling"])
    assert (args.command, args.shape, args.batch, args.sampling) == ("bench", ["tiny"], [2], True)
    args = cli.parse_args(["bench-slots", "--workload", "demo", "--slots", "4"])
    assert (args.command, args.workload, args.slots, args.requests) == (
        "bench-slots",
        "demo",
        4,
        256,
    )
    args = cli.parse_args(["bench-hybrid", "--latents", "3"])
    assert (args.command, args.latents, args.shape) == ("bench-hybrid", 3, "demo")


# ---------------------------------------------------------------------------------------------
# python -m infer: what a new user meets


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["--n", "0"],
            "python -m infer: error: --n 0: the number of samples per prompt must be at least 1",
        ),
        (["--bogus"], "python -m infer: error: unrecognized arguments: --bogus"),
        (["--mode", "think_budget=128,256"], "python -m infer: error: several modes are for"),
        (["--top-p", "2"], "python -m infer: error: top_p=2.0: must be in (0, 1]"),
        (["--question-field", "q"], "python -m infer: error: --question-field: only with --data"),
        (["--steering", "s.npz"], "python -m infer: error: --steering: only for --mode hybrid"),
        (
            ["bench", "--shape", "huge"],
            "python -m infer bench: error: argument --shape: invalid choice",
        ),
        (["bench-slots", "--bogus"], "python -m infer bench-slots: error: unrecognized arguments"),
        (["--raw", "--system", "Be brief."], "python -m infer: error: --system goes into the chat"),
        (["--prompt", " "], "python -m infer: error: --prompt: an empty prompt"),
    ],
)
def test_argument_errors_are_one_line_and_a_hint(capsys, argv, error):
    lines = refused(capsys, argv).splitlines()
    hint = "try: " + error.split(": error:")[0] + " --help"
    assert len(lines) == 2 and lines[0].startswith(error) and lines[1] == hint


def test_help_shows_the_sampling_defaults_and_the_other_commands(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    entries = [" ".join(entry.split()) for entry in re.split(r"\n(?=  -)", text)]
    flags = {entry.split()[0].rstrip(","): entry for entry in entries}
    defaults = {
        "--n": "default: 1",
        "--temperature": "default: 0.0",
        "--top-p": "default: 1.0",
        "--top-k": "default: 0",
        "--seed": "default: 0",
        "--slots": "default: one per sample",
        "--max-new-tokens": "default: 1024; the demo model: 320",
    }
    for flag, default in defaults.items():
        assert default in flags[flag], flag
    for command in ("bench", "bench-hybrid", "bench-slots"):
        assert re.search(rf"\n  {command} +\S", text)


def test_ctrl_c_ends_with_one_line_and_status_130(capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def exit_(status):
        raise SystemExit(status)

    monkeypatch.setattr(cli.os, "_exit", exit_)
    monkeypatch.setattr(jaxthink, "load", interrupt)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--prompt", "1+1"])
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "python -m infer: interrupted\n"
    monkeypatch.setattr(bench_slots, "run_command", interrupt)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["bench-slots", "--workload", "demo"])
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "python -m infer bench-slots: interrupted\n"


def test_ctrl_c_in_an_evaluation_says_how_to_resume(capsys, monkeypatch, tmp_path):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def exit_(status):
        raise SystemExit(status)

    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    monkeypatch.setattr(cli.os, "_exit", exit_)
    monkeypatch.setattr(evaluate_module, "evaluate", interrupt)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--data", str(data), "--out", str(tmp_path / "run")])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m infer: interrupted; finished samples are kept in {tmp_path}/run/samples.jsonl: "
        "rerun the same command to resume"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


SAMPLE = SimpleNamespace(
    prompt="1+1",
    thinking="1+1=2",
    answer="\\boxed{2}",
    mode="think",
    chosen_mode="think",
    budget_forced=False,
    num_thinking_tokens=5,
    num_answer_tokens=9,
    num_tokens=14,
    finish_reason="eos",
    seconds=0.5,
)


def test_colours_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    for out, coloured in ((io.StringIO(), False), (Terminal(), True)):
        cli._show(SAMPLE, out)
        assert ("\033[" in out.getvalue()) == coloured
        assert "A: \\boxed{2}" in re.sub(r"\033\[\d+m", "", out.getvalue())
    monkeypatch.setenv("NO_COLOR", "1")
    cli._show(SAMPLE, out := Terminal())
    assert "\033[" not in out.getvalue() and "Q: 1+1" in out.getvalue()


def test_human_output_to_a_pipe_has_no_escape_codes(capsys):
    cli.main(["--prompt", "12+9", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert out.startswith("Q: 12+9\n") and "\033" not in out


def test_bench_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails, find_spec finds none
    ran = []
    monkeypatch.setattr(bench, "run_command", ran.append)
    monkeypatch.setattr(bench_slots, "run_command", ran.append)
    for argv in (["bench"], ["bench", "--sampling"], ["bench-slots", "--workload", "skewed"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        message = str(exit_.value.code)
        assert message.startswith(f"python -m infer {argv[0]}: error: ") and "\n" not in message
        assert "PyTorch" in message and "pip install torch==2.13.0" in message
        assert '".[bench]"' in message
    cli.main(["bench-slots", "--workload", "demo"])  # the demo workload needs no torch
    assert [args.workload for args in ran] == ["demo"]


@pytest.mark.parametrize(
    "argv", [["-m", "infer", "--help"], ["-m", "train", "sft", "--print-config"]]
)
def test_the_missing_torch_notice_of_transformers_is_hidden(argv):
    no_torch = "import runpy, sys; sys.modules['torch'] = None; "
    bare = subprocess.run(
        [sys.executable, "-c", no_torch + "import transformers"], capture_output=True, text=True
    )
    assert "PyTorch was not found" in bare.stderr  # what every command printed
    run = f"sys.argv = {argv[1:]!r}; runpy.run_module({argv[1]!r}, run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", no_torch + run], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "PyTorch was not found" not in done.stderr


def test_other_transformers_warnings_are_kept():
    logger = logging.getLogger("transformers")
    record = lambda text: logger.makeRecord("transformers", logging.WARNING, "", 0, text, (), None)
    assert logger.filter(record("Setting `pad_token_id` to `eos_token_id`"))
    assert not logger.filter(record("PyTorch was not found. Models won't be available"))


def test_unreadable_data_fields_name_the_flags_that_exist(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"q": "1+1", "a": "2"}) + "\n")
    with pytest.raises(SystemExit) as exit_:  # refused before any model is loaded
        cli.main(["--data", str(data), "--out", str(tmp_path / "run")])
    message = str(exit_.value.code)
    named = set(re.findall(r"--[a-z-]+", message))
    assert named == {"--preset", "--question-field", "--answer-field"}
    assert "preset=" not in message and "_field=" not in message
    generate = cli.build_parser().commands["generate"]
    assert named <= {flag for action in generate._actions for flag in action.option_strings}
    command = cli.parse_args(
        ["--data", str(data), "--out", "x", "--question-field", "q", "--answer-field", "a"]
    )
    (problem,) = evaluate_module.load_cli_problems(command)
    assert (problem.question, problem.answer) == ("1+1", "2")


# ---------------------------------------------------------------------------------------------
# python -m train


def test_train_lists_every_command(capsys):
    err = refused(capsys, ["foo"], main=train_main)
    assert "invalid choice: 'foo'" in err and all(f"'{c}'" in err for c in COMMANDS)
    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    for command, text in COMMANDS.items():
        assert re.search(rf"\n +{command} +{re.escape(text.split()[0])}", out), command


def test_train_subcommands_show_their_own_flags(capsys):
    for command, flag in (("sft", "--print-config"), ("bench", "--sizes"), ("plot", "--key")):
        with pytest.raises(SystemExit):
            train_main([command, "--help"])
        assert flag in capsys.readouterr().out


def test_train_overrides_may_come_before_and_after_the_flags(capsys):
    train_main(["sft", "steps=3", "--print-config", "optim.lr=1e-3"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 3 and printed["optim"]["lr"] == 1e-3
    assert "unrecognized arguments: --bogus" in refused(capsys, ["sft", "--bogus"], train_main)
    assert "unrecognized arguments: a=1" in refused(
        capsys, ["plot", "r", "--out", "x", "a=1"], train_main
    )


def test_raw_and_system_reach_the_prompt(capsys):
    command = cli.parse_args(["--raw", "--prompt", "Q: 12+9\nA:"])
    assert command.raw and command.system is None
    assert cli.parse_args(["--system", "Be brief."]).system == "Be brief."
    cli.main(["--raw", "--prompt", "Q: 12+9\nA:", "--max-new-tokens", "4", "--json"])
    (raw,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cli.main(["--prompt", "12+9", "--max-new-tokens", "4", "--json", "--mode", "think"])
    (templated,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert raw["prompt_ids"] == templated["prompt_ids"]  # the text the template would write
    cli.main(["--system", "Be brief.", "--prompt", "12+9", "--max-new-tokens", "4", "--json"])
    (system,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(system["prompt_ids"]) == len(templated["prompt_ids"]) + len("Be brief.\n")


def test_a_stdin_of_empty_lines_is_refused(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n  \n"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--max-new-tokens", "4"])
    assert "stdin held only empty lines" in str(exit_.value.code)


def test_n_samples_are_numbered_and_end_with_the_majority_answer(capsys):
    cli.main(["--prompt", "23*47", "--n", "3", "--temperature", "0.6", "--seed", "1"])
    out = capsys.readouterr().out
    assert [f"Q sample {j}/3: 23*47" in out for j in (1, 2, 3)] == [True] * 3
    line = re.search(r"majority answer: (\S+) \((\d) of 3 samples agree\)", out)
    assert line and 1 <= int(line[2]) <= 3


def test_an_evaluation_records_how_prompts_were_written(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "12+9", "answer": "21"}) + "\n")
    out = tmp_path / "eval"
    run = ["--data", str(data), "--out", str(out), "--max-new-tokens", "8", "--json"]
    cli.main([*run, "--system", "Be brief."])
    recorded = json.loads((out / "run.json").read_text())
    assert (recorded["chat"], recorded["system"]) == (True, "Be brief.")
    with pytest.raises(SystemExit) as exit_:  # another prompt format: not the same run
        cli.main([*run, "--raw"])
    assert "system='Be brief.' (now None)" in str(exit_.value.code)


def test_hybrid_with_no_flags_runs_the_shipped_pair(capsys):
    pair = demo_pair_dir()
    command = cli.parse_args(["--mode", "hybrid"])
    assert command.hybrid == HybridSettings(
        str(pair / "thinking"),
        str(pair / "base"),
        str(pair / "steering.npz"),
        tuple(DEFAULT_COEFFICIENTS),
    )
    cli.main(["--mode", "hybrid", "--prompt", "23*47", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "steered" in out and "1 samples, 8 tokens" in out


def test_hybrid_flags_are_all_or_none():
    with pytest.raises(SystemExit):
        cli.parse_args(["--mode", "hybrid", "--base-model", "B"])
