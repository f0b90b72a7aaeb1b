"""The demo hybrid pair's training mixes (configs/demo/base.yaml, distill.yaml): the base model
reads worked solutions and direct answers in plain text, the thinking model only <think> traces."""

from pathlib import Path

import pytest

from jaxthink.data.arithmetic import generate_problems, make_record
from jaxthink.data.char_tokenizer import build_char_tokenizer
from jaxthink.runs.config_file import load_config
from jaxthink.sft.config import SFTConfig
from jaxthink.sft.data import responses_of, sample_pairs, sft_batches
from jaxthink.tokenizer import load_tokenizer

DEMO = Path(__file__).parents[2] / "configs" / "demo"
RECORD = make_record("347*26", 6)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(build_char_tokenizer(tmp_path_factory.mktemp("char")))


def samples(tokenizer, config: str) -> list[str]:
    """The decoded samples (prompt + response) of the config's first two batches."""
    cfg = load_config(SFTConfig, DEMO / config)
    records = generate_problems(24, cfg.data.levels, seed=cfg.data.seed)
    stream = iter(
        sft_batches(
            tokenizer,
            records,
            seq_len=cfg.seq_len,
            batch_size=4,
            seed=0,
            which=cfg.responses,
            short_repeats=cfg.short_repeats,
            prefetch=0,
        )
    )
    texts = []
    for _ in range(2):
        batch = next(stream)
        for row, seg in zip(batch["tokens"], batch["segment_ids"], strict=True):
            texts += [tokenizer.decode(row[seg == s]) for s in range(1, seg.max() + 1)]
    return texts


def test_plain_responses_are_a_worked_solution_and_the_direct_answer():
    worked, direct, again = responses_of(RECORD, "plain", short_repeats=2)
    assert worked.startswith("347*6|2\n7*6+0=42|34|2\n") and worked.endswith(
        "|||9022\n\\boxed{9022}"
    )
    assert worked == RECORD["think"] + "\\boxed{9022}" and direct == again == "\\boxed{9022}"
    # the repeat trains the answer, not the choice of format (its first token)
    assert [t for *_, t in sample_pairs([RECORD], "plain", short_repeats=2)] == [True, True, False]


def test_worked_share_is_how_often_a_worked_solution_trains_its_opening():
    records = generate_problems(8, seed=0)
    pairs = sample_pairs(records, "plain", short_repeats=1, worked_share=0.25)
    worked = [trains for _, response, trains in pairs if "|" in response]
    direct = [trains for _, response, trains in pairs if "|" not in response]
    assert len(worked) == len(direct) == 8  # every worked solution is read
    assert sum(worked) == 2 and all(direct)  # a quarter of them train the choice to write one


def test_the_base_mix_holds_both_formats_and_no_control_token(tokenizer):
    texts = samples(tokenizer, "base.yaml")
    worked = [t for t in texts if "|" in t]
    direct = [t for t in texts if "|" not in t]
    assert worked and direct
    for text in worked:  # the trace right after the prompt, the boxed answer after it
        assert text.split("A:", 1)[1][0] in "0123456789+-"
        assert "\n\\boxed{" in text and text.endswith("}<eos>")
    for text in direct:
        assert text.split("A:", 1)[1].startswith("\\boxed{") and text.endswith("}<eos>")
    assert not any(tok in t for t in texts for tok in ("<think>", "</think>", "<short>"))


def test_the_distillation_mix_is_think_traces_only(tokenizer):
    cfg = load_config(SFTConfig, DEMO / "distill.yaml")
    assert cfg.model.checkpoint == "runs/demo_base/hf"  # the base model's export
    texts = samples(tokenizer, "distill.yaml")
    assert texts
    for text in texts:
        response = text.split("A:", 1)[1]
        assert response.startswith("<think>") and "</think>\\boxed{" in response
        assert "<short>" not in response
