"""Evaluation runs (`jaxthink.eval.runner`) and their report (`jaxthink.eval.report`).

One tiny random Qwen2 checkpoint with the demo character tokenizer and four arithmetic problems
(two levels) serve every test; the uninterrupted run is made once and compared against.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

import jaxthink
import jaxthink.eval.runner as evaluate_module
from infer.cli import main
from jaxthink.data.arithmetic import generate_problems, write_jsonl
from jaxthink.eval import Problem, load_problems, report
from jaxthink.eval.metrics import cons_at_k, pass_at_k_curve
from jaxthink.eval.runner import evaluate, read_samples
from tests.hf_models import write_char_checkpoint

MODES = ["no_think", "think_budget=4,8"]
MODE_NAMES = ["no_think", "think_budget=4", "think_budget=8"]
N, MAX_NEW = 2, 24
RUN = dict(n=N, max_new_tokens=MAX_NEW, temperature=1.0, seed=0, progress=False)
OUTPUTS = ["samples.jsonl", "run.json", "summary.json", "summary.md", "pass_at_k.png", "pareto.png"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_char_checkpoint(root / "ckpt")
    write_jsonl(generate_problems(4, levels=[1, 2], seed=0, split="test"), root / "problems.jsonl")
    return root


@pytest.fixture(scope="module")
def loaded(workdir):
    model, tokenizer, _ = jaxthink.load(workdir / "ckpt")
    return model, tokenizer, load_problems(workdir / "problems.jsonl")


@pytest.fixture(scope="module")
def full_run(workdir, loaded):
    """The uninterrupted run: (out dir, returned summary)."""
    model, tokenizer, problems = loaded
    out = workdir / "full"
    summary = evaluate(model, tokenizer, problems, MODES, out_dir=out, **RUN)
    return out, summary


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def rows_by_mode(out):
    """samples.jsonl as mode -> problems x n rows (problems in first-seen order)."""
    grouped: dict = {}
    for row in map(json.loads, lines(out / "samples.jsonl")):
        grouped.setdefault(row["mode"], {}).setdefault(row["problem_id"], {})[row["sample"]] = row
    return {
        mode: [[samples[j] for j in range(N)] for samples in problems.values()]
        for mode, problems in grouped.items()
    }


def counting_stream(monkeypatch):
    """Replaces the runner's `stream` by a wrapper recording the (mode, question, sample index)
    of every sample asked for."""
    asked = []
    real = evaluate_module.stream

    def wrapper(model, tokenizer, prompts, modes, settings, *, samples, **kw):
        for q, m, wanted in zip(prompts, modes, samples, strict=True):
            asked.extend((str(m), q, j) for j in wanted)
        return real(model, tokenizer, prompts, modes, settings, samples=samples, **kw)

    monkeypatch.setattr(evaluate_module, "stream", wrapper)
    return asked


# ---------------------------------------------------------------------------------------------
# A whole run


def test_run_writes_every_output(full_run):
    out, summary = full_run
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert len(lines(out / "samples.jsonl")) == len(MODE_NAMES) * 4 * N
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert list(summary["modes"]) == MODE_NAMES
    assert (summary["problems"], summary["n"]) == (4, N)
    expected_keys = {
        "problems",
        "samples",
        "accuracy",
        "pass_at_k",
        "cons_at_n",
        "confidence_highest",
        "borda",
        "parsed",
        "mean_tokens",
        "median_tokens",
        "mean_thinking_tokens",
        "think_ratio",
        "parallel_latency",
        "truncated",
        "budget_forced",
        "levels",
    }
    for metrics in summary["modes"].values():
        assert set(metrics) == expected_keys
        assert list(metrics["pass_at_k"]) == ["1", "2"]
        assert list(metrics["levels"]) == ["1", "2"]
    table = (out / "summary.md").read_text()
    for mode in MODE_NAMES:
        assert f"| {mode} |" in table
    assert "## By level" in table
    for name in ("pass_at_k.png", "pareto.png"):
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sample_rows_hold_the_generation_and_its_grade(full_run):
    out, _ = full_run
    row = json.loads(lines(out / "samples.jsonl")[0])
    assert row["mode"] == "no_think" and row["sample"] == 0 and row["level"] in (1, 2)
    assert {
        "question",
        "gold",
        "generate_seed",
        "text",
        "extracted_answer",
        "correct",
        "parsed",
    } <= set(row)
    assert {"chosen_mode", "num_tokens", "num_thinking_tokens", "num_answer_tokens"} <= set(row)
    assert {"confidence", "finish_reason", "budget_forced"} <= set(row)
    assert row["parsed"] == (row["extracted_answer"] is not None)


def test_summary_equals_a_recomputation_from_the_samples(full_run):
    out, summary = full_run
    for mode, problem_rows in rows_by_mode(out).items():
        flat = [row for rows in problem_rows for row in rows]
        correct = np.array([[r["correct"] for r in rows] for rows in problem_rows])
        answers = [[r["extracted_answer"] for r in rows] for rows in problem_rows]
        lengths = np.array([[r["num_tokens"] for r in rows] for rows in problem_rows])
        got = summary["modes"][mode]
        assert got["accuracy"] == pytest.approx(np.mean([r["correct"] for r in flat]))
        assert list(got["pass_at_k"].values()) == pytest.approx(list(pass_at_k_curve(correct)))
        assert got["cons_at_n"] == pytest.approx(cons_at_k(answers, correct, k=N))
        assert got["mean_tokens"] == pytest.approx(lengths.mean())
        assert got["median_tokens"] == pytest.approx(np.median(lengths))
        assert got["mean_thinking_tokens"] == pytest.approx(
            np.mean([r["num_thinking_tokens"] for r in flat])
        )
        assert got["think_ratio"] == pytest.approx(
            np.mean([r["chosen_mode"] == "think" for r in flat])
        )
        assert got["parallel_latency"] == pytest.approx(lengths.max(axis=1).mean())
        assert got["truncated"] == pytest.approx(
            np.mean([r["finish_reason"] == "length" for r in flat])
        )
        assert got["budget_forced"] == pytest.approx(np.mean([r["budget_forced"] for r in flat]))
        for level, metrics in got["levels"].items():
            mine = [r["num_tokens"] for r in flat if str(r["level"]) == level]
            assert metrics["mean_tokens"] == pytest.approx(np.mean(mine))
    # the modes really differ: no_think never thinks, budgets bound the thinking
    modes = summary["modes"]
    assert modes["no_think"]["think_ratio"] == 0.0
    assert modes["think_budget=4"]["mean_thinking_tokens"] <= 4
    assert modes["think_budget=8"]["mean_thinking_tokens"] <= 8


# ---------------------------------------------------------------------------------------------
# Resuming


def interrupted_copy(full_out, out, keep_lines: int):
    """`out` as a run killed after `keep_lines` rows, in the middle of writing the next one."""
    out.mkdir()
    shutil.copy(full_out / "run.json", out / "run.json")
    rows = lines(full_out / "samples.jsonl")
    text = "".join(line + "\n" for line in rows[:keep_lines]) + rows[keep_lines][:25]
    (out / "samples.jsonl").write_text(text, encoding="utf-8")
    return len(rows)


def same_rows(a, b):
    """The same samples: equal rows but for float noise in the confidence (a sample's tokens do
    not depend on the slots it ran beside, but its logits' last bits do)."""
    rows = lambda out: sorted(
        (json.loads(x) for x in lines(out / "samples.jsonl")),
        key=lambda r: (r["mode"], r["problem_id"], r["sample"]),
    )
    confidence = lambda rs: np.array([r.pop("confidence") for r in rs])
    ra, rb = rows(a), rows(b)
    close = np.allclose(confidence(ra), confidence(rb), rtol=1e-5)
    return close and ra == rb


def test_resume_generates_only_the_missing_samples(full_run, loaded, tmp_path, monkeypatch):
    full_out, full_summary = full_run
    model, tokenizer, problems = loaded
    total = interrupted_copy(full_out, tmp_path / "run", keep_lines=12)  # half, plus a cut line
    asked = counting_stream(monkeypatch)
    summary = evaluate(model, tokenizer, problems, MODES, out_dir=tmp_path / "run", **RUN)
    assert len(asked) == total - 12  # nothing already on disk was redone
    assert same_rows(full_out, tmp_path / "run")
    assert summary["modes"] == full_summary["modes"]


def test_resume_in_the_middle_of_a_problem_reproduces_its_samples(
    full_run, loaded, tmp_path, monkeypatch
):
    full_out, _ = full_run
    model, tokenizer, problems = loaded
    total = interrupted_copy(full_out, tmp_path / "run", keep_lines=N * 5 + 1)
    asked = counting_stream(monkeypatch)
    evaluate(model, tokenizer, problems, MODES, out_dir=tmp_path / "run", **RUN)
    assert len(asked) == total - N * 5 - 1  # only the half-done problem's missing samples...
    assert len(lines(tmp_path / "run" / "samples.jsonl")) == total  # ...each written once
    assert same_rows(full_out, tmp_path / "run")


def test_a_finished_run_is_not_redone(full_run, loaded, tmp_path, monkeypatch):
    full_out, full_summary = full_run
    model, tokenizer, problems = loaded
    shutil.copytree(full_out, tmp_path / "run")
    asked = counting_stream(monkeypatch)
    summary = evaluate(model, tokenizer, problems, MODES, out_dir=tmp_path / "run", **RUN)
    assert asked == []
    assert summary == full_summary


def test_resuming_with_other_settings_is_refused(full_run, loaded, tmp_path):
    full_out, _ = full_run
    model, tokenizer, problems = loaded
    shutil.copytree(full_out, tmp_path / "run")
    with pytest.raises(ValueError, match=r"temperature=1\.0 \(now 0\.5\)"):
        evaluate(
            model,
            tokenizer,
            problems,
            MODES,
            out_dir=tmp_path / "run",
            **RUN | {"temperature": 0.5},
        )


def test_a_directory_in_use_by_another_run_is_refused(loaded, tmp_path):
    model, tokenizer, problems = loaded
    (tmp_path / "run").mkdir()
    with (tmp_path / "run" / ".lock").open("w") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="in use by another evaluation run"):
            evaluate(model, tokenizer, problems, MODES, out_dir=tmp_path / "run", **RUN)


