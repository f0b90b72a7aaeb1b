"""`generate`'s results keep the samples' arrays (`Generations`), each row's `Generation` a view
of them; RL rollouts take their arrays from it."""

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

import jaxthink
from jaxthink.decode.generate import GenerateConfig, Generations, stream
from jaxthink.decode.sampler import FINISH_REASONS
from jaxthink.policies.modes import THINK
from jaxthink.rl import RewardConfig
from jaxthink.rl.config import RolloutConfig
from jaxthink.rl.rollout import collect, response_width
from jaxthink.tokenizer import control_tokens
from tests.char_models import char_model

QUESTIONS = ["12+7", "4821+967"]
MODES = ["think", "no_think"]
SETTINGS = GenerateConfig(n=3, max_new_tokens=20, temperature=1.0, seed=(4, 5), slots=2)


@pytest.fixture(scope="module")
def tiny():
    return char_model(seed=0)


@pytest.fixture(scope="module")
def results(tiny):
    model, tokenizer = tiny
    return jaxthink.generate(model, tokenizer, QUESTIONS, MODES, SETTINGS)


def test_the_arrays_are_the_generations(tiny, results):
    """Every row's arrays hold its Generation's lists: response tokens right-padded with the
    pad id, log-probs and phases, the prompt ids in the left-padded prompt rows, the statistics."""
    _, tokenizer = tiny
    pad = control_tokens(tokenizer).pad
    rows, width = results.tokens.shape
    assert isinstance(results, Generations) and rows == 6 == len(results)
    assert results.prompt_tokens.shape[1] % 32 == 0 and results.prompt_valid.dtype == bool
    assert (results.tokens.dtype, results.logprobs.dtype, results.phases.dtype) == (
        np.int32,
        np.float32,
        np.int8,
    )
    assert width == max(g.num_tokens for g in results)
    assert len(set(results.lengths.tolist())) > 1, "the test needs responses of several lengths"
    for i, g in enumerate(results):
        k = g.num_tokens
        assert results.lengths[i] == k
        assert results.tokens[i, :k].tolist() == g.token_ids
        assert (results.tokens[i, k:] == pad).all()
        assert results.logprobs[i, :k].tolist() == g.logprobs
        assert results.phases[i, k:].tolist() == [0] * (width - k)
        valid = results.prompt_valid[i]
        assert results.prompt_tokens[i][valid].tolist() == g.prompt_ids
        assert valid[-len(g.prompt_ids) :].all() and not valid[: -len(g.prompt_ids)].any()
        assert FINISH_REASONS.get(int(results.finish[i]), "length") == g.finish_reason
        assert bool(results.thought[i]) == (g.chosen_mode == "think")
        assert results.think_count[i] == g.num_thinking_tokens
        assert results.answer_count[i] == g.num_answer_tokens
        assert bool(results.forced_end[i]) == g.budget_forced
        assert results.confidence[i] == pytest.approx(g.confidence)
        assert results.seconds[i] == g.seconds
        assert g.prompt == QUESTIONS[i // 3] and g.mode == MODES[i // 3]
    ends = set(control_tokens(tokenizer).eos)
    for i, g in enumerate(results):  # the thinking text is the THINK-phase tokens'
        ids = results.tokens[i, : g.num_tokens][results.phases[i, : g.num_tokens] == THINK]
        kept = [t for t in ids.tolist() if t != tokenizer.convert_tokens_to_ids("</think>")]
        assert tokenizer.decode([t for t in kept if t not in ends]) == g.thinking
    assert any(g.thinking for g in results)


def test_the_views_are_the_generations_stream_yields_in_result_order(tiny, results):
    """Row p*n + j is sample j of prompt p: its view equals what `stream` yields for (p, j) (all
    but the seconds, a clock), and its tokens what prompt p gives alone under its own seed. The
    six samples differ, so rows in another order would not match."""
    model, tokenizer = tiny
    assert len({tuple(g.token_ids) for g in results}) == 6
    assert results.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert results.sample_index.tolist() == [0, 1, 2, 0, 1, 2]
    streamed = {
        (p, j): g
        for p, j, g in stream(model, tokenizer, QUESTIONS, MODES, SETTINGS.replace(slots=3))
    }
    clockless = lambda g: dataclasses.replace(g, seconds=0.0)
    assert [clockless(g) for g in results] == [
        clockless(streamed[p, j]) for p in range(2) for j in range(3)
    ]
    for p, (question, mode, seed) in enumerate(zip(QUESTIONS, MODES, SETTINGS.seed, strict=True)):
        alone = jaxthink.generate(model, tokenizer, [question], mode, SETTINGS, seed=(seed,))
        assert [g.token_ids for g in alone] == [g.token_ids for g in results[3 * p : 3 * p + 3]]


def test_indexing_slicing_and_iteration(results):
    assert isinstance(results, Sequence) and len(results) == 6
    assert results[0] is results[0]  # built once, then kept
    assert results[-1] is results[5] and results[-6] is results[0]
    assert results[np.int64(2)] is results[2]
    assert results[1:4] == [results[1], results[2], results[3]]
    assert results[::-2] == [results[5], results[3], results[1]]
    assert results[4:100] == [results[4], results[5]] and results[7:] == []
    assert list(results) == [results[i] for i in range(6)]
    assert list(reversed(results)) == list(results)[::-1]
    for i in (6, -7):
        with pytest.raises(IndexError):
            results[i]
    with pytest.raises(TypeError):
        results["0"]
    assert "6 samples" in repr(results)


def test_responses_at_a_width(tiny, results):
    _, tokenizer = tiny
    pad = control_tokens(tokenizer).pad
    width = results.tokens.shape[1]
    tokens, mask = results.responses()
    np.testing.assert_array_equal(tokens, results.tokens)
    assert mask.dtype == np.float32 and mask.sum(1).tolist() == results.lengths.tolist()
    wide, wide_mask = results.responses(width + 7)
    assert wide.shape == wide_mask.shape == (6, width + 7) and wide.dtype == np.int32
    np.testing.assert_array_equal(wide[:, :width], results.tokens)
    assert (wide[:, width:] == pad).all() and not wide_mask[:, width:].any()
    with pytest.raises(ValueError, match="shorter than the longest"):
        results.responses(width - 1)


def test_rollout_arrays_are_the_padded_generations(tiny):
    """`collect`'s arrays equal the list-based padding of each row's Generation: its prompt ids
    left-padded to a multiple of 32, its response right-padded to the response width."""
    model, tokenizer = tiny
    records = [{"question": q, "answer": "19"} for q in ("12+7", "3*4", "90-13")]
    cfg = RolloutConfig(group_size=3, max_new_tokens=20, temperature=1.0, slots=4)
    r = collect(model, tokenizer, records, cfg, RewardConfig(), seed=3)
    gens = list(r.generations)
    assert len(gens) == r.rows == 9
    pad = control_tokens(tokenizer).pad
    prompt_width = -(-max(len(g.prompt_ids) for g in gens) // 32) * 32
    width = response_width(max(g.num_tokens for g in gens), cfg.max_new_tokens)
    assert width > r.generations.tokens.shape[1]  # 32: wider than the longest response
    prompts = np.full((9, prompt_width), pad, np.int32)
    valid = np.zeros((9, prompt_width), bool)
    responses = np.full((9, width), pad, np.int32)
    mask = np.zeros((9, width), np.float32)
    for b, g in enumerate(gens):
        prompts[b, prompt_width - len(g.prompt_ids) :] = g.prompt_ids
        valid[b, prompt_width - len(g.prompt_ids) :] = True
        responses[b, : g.num_tokens] = g.token_ids
        mask[b, : g.num_tokens] = 1.0
    for got, want in (
        (r.prompt_tokens, prompts),
        (r.prompt_valid, valid),
        (r.response_tokens, responses),
        (r.response_mask, mask),
        (r.lengths, np.array([g.num_tokens for g in gens], np.int32)),
    ):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert r.generations[4] is gens[4] and r.generations[-1] is gens[8]
    assert [g.prompt for g in gens] == [rec["question"] for rec in records for _ in range(3)]
