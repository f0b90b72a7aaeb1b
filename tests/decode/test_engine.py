"""Continuous batching: slots fed from a queue give every request the tokens it gets alone."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxthink
from infer import bench_device, bench_slots
from infer.bench import hf_greedy
from infer.bench_slots import skewed_lengths
from jaxthink.decode import engine, sampler
from jaxthink.decode.generate import GenerateConfig, policy_tokens, prompt_key
from jaxthink.models.shapes import SHAPES
from tests.decode.test_sampler import PROMPTS, plain_tokens
from tests.hf_models import write_char_checkpoint, write_tiny_hf

QUESTIONS = ["12+7", "4821+967", "347*26", "5*5", "90-13"]
MODES = ["think_budget=5", "no_think", "think", "short", "extend=1"]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    path = tmp_path_factory.mktemp("char")
    write_char_checkpoint(path, seed=6)  # free thinking runs long on some questions
    model, tokenizer, _ = jaxthink.load(path)
    return model, tokenizer


def tokens_of(generations):
    return [g.token_ids for g in generations]


def test_each_request_gets_the_tokens_it_gets_alone(demo_like):
    """Greedy, mixed modes and lengths, five requests through two slots (rows end at different
    steps and their slots take the next requests) against each request alone in one slot."""
    model, tokenizer = demo_like
    settings = GenerateConfig(max_new_tokens=48, slots=2)
    stop = [tokenizer.convert_tokens_to_ids("=")]  # ends the rows at 6 to 32 tokens, or never
    flowing = jaxthink.generate(model, tokenizer, QUESTIONS, MODES, settings, stop_tokens=stop)
    lengths = {len(g.token_ids) for g in flowing}
    assert len(lengths) > 2, "the test needs rows that end at different steps"
    for q, m, g in zip(QUESTIONS, MODES, flowing, strict=True):
        one = settings.replace(slots=1)
        alone = jaxthink.generate(model, tokenizer, [q], m, one, stop_tokens=stop)[0]
        assert (g.token_ids, g.num_thinking_tokens, g.finish_reason) == (
            alone.token_ids,
            alone.num_thinking_tokens,
            alone.finish_reason,
        )
        np.testing.assert_allclose(g.logprobs, alone.logprobs, rtol=1e-5)  # other layouts


@pytest.mark.parametrize("slots", [1, 3, 16])
def test_sampled_tokens_do_not_depend_on_slots_or_order(demo_like, slots):
    """Sample j of a prompt draws from (seed, prompt, j): the same tokens whatever the slot count
    and whatever order the requests come in (per-prompt seeds keep a prompt's key with it)."""
    model, tokenizer = demo_like
    settings = GenerateConfig(n=3, max_new_tokens=24, temperature=1.0, top_p=0.9, seed=(4, 5, 6))
    base = jaxthink.generate(model, tokenizer, QUESTIONS[:3], "think", settings.replace(slots=4))
    again = jaxthink.generate(
        model,
        tokenizer,
        QUESTIONS[:3][::-1],
        "think",
        settings.replace(slots=slots, seed=(6, 5, 4)),
    )
    flipped = [g for p in (2, 1, 0) for g in again[3 * p : 3 * p + 3]]
    assert tokens_of(flipped) == tokens_of(base)
    assert len({tuple(g.token_ids) for g in base[:3]}) > 1  # the samples differ from each other


def test_the_samples_of_a_prompt_share_one_prefill(demo_like):
    model, tokenizer = demo_like
    tok = policy_tokens(tokenizer, jaxthink.ModeOptions(), 103)
    runner = engine.Engine(model, 0)
    requests = [
        engine.Request(
            prompt=[5, 6, 7],
            key=prompt_key(0, p),
            max_new_tokens=4,
            samples=(0, 1, 2, 3),
            temperature=1.0,
        )
        for p in range(3)
    ]
    out = list(runner.run(requests, tok, slots=4))
    assert sorted((s.request, s.index) for s in out) == [(r, j) for r in range(3) for j in range(4)]
    assert runner.stats.prefilled_rows == 3  # each prompt once for its four samples


def test_no_recompilation_while_requests_come_and_go(demo_like):
    """Once the programs exist (prefill and insert per power-of-two row count, the step loop per
    slot count), runs with other requests (more than the slots, other modes, lengths, budgets,
    sampling numbers and orders) trace nothing new."""
    model, tokenizer = demo_like
    settings = GenerateConfig(max_new_tokens=32, slots=2)
    for count in (5, 3, 2, 1):  # prefills of 8, 4, 2 and 1 rows
        jaxthink.generate(model, tokenizer, QUESTIONS[:count], "think", settings)
    before = dict(sampler.TRACE_COUNT)
    jaxthink.generate(model, tokenizer, QUESTIONS[::-1], "think_budget=9", settings)
    more = settings.replace(temperature=0.7, top_p=0.9, n=2)
    jaxthink.generate(model, tokenizer, QUESTIONS[:3], "extend=2", more)
    modes = ["short", "extend=1", "think", "think_budget=3"]
    jaxthink.generate(model, tokenizer, QUESTIONS[1:], modes, more.replace(seed=5))
    assert before == sampler.TRACE_COUNT


def fixed_lengths(demo_like, lengths):
    """(engine, tok, requests): greedy requests that each run to their own max_new_tokens."""
    model, tokenizer = demo_like
    tok = policy_tokens(tokenizer, jaxthink.ModeOptions(), 103)
    tok = tok.replace(eos=tok.eos.at[:].set(False))  # no row ends before its max_new_tokens
    requests = [
        engine.Request(
            prompt=[5, 6, 7], key=prompt_key(0, p), max_new_tokens=n, mode=(2, 0, 0, 0, 0)
        )
        for p, n in enumerate(lengths)
    ]
    return engine.Engine(model, 0), tok, requests


def test_occupancy_counts_generated_tokens_over_slot_steps(demo_like):
    lengths = [2, 9, 3, 3, 5, 2]
    runner, tok, requests = fixed_lengths(demo_like, lengths)
    out = {s.request: len(s.tokens) for s in runner.run(requests, tok, slots=2)}
    assert out == dict(enumerate(lengths))
    assert runner.stats.tokens == sum(lengths)
    # requests enter as slots free up: 2+9 | 3+3+5+2 -> the slots are busy for 13 of 13 steps
    assert runner.stats.steps == 13 and runner.stats.occupancy == pytest.approx(24 / 26)


def test_ended_rows_hand_their_slots_to_staged_samples_inside_the_loop(demo_like, monkeypatch):
    """Two slots and two staging rows: the first call starts requests 0 and 1 and stages 2 and
    3, which take slot 0 after steps 2 and 5; it returns when 3 ends (step 8) with 4 and 5 still
    on the host. The second runs 4 in slot 0, hands slot 1 to 5 when 1 ends at step 9, and
    returns when all have ended. Each sample's seconds cover its own steps."""
    runner, tok, requests = fixed_lengths(demo_like, [2, 9, 3, 3, 5, 2])
    calls, run_steps = [], engine.run_steps

    def spy(*args):
        out = run_steps(*args)
        calls.append((int(out[0]), int(out[2].taken)))  # (steps, samples taken from staging)
        return out

    monkeypatch.setattr(engine, "run_steps", spy)
    samples = {s.request: s for s in runner.run(requests, tok, slots=2)}
    assert calls == [(8, 2), (5, 1)]
    assert {r: len(s.tokens) for r, s in samples.items()} == {0: 2, 1: 9, 2: 3, 3: 3, 4: 5, 5: 2}
    assert all(s.seconds > 0 for s in samples.values())
    assert samples[1].seconds > samples[0].seconds


def test_the_timeline_spreads_steps_over_their_call():
    timeline = engine.Timeline()
    timeline.add(0, 4, 10.0, 14.0)  # steps 0-3 from t=10 to 14
    timeline.add(4, 2, 20.0, 22.0)  # steps 4-5 from t=20 to 22, after host work
    assert timeline.seconds(0, 4) == 4.0
    assert timeline.seconds(2, 5) == 21.0 - 12.0
    assert timeline.seconds(4, 6) == 2.0


LLAMA3 = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)