def test_read_samples_drops_a_cut_last_line_and_repairs_the_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    row = lambda j: json.dumps({"mode": "think", "problem_id": "a", "sample": j})
    path.write_text(row(0) + "\n" + row(1) + "\n" + row(2)[:10], encoding="utf-8")
    assert sorted(read_samples(path)) == [("think", "a", 0), ("think", "a", 1)]
    assert path.read_text() == row(0) + "\n" + row(1) + "\n"


def test_read_samples_names_a_broken_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("{oops\n" + json.dumps({"mode": "m", "problem_id": "a", "sample": 0}) + "\n")
    with pytest.raises(ValueError, match=r"samples\.jsonl:1: not a JSON line"):
        read_samples(path)


def test_duplicate_problem_ids_are_refused(tmp_path):
    twice = [Problem("x", "1+1", "2"), Problem("x", "2+2", "4")]
    with pytest.raises(ValueError, match="problem id 'x' appears twice"):
        evaluate(None, None, twice, ["think"], out_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# The report, on hand-made samples with known answers


def sample(answer, correct, confidence, tokens, thinking=0, level=None, **extra):
    row = dict(
        extracted_answer=answer,
        correct=correct,
        parsed=answer is not None,
        confidence=confidence,
        num_tokens=tokens,
        num_thinking_tokens=thinking,
        chosen_mode="think" if thinking else "short",
        finish_reason="eos",
        budget_forced=False,
        level=level,
    )
    return row | extra


def hand_made_rows():
    a = [  # level 1: majority "5" right, the most confident sample "7" wrong
        sample("5", True, 0.1, 10, thinking=5, level=1),
        sample("5", True, 0.2, 20, thinking=10, level=1, budget_forced=True),
        sample("7", False, 0.9, 30, thinking=5, level=1),
    ]
    b = [  # level 2: a tie between "3" and "4" goes to the first; "4" is right
        sample(None, False, 0.9, 40, level=2),
        sample("3", False, 0.5, 50, level=2, finish_reason="length"),
        sample("4", True, 0.1, 60, level=2),
    ]
    return [a, b]


def test_summarize_on_known_samples():
    summary = report.summarize({"demo": hand_made_rows()}, {"seed": 0})
    m = summary["modes"]["demo"]
    assert (summary["problems"], summary["n"]) == (2, 3)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["pass_at_k"] == pytest.approx({"1": 0.5, "2": 5 / 6, "3": 1.0})
    assert m["cons_at_n"] == pytest.approx(0.5)  # a: "5" wins; b: the tie goes to "3"
    assert m["confidence_highest"] == 0.0  # a: "7" (0.9); b: "3" (0.5, the answered best)
    assert m["borda"] == pytest.approx(0.5)  # a: "5" gets sqrt(2) + 1 > sqrt(3) for "7"
    assert m["parsed"] == pytest.approx(5 / 6)
    assert (m["mean_tokens"], m["median_tokens"]) == (35.0, 35.0)
    assert m["mean_thinking_tokens"] == pytest.approx(20 / 6)
    assert m["think_ratio"] == pytest.approx(0.5)
    assert m["parallel_latency"] == 45.0  # mean of the longest per problem: (30 + 60) / 2
    assert m["truncated"] == pytest.approx(1 / 6) and m["budget_forced"] == pytest.approx(1 / 6)
    assert m["levels"]["1"]["accuracy"] == pytest.approx(2 / 3)
    assert m["levels"]["2"]["accuracy"] == pytest.approx(1 / 3)


def test_markdown_and_plots_on_known_samples(tmp_path):
    rows = hand_made_rows()
    summary = report.summarize({"no_think": rows, "think_budget=64": rows, "think_budget=8": rows})
    table = report.markdown(summary)
    header = "| mode | acc % | pass@2 % | pass@3 % | cons@3 % | conf-top % | Borda % |"
    assert header in table
    assert (
        "| no_think | 50.0 | 83.3 | 100.0 | 50.0 | 0.0 | 50.0 | 35.0 | 35 | 3.3 | 50.0 |" in table
    )
    assert "| 2 | think_budget=8 | 33.3 |" in table
    assert [m for m, _ in report._mode_families(summary["modes"])["think_budget"]] == [
        "think_budget=8",
        "think_budget=64",
    ]
    written = report.write_report(summary, tmp_path)
    assert [p.name for p in written] == OUTPUTS[2:]
    for name in ("pass_at_k.png", "pareto.png"):
        assert imread(tmp_path / name).shape[0] > 100


def test_coinciding_curves_stay_visible():
    """Each curve its own marker and line style; a curve equal to an earlier one is drawn
    slightly offset and its label names the curve it equals."""
    styles = report.curve_styles(
        {"think": [50, 80], "no_think": [50, 80], "short": [10, 20], "extend=1": [50, 80]}
    )
    assert len({(s["marker"], s["linestyle"]) for s in styles.values()}) == 4
    assert [s["offset"] for s in styles.values()] == [0.0, 0.8, 0.0, 1.6]
    assert styles["no_think"]["label"] == "no_think (= think, drawn +0.8)"
    assert styles["short"]["label"] == "short"


def test_legends_sit_beside_the_plots_not_on_them(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig) or path)
    summary = report.summarize({"demo": hand_made_rows()}, {"seed": 0})
    report.plot_pass_at_k(summary, tmp_path / "a.png")
    report.plot_pareto(summary, tmp_path / "b.png")
    for fig in figures:
        assert isinstance(fig, Figure)
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends and all(
            leg.get_bbox_to_anchor().x0 > ax.bbox.x1 - 1
            for leg, ax in zip(legends, [a for a in fig.axes if a.get_legend()])
        )


