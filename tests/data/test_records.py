"""SFT samples and RL prompts: tokens, loss masks, truncation, packing, the forward over packed
rows, and data streams that are deterministic and resume where they stopped."""

import copy
import json

import jax
import numpy as np
import pytest

from jaxthink.data.arithmetic import generate_problems, make_record
from jaxthink.data.records import DataSource, prompt_batches, read_records
from jaxthink.models import forward
from jaxthink.runs.config import ModelSpec
from jaxthink.runs.model import build_model
from jaxthink.sft.data import (
    check_control_tokens,
    responses_of,
    sample_pairs,
    sft_batches,
    tokenize,
)

RECORD = make_record("12+9", 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = ModelSpec(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    model, tokenizer, _ = build_model(spec, tmp_path_factory.mktemp("data_model"))
    return model, tokenizer


def test_paired_records_give_a_think_and_a_short_response():
    think, short = responses_of(RECORD)
    assert think == "<think>" + RECORD["think"] + "</think>\\boxed{21}"
    assert short == "<short>\\boxed{21}"
    assert responses_of(RECORD, "short") == [short]
    assert responses_of({"prompt": "q", "response": "r"}) == ["r"]
    with pytest.raises(ValueError, match="expected 'prompt' plus 'think' and 'short'"):
        responses_of({"prompt": "q", "answer": "1"})


def test_short_repeats_trains_the_short_response_that_many_times():
    think, short = responses_of(RECORD)
    assert responses_of(RECORD, "both", short_repeats=3) == [think, short, short, short]
    assert responses_of(RECORD, "short", short_repeats=2) == [short, short]
    assert responses_of(RECORD, "think", short_repeats=2) == [think]


def test_short_repeats_do_not_train_the_control_token_again():
    think, short = responses_of(RECORD)
    assert sample_pairs([RECORD], "both", short_repeats=3) == [
        (RECORD["prompt"], think, True),
        (RECORD["prompt"], short, True),
        (RECORD["prompt"], short, False),
        (RECORD["prompt"], short, False),
    ]


def test_a_sample_without_control_loss_trains_the_rest_of_its_response(tiny):
    _, tok = tiny
    sample = tokenize(tok, "12+9", "<short>\\boxed{21}", 64, tok.eos_token_id, False)
    assert tok.decode(sample["tokens"][sample["loss"] == 1]) == "\\boxed{21}<eos>"


def test_loss_covers_the_response_from_its_control_token_to_eos(tiny):
    _, tok = tiny
    sample = tokenize(tok, "12+9", "<short>\\boxed{21}", 64, tok.eos_token_id)
    text = tok.decode(sample["tokens"])
    assert text == "Q: 12+9\nA:<short>\\boxed{21}<eos>"
    loss_text = tok.decode(sample["tokens"][sample["loss"] == 1])
    assert loss_text == "<short>\\boxed{21}<eos>"
    assert sample["loss"].tolist() == sorted(sample["loss"].tolist())  # prompt first, then loss


def test_long_samples_are_truncated_and_prompt_only_ones_dropped(tiny):
    _, tok = tiny
    sample = tokenize(tok, "12+9", "<short>\\boxed{21}", 14, tok.eos_token_id)
    assert len(sample["tokens"]) == 14
    # the prompt "Q: 12+9\nA:" is 10 tokens, so 4 response tokens remain
    assert tok.decode(sample["tokens"][sample["loss"] == 1]) == "<short>\\bo"
    assert tokenize(tok, "12+9", "<short>1", 10, tok.eos_token_id) is None  # prompt fills it


def packed(tok, seed=0, records=None):
    records = records or generate_problems(40, [1, 2], seed=0)
    return iter(sft_batches(tok, records, seq_len=96, batch_size=4, seed=seed))


def test_packed_rows_hold_whole_samples_with_their_own_positions(tiny):
    _, tok = tiny
    batch = next(packed(tok))
    assert {k: v.shape for k, v in batch.items()} == dict.fromkeys(
        ("tokens", "segment_ids", "positions", "loss"), (4, 96)
    )
    row, seg, pos = batch["tokens"][0], batch["segment_ids"][0], batch["positions"][0]
    assert seg.max() >= 2  # several samples share the row
    for s in range(1, seg.max() + 1):
        text = tok.decode(row[seg == s])
        assert text.startswith("Q: ") and text.endswith("<eos>")
        assert pos[seg == s].tolist() == list(range((seg == s).sum()))
    assert (batch["loss"][batch["segment_ids"] == 0] == 0).all()


def test_streams_are_deterministic_and_resume_from_their_state(tiny):
    _, tok = tiny
    a, b = packed(tok), packed(tok)
    for _ in range(3):
        np.testing.assert_array_equal(next(a)["tokens"], next(b)["tokens"])
    assert not np.array_equal(next(packed(tok, seed=1))["tokens"], next(packed(tok))["tokens"])
    state = json.loads(json.dumps(a.get_state()))  # what a checkpoint stores
    expected = [next(a)["tokens"] for _ in range(3)]
    c = packed(tok)
    c.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(c)["tokens"], want)


def test_prompt_batches_resume_from_their_state():
    records = generate_problems(20, [1], seed=0)
    it = iter(prompt_batches(records, 8, seed=0))
    first = next(it)
    assert len(first) == 8 and all("answer" in r for r in first)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses an epoch boundary (20 records)
    again = iter(prompt_batches(records, 8, seed=0))
    again.set_state(state)
    assert [next(again) for _ in range(4)] == expected
    with pytest.raises(ValueError, match="expected 'prompt' \\(or 'question'\\) and 'answer'"):
        prompt_batches([{"prompt": "1+1"}], 1, seed=0)


def test_records_read_from_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = generate_problems(5, [1], seed=2)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.parquet"):
        assert read_records(DataSource(path=str(tmp_path / name))) == records
    assert read_records(DataSource(levels=(1,), count=5, seed=2)) == records
    with pytest.raises(ValueError, match="unknown format; accepted: .jsonl, .json, .parquet"):
        (tmp_path / "r.csv").write_text("a\n")
        read_records(DataSource(path=str(tmp_path / "r.csv")))


def test_forward_over_packed_rows_equals_forward_on_each_sample(tiny):
    model, tok = tiny
    first = tok.encode("Q: 1+2\nA:<short>3")
    second = tok.encode("Q: 45-6\nA:<think>")
    tokens = np.zeros((1, 24), np.int32)
    tokens[0, : len(first)] = first
    tokens[0, len(first) : len(first) + len(second)] = second
    segment_ids = np.zeros_like(tokens)
    segment_ids[0, : len(first)] = 1
    segment_ids[0, len(first) : len(first) + len(second)] = 2
    positions = np.zeros_like(tokens)
    positions[0, : len(first)] = np.arange(len(first))
    positions[0, len(first) : len(first) + len(second)] = np.arange(len(second))
    packed = jax.jit(lambda m, t, s, p: forward(m, t, segment_ids=s, positions=p))
    packed_logits = packed(model, tokens, segment_ids, positions)[0]
    derived = jax.jit(lambda m, t, s: forward(m, t, segment_ids=s))(model, tokens, segment_ids)[0]
    np.testing.assert_allclose(derived, packed_logits, atol=1e-6)  # positions restart by segment
    for ids, start in ((first, 0), (second, len(first))):
        alone = forward(model, np.array([ids]), np.ones((1, len(ids)), bool))[0]
        np.testing.assert_allclose(
            packed_logits[start : start + len(ids)], alone, atol=1e-5, rtol=1e-5
        )


def test_paired_data_needs_the_control_token_first_in_the_response(tiny):

    _, tok = tiny
    responses = ["<short>\\boxed{3}"]
    check_control_tokens(tok, responses)  # the demo template ends at "A:"
    opens_thinking = copy.deepcopy(tok)
    opens_thinking.chat_template = tok.chat_template.replace("A:{%- endif", "A:<think>{%- endif")
    with pytest.raises(ValueError, match="generation prompt already opens <think>"):
        check_control_tokens(opens_thinking, responses)
    check_control_tokens(opens_thinking, ["3"])  # plain responses are fine