@pytest.mark.parametrize(
    "family, tied, rope", [("qwen2", False, None), ("qwen3", True, None), ("llama", False, LLAMA3)]
)
def test_greedy_through_the_slots_equals_transformers(family, tied, rope, tmp_path):
    hf = write_tiny_hf(tmp_path, family, tie_word_embeddings=tied, rope=rope)
    model, _, _ = jaxthink.load(tmp_path, tokenizer=False)
    key = prompt_key(0, 0)
    requests = [
        engine.Request(prompt=p, key=key, mode=(2, 0, 2**30, 0, 0), max_new_tokens=n)
        for p, n in zip(PROMPTS, (24, 8, 16), strict=True)
    ]
    out = engine.Engine(model, 0).run(requests, plain_tokens(512), slots=2)
    got = {s.request: s.tokens.tolist() for s in out}
    for r, p in enumerate(PROMPTS):
        want = hf_greedy(hf, [p], requests[r].max_new_tokens)[0].tolist()
        assert got[r] == want


def test_kv_bytes_per_slot(demo_like):
    cfg = demo_like[0].cfg
    per = engine.kv_bytes_per_slot(cfg, 100, np.float32)
    assert per == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 100 * 4


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(slots=0), "slots=0: the number of decode slots must be an integer >= 1"),
        (dict(temperature=-1.0), r"temperature=-1.0: must be a finite number >= 0"),
        (dict(top_p=0.0), r"top_p=0.0: must be in \(0, 1\]"),
        (dict(top_p=2.0), r"top_p=2.0: must be in \(0, 1\]"),
        (dict(top_k=-5), r"top_k=-5: must be an integer >= 0"),
    ],
)
def test_bad_settings_are_refused_before_compiling(demo_like, kw, message):
    model, tokenizer = demo_like
    before = dict(sampler.TRACE_COUNT)
    with pytest.raises(ValueError, match=message):
        jaxthink.generate(model, tokenizer, QUESTIONS[:1], "think", **kw)
    assert before == sampler.TRACE_COUNT


