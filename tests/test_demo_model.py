"""The shipped demo model (jaxthink/demo_model): it loads without a path, answers the main
command's examples, and keeps its measured behaviour on fresh held-out problems: greedy
Thinkless decoding thinks on most of the hardest problems and few of the easiest, and
always-think stays accurate where direct answers fail. The floors sit a margin below the
README's numbers, so they catch a broken or replaced checkpoint, not noise.
"""

from __future__ import annotations

import io
import json

import pytest
from transformers import AutoTokenizer

import jaxthink
from infer.cli import demo_examples, main
from jaxthink.data import generate_problems
from jaxthink.data.arithmetic import boxed, true_answer
from jaxthink.data.char_tokenizer import build_char_tokenizer
from jaxthink.eval import extract_answer
from jaxthink.loading import demo_model_dir
from jaxthink.tokenizer import format_prompt

PER_LEVEL = 40  # problems per level: 240 held-out problems in all


@pytest.fixture(scope="module")
def demo():
    model, tokenizer, cfg = jaxthink.load(demo_model_dir())
    return model, tokenizer, cfg


@pytest.fixture(scope="module")
def problems():
    # seed 11 of the test split: another draw than the README's evaluation set (seed 0); level 2
    # has only ~90 test problems, so there the two share some
    return generate_problems(6 * PER_LEVEL, seed=11, split="test")


def _per_level(demo, problems, mode):
    model, tokenizer, _ = demo
    out = jaxthink.generate(
        model, tokenizer, [p["prompt"] for p in problems], mode, max_new_tokens=256
    )
    stats: dict[int, dict[str, float]] = {}
    for p, g in zip(problems, out, strict=True):
        s = stats.setdefault(p["level"], {"n": 0, "correct": 0, "think": 0, "tokens": 0})
        s["n"] += 1
        s["correct"] += extract_answer(g.text) == p["answer"]
        s["think"] += g.chosen_mode == "think"
        s["tokens"] += g.num_tokens
    return {
        level: {k: s[k] / s["n"] for k in ("correct", "think", "tokens")}
        for level, s in stats.items()
    }


def _overall(levels, key):
    return sum(s[key] for s in levels.values()) / len(levels)


@pytest.fixture(scope="module")
def think(demo, problems):
    return _per_level(demo, problems, "think")


def test_the_demo_model_ships_inside_the_package(demo):
    _, tokenizer, cfg = demo
    assert cfg.num_params < 5_000_000
    size = sum(f.stat().st_size for f in demo_model_dir().iterdir())
    assert size < 20 * 2**20
    assert cfg.hf_config["mode_options"]["answer_prefix"] == "\\boxed{"
    assert tokenizer.convert_tokens_to_ids(["<think>", "</think>", "<short>"]) == [3, 4, 5]
    assert jaxthink.demo_model_dir() == demo_model_dir()  # the notebook's way to it


def test_thinkless_answers_easy_problems_directly_and_thinks_on_hard_ones(demo, problems, think):
    levels = _per_level(demo, problems, "thinkless")
    assert max(levels[1]["think"], levels[2]["think"]) <= 0.2 and levels[6]["think"] >= 0.75
    assert _overall(levels, "correct") >= _overall(think, "correct") - 0.05
    assert _overall(levels, "tokens") <= 0.7 * _overall(think, "tokens")


def test_direct_answers_hold_on_the_easiest_level_and_fail_on_the_hardest(demo, problems, think):
    short = _per_level(demo, problems, "short")
    assert _overall(think, "correct") >= 0.7
    assert min(short[1]["correct"], short[2]["correct"]) >= 0.9
    assert short[6]["correct"] <= 0.1 < 0.35 <= think[6]["correct"]


def test_main_command_answers_the_built_in_examples(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no prompts given
    main(["--mode", "think_budget=512", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["prompt"] for r in rows] == demo_examples()
    assert all(r["finish_reason"] == "eos" and r["num_thinking_tokens"] > 0 for r in rows)
    assert [r["answer"] for r in rows] == [boxed(true_answer(q)) for q in demo_examples()]


def test_a_free_text_prompt_is_read_as_the_task_question(capsys):
    main(["--prompt", "What is 4821 + 967?", "--json", "--mode", "think"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert (row["prompt"], row["answer"]) == ("What is 4821 + 967?", "\\boxed{5788}")


def test_free_text_reads_as_the_task_question_on_every_path(demo, tmp_path):
    """The checkpoint's chat template (the shipped model's, and any built on the character
    tokenizer, as `python -m train` builds them) writes free text as the task's question."""

    model, tokenizer, _ = demo
    fresh = AutoTokenizer.from_pretrained(build_char_tokenizer(tmp_path), local_files_only=True)
    pairs = [
        ("What is 4,821 + 967?", "4821+967"),
        ("What is 347 x 26?", "347*26"),
        ("347 \u00d7 26", "347*26"),
        ("explain 3 x 4", "3*4"),
        ("12 - 5", "12-5"),
    ]
    for tok in (tokenizer, fresh):
        for free, question in pairs:
            assert format_prompt(tok, free) == format_prompt(tok, question) == f"Q: {question}\nA:"
        assert format_prompt(tok, "hello") == "Q: hello\nA:"  # no digits: left as it is
    free, canonical = jaxthink.generate(
        model, tokenizer, ["What is 347 x 26?", "347*26"], "think", max_new_tokens=256
    )
    assert free.token_ids == canonical.token_ids
    assert extract_answer(free.text) == str(true_answer("347*26"))