# ---------------------------------------------------------------------------------------------
# The command line


def cli(workdir, *extra):
    return ["--model", str(workdir / "ckpt"), "--max-new-tokens", str(MAX_NEW), *extra]


def test_cli_evaluates_and_prints_the_summary(workdir, tmp_path, capsys):
    data = tmp_path / "two.jsonl"
    write_jsonl(generate_problems(2, levels=[1], seed=1, split="test"), data)
    out = tmp_path / "run"
    main(
        cli(
            workdir,
            "--data",
            str(data),
            "--out",
            str(out),
            "--mode",
            "no_think",
            "--n",
            "2",
            "--temperature",
            "1",
            "--json",
        )
    )
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["modes"]) == ["no_think"] and summary["problems"] == 2
    assert summary["run"]["data"] == str(data)
    assert all((out / name).exists() for name in OUTPUTS)


def test_cli_needs_out(workdir, capsys):
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, before loading
        main(cli(workdir, "--data", str(workdir / "problems.jsonl")))
    assert exit_.value.code == 2 and "needs --out DIR" in capsys.readouterr().err


def test_cli_names_a_missing_data_file(workdir, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(SystemExit, match=re.escape(f"{missing}: no such file")):
        main(cli(workdir, "--data", str(missing), "--out", str(tmp_path / "run")))