def test_unknown_settings_are_named(demo_like):
    with pytest.raises(TypeError, match=r"unknown generate settings \['temprature'\]"):
        jaxthink.generate(*demo_like, QUESTIONS[:1], "think", temprature=0.5)


def test_bench_slots_prints_a_row_per_workload_with_the_same_tokens(capsys):
    bench_slots.main(["--workload", "demo", "--requests", "7", "--slots", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| demo")]
    assert len(rows) == 1 and "| 7 of 7 |" in rows[0]  # static and engine emit the same tokens


def test_bench_device_prints_decode_rows_against_the_roofline_and_the_slots_row(capsys):
    """The device bench's tables on a tiny float32 model (on a GPU it runs a 1.5B one)."""
    bench_device.main(
        ["--shape", "tiny", "--dtype", "float32", "--batch", "2", "--new-tokens", "4"]
        + ["--prompt-len", "8", "--requests", "6", "--slots", "2", "--repeats", "1"]
    )
    lines = capsys.readouterr().out.splitlines()
    decode = [line.split(" | ") for line in lines if line.startswith("| 2 |")]
    assert [row[1] for row in decode] == ["greedy", "T=0.6 top-p 0.95"]
    assert all(float(row[4]) > 0 for row in decode)  # the roofline's ms
    (slots,) = [line for line in lines if line.startswith("| skewed")]
    assert "| 6 of 6 |" in slots


@pytest.mark.parametrize("tied", [True, False])
def test_step_bytes_count_the_weights_read_and_the_caches(tied):
    """A step reads every weight but an untied input embedding, of which only `batch` rows."""
    from jaxthink.models import ModelConfig, Qwen

    hf = {**SHAPES["tiny"], "architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": tied}
    cfg = ModelConfig.from_hf({**hf, "max_position_embeddings": 64})
    model = Qwen(cfg, rngs=nnx.Rngs(0))
    weights = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    unread = 0 if tied else (cfg.vocab_size - 3) * cfg.hidden_size
    kv = engine.kv_bytes_per_slot(cfg, 10, jnp.float32)
    assert bench_device.step_bytes(model, 3, 10) == 4 * (weights - unread) + 3 * kv


def test_skewed_lengths_have_a_median_of_an_eighth_of_the_longest():
    lengths = skewed_lengths(4000, 256)
    assert max(lengths) == 256 and 28 <= np.median(lengths) <= 36


def test_the_batch_one_layout_is_kept_until_the_weights_change(demo_like):
    """At one slot on CPU the loop runs on a copy of the weights laid out [out, in]: made once
    and reused while the model holds the same arrays, made again after an update."""
    model = demo_like[0]
    first = engine.Engine(model).decoding(1)
    assert engine.Engine(model).decoding(1) is first
    old = jax.tree.leaves(nnx.state(model))  # the arrays themselves, before the update
    before = jax.tree.map(lambda x: x, nnx.state(model))
    nnx.update(model, jax.tree.map(lambda x: x + 1.0, before))  # new arrays
    try:
        again = engine.Engine(model).decoding(1)
        assert again is not first
        assert not any(a is b for a in old for b in jax.tree.leaves(again[1]))  # all new
    finally:
        nnx.update(model, before)  # the fixture's weights back for the other tests


def test_compilation_is_counted_apart_from_the_samples_time(demo_like):
    """A first run compiles: its time is in stats.compile_seconds and not in the samples'
    seconds; a second run of the same shapes compiles nothing."""
    model, tokenizer = demo_like
    jax.clear_caches()
    t0 = time.perf_counter()
    first = jaxthink.generate(model, tokenizer, ["12+7", "23*47"], "think", max_new_tokens=16)
    wall = time.perf_counter() - t0
    assert first.stats.compile_seconds > 0.1
    assert max(first.seconds) <= wall - first.stats.compile_seconds
    again = jaxthink.generate(model, tokenizer, ["12+7", "23*47"], "think", max_new_tokens=16)
    assert again.stats.compile_seconds < first.stats.compile_seconds / 4
