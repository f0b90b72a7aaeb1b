"""Mode policies end to end on a tiny model with the demo tokenizer, and the policy step alone."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import jaxthink
from jaxthink.data.char_tokenizer import END_THINK, EOS, SHORT, THINK, VOCAB
from jaxthink.decode import sampler
from jaxthink.decode.generate import policy_tokens, prepare
from jaxthink.models import ModelConfig, forward
from jaxthink.policies import ModeError, ModeOptions, parse_mode, parse_modes
from jaxthink.policies import policy as pol
from jaxthink.policies.modes import FREE, NO_BUDGET
from jaxthink.policies.modes import THINK as THINKING
from tests.hf_models import write_char_checkpoint

QUESTIONS = ["12+7", "4821+967", "347*26"]
PREFIX = [VOCAB[c] for c in "\n\nFinal Answer:"]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    path = tmp_path_factory.mktemp("char")
    write_char_checkpoint(path, seed=6)  # a seed whose free thinking runs long on QUESTIONS
    model, tokenizer, _ = jaxthink.load(path)
    return model, tokenizer


def gen(demo_like, mode, questions=QUESTIONS, **kw):
    model, tokenizer = demo_like
    kw.setdefault("max_new_tokens", 40)
    return jaxthink.generate(model, tokenizer, questions, mode, **kw)


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, name, value",
    [
        ("think", "think", None),
        ("think_budget=512", "think_budget", 512),
        ("thinkless=64", "thinkless", 64),
        ("extend=2", "extend", 2),
        (" no_think ", "no_think", None),
    ],
)
def test_parse_mode(text, name, value):
    mode = parse_mode(text)
    assert (mode.name, mode.value) == (name, value)
    assert str(mode) == text.strip()


def test_a_comma_list_is_a_sweep():
    assert [m.value for m in parse_modes("think_budget=128,256,512")] == [128, 256, 512]


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus", "unknown mode 'bogus'"),
        ("think_budget", "needs a value: think_budget=N"),
        ("think_budget=0", "positive integer"),
        ("think_budget=-3", "positive integer"),
        ("think_budget=ab", "'ab' is not an integer"),
        ("no_think=3", "takes no value"),
    ],
)
def test_bad_mode_strings_are_refused_with_the_list_of_modes(text, message):
    with pytest.raises(ModeError, match=message) as err:
        parse_mode(text)
    if "positive" not in message and "integer" not in message:
        assert "think_budget=N" in str(err.value) and "thinkless" in str(err.value)


# ----------------------------------------------------------------------------- end to end


def test_think_budget_forces_end_of_thinking_and_answer_prefix(demo_like):
    free = gen(demo_like, "think")
    for budget in (3, 7):
        for g, f in zip(gen(demo_like, f"think_budget={budget}"), free, strict=True):
            # The free run thinks past the budget, so the forced run must cut it there.
            assert f.token_ids[0] == VOCAB[THINK] and f.num_thinking_tokens > budget
            expected = f.token_ids[: 1 + budget] + [VOCAB[END_THINK]] + PREFIX
            assert g.token_ids[: len(expected)] == expected
            assert g.num_thinking_tokens == budget and g.budget_forced
            assert g.answer.startswith("\n\nFinal Answer:")


def test_finish_line_lets_the_line_end_within_ten_percent(demo_like):
    budget, grace = 20, 2
    free = gen(demo_like, "think", max_new_tokens=60)
    opts = ModeOptions(finish_line=True)
    for g, f in zip(gen(demo_like, "think_budget=20", options=opts, max_new_tokens=60), free):
        thought = f.token_ids[1:]
        newline = lambda t: "\n" in [k for k, v in VOCAB.items() if v == t][0]
        stop = next(
            c
            for c in range(budget, budget + grace + 1)
            if c == budget + grace or newline(thought[c - 1])
        )
        assert g.num_thinking_tokens == stop <= budget + grace
        assert g.token_ids[: stop + 2] == f.token_ids[: stop + 1] + [VOCAB[END_THINK]]


def test_no_think_prefills_a_finished_thinking_block(demo_like):
    model, tokenizer = demo_like

    req = prepare(tokenizer, QUESTIONS[:1], "no_think", ModeOptions(), chat=True)
    assert req.prompts[0] == "Q: 12+7\nA:<think>\nOkay, I think I have finished thinking.\n</think>"
    for g in gen(demo_like, "no_think"):
        assert g.num_thinking_tokens == 0 and g.chosen_mode == "short" and g.thinking == ""


def test_thinkless_lets_the_model_pick_a_control_token(demo_like):
    model, tokenizer = demo_like
    for q, g in zip(QUESTIONS, gen(demo_like, "thinkless"), strict=True):
        ids = tokenizer.encode(jaxthink.tokenizer.format_prompt(tokenizer, q))
        logits = np.asarray(jaxthink.forward(model, np.array([ids]), np.ones((1, len(ids)), bool)))
        short, think = logits[0, -1, VOCAB[SHORT]], logits[0, -1, VOCAB[THINK]]
        assert g.token_ids[0] == (VOCAB[SHORT] if short > think else VOCAB[THINK])
        assert g.chosen_mode == ("short" if short > think else "think")


@pytest.mark.parametrize(
    "mode, first, chosen", [("short", SHORT, "short"), ("think_forced", THINK, "think")]
)
def test_forced_control_tokens(demo_like, mode, first, chosen):
    for g in gen(demo_like, mode):
        assert g.token_ids[0] == VOCAB[first] and g.chosen_mode == chosen


def test_mixed_mode_batch_equals_rows_run_alone(demo_like):
    modes = ["think_budget=5", "no_think", "thinkless", "short", "extend=1", "think_forced=4"]
    questions = [QUESTIONS[i % 3] for i in range(len(modes))]
    mixed = gen(demo_like, modes, questions)
    for q, m, g in zip(questions, modes, mixed, strict=True):
        alone = gen(demo_like, m, [q])[0]
        assert (g.token_ids, g.mode, g.num_thinking_tokens) == (
            alone.token_ids,
            alone.mode,
            alone.num_thinking_tokens,
        )


def test_changing_only_mode_numbers_does_not_recompile(demo_like):
    gen(demo_like, "think_budget=5")
    before = dict(sampler.TRACE_COUNT)
    gen(demo_like, "think_budget=9")
    gen(demo_like, ["extend=2", "thinkless=3", "no_think"])
    gen(demo_like, "short", temperature=0.7, top_p=0.9, top_k=5, seed=3)
    assert before == sampler.TRACE_COUNT


# ----------------------------------------------------------------------------- bad input


def test_think_modes_need_thinking_delimiters(tmp_path):
    vocab = {"<pad>": 0, "<eos>": 1, "a": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token="<pad>")
    with pytest.raises(ModeError, match="needs the tokens <think> and </think>"):
        jaxthink.generate(None, hf, ["a"], "think_budget=4", chat=False)


def test_thinkless_needs_short_token(qwen_r1_tokenizer):
    before = dict(sampler.TRACE_COUNT)
    with pytest.raises(ModeError, match="<short>"):
        jaxthink.generate(None, qwen_r1_tokenizer, ["1+1"], "thinkless")
    assert before == sampler.TRACE_COUNT  # refused before any compilation


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n=0), "at least 1"),
        (dict(max_new_tokens=0), "at least 1"),
        (dict(max_new_tokens=250), "does not fit the model's context of 256"),
    ],
)
def test_bad_requests_are_refused_before_compiling(demo_like, kw, message):
    before = dict(sampler.TRACE_COUNT)
    with pytest.raises(ValueError, match=message):
        gen(demo_like, "think", **kw)
    assert before == sampler.TRACE_COUNT


# ----------------------------------------------------------------------------- the step alone


def scripted_run(sampled, budget=NO_BUDGET, grace=0, extend=0, wait=(90, 91)):
    """Feeds a fixed sequence of 'sampled' tokens through the policy of one thinking row."""
    tokenizer_tokens = pol.PolicyTokens(
        think=jnp.int32(3),
        end_think=jnp.int32(4),
        short=jnp.int32(5),
        end_seq=jnp.array([4, 80, 81], jnp.int32),
        wait_seq=jnp.array(list(wait) + [-1], jnp.int32),
        newline=jnp.zeros(102, bool).at[6].set(True),
        eos=jnp.zeros(102, bool).at[1].set(True),
        stop=jnp.zeros(102, bool),
    )
    one = lambda v: jnp.array([v], jnp.int32)
    params = pol.PolicyParams(one(THINKING), one(FREE), one(budget), one(grace), one(extend))
    state = pol.init_state(params, 3)
    out = []
    for s in sampled:
        token, state = pol.step(one(s), state, params, tokenizer_tokens, jnp.array([True]))
        out.append(int(token[0]))
    return out, state


def test_extend_replaces_the_end_of_thinking_with_wait_k_times():
    out, state = scripted_run([10, 4, 11, 12, 4, 13, 4, 20], extend=2)
    assert out == [10, 90, 91, 12, 90, 91, 4, 20]
    assert int(state.extend_left[0]) == 0 and int(state.phase[0]) == 2


def test_budget_with_grace_waits_for_a_newline():
    out, state = scripted_run([10, 11, 12, 6, 13, 14, 15, 16], budget=2, grace=3)
    assert out == [10, 11, 12, 6, 4, 80, 81, 16]  # line ended at the 4th thinking token
    assert int(state.think_count[0]) == 4
    out, _ = scripted_run([10, 11, 12, 13, 14, 15, 16, 17], budget=2, grace=3)
    assert out == [10, 11, 12, 13, 14, 4, 80, 81]  # no newline: forced at budget + grace


def test_eos_tokens_count_as_neither_thinking_nor_answer():
    _, state = scripted_run([10, 4, 20, 21, 1])
    assert (int(state.think_count[0]), int(state.answer_count[0])) == (1, 2)


def test_policy_tokens_from_the_tokenizer(demo_like):
    _, tokenizer = demo_like
    tok = policy_tokens(tokenizer, ModeOptions(), len(VOCAB))
    assert np.asarray(tok.end_seq).tolist() == [VOCAB[END_THINK]] + PREFIX
    assert np.asarray(tok.wait_seq)[:4].tolist() == [VOCAB[c] for c in "Wait"]
    assert np.asarray(tok.newline).nonzero()[0].tolist() == [VOCAB["\n"]]
    assert np.asarray(tok.eos).nonzero()[0].tolist() == [VOCAB[EOS]]


def test_a_checkpoint_names_its_own_mode_options(tmp_path):
    write_char_checkpoint(tmp_path, seed=6)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mode_options"] = {"answer_prefix": "\\boxed{", "no_think_text": ""}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, tokenizer, cfg = jaxthink.load(tmp_path)
    own = ModeOptions.for_model(cfg)
    assert (own.answer_prefix, own.no_think_text, own.wait_text) == ("\\boxed{", "", "Wait")
    assert ModeOptions.for_model(cfg, answer_prefix=":", wait_text=None).answer_prefix == ":"
    (g,) = jaxthink.generate(model, tokenizer, ["12+7"], "think_budget=3", max_new_tokens=12)
    assert g.budget_forced and g.answer.startswith("\\boxed{")


def test_unknown_checkpoint_mode_options_are_refused():

    cfg = ModelConfig(
        "Qwen2ForCausalLM", 8, 8, 8, 1, 1, 1, 8, 1e4, 1e-6, True, True, False, False, 64
    )
    cfg = dataclasses.replace(cfg, hf_config={"mode_options": {"answer_prefx": ""}})
    with pytest.raises(ModeError, match="answer_prefx.*answer_prefix"):
        ModeOptions.for_model(cfg)


def test_hybrid_parses_like_every_mode_and_generate_names_how_to_run_it(demo_like):
    assert (
        parse_mode("hybrid") == parse_modes("hybrid")[0] and str(parse_mode("hybrid")) == "hybrid"
    )
    before = dict(sampler.TRACE_COUNT)
    with pytest.raises(ModeError, match="--base-model DIR --steering FILE"):
        gen(demo_like, "hybrid")
    assert before == sampler.TRACE_COUNT


# ----------------------------------------------------------------------------- plain, and budgets


def prefers_think(model):
    """The model with its head turned towards `<think>` at every position: a constant component
    along one hidden axis in every token's embedding, which only `<think>`'s head row reads."""
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: x, params)  # a copy
    embed, head = params["embed"][...], params["lm_head"][...]
    params["embed"].set_value(embed.at[:, 0].set(4.0))
    params["lm_head"].set_value(head.at[0, :].set(0.0).at[0, VOCAB[THINK]].set(40.0))
    return nnx.merge(graphdef, params)


def test_thinking_once_ended_stays_ended(demo_like):
    """A model that always prefers `<think>`: budget forcing closes its thinking, and `<think>`
    is masked in the answer that follows (without the mask it re-opened at once)."""
    model, tokenizer = demo_like
    eager = prefers_think(model)
    (free,) = jaxthink.generate(eager, tokenizer, QUESTIONS[:1], "think", max_new_tokens=12)
    assert free.token_ids.count(VOCAB[THINK]) > 6  # it does prefer <think>
    for mode in ("think_budget=3", "no_think"):
        (g,) = jaxthink.generate(eager, tokenizer, QUESTIONS[:1], mode, max_new_tokens=24)
        ids = g.token_ids
        start = ids.index(VOCAB[END_THINK]) + 1 if VOCAB[END_THINK] in ids else 0
        assert len(ids) > start + 4 and VOCAB[THINK] not in ids[start:]
    (plain,) = jaxthink.generate(eager, tokenizer, QUESTIONS[:1], "plain", max_new_tokens=12)
    assert plain.token_ids == greedy_reference(eager, plain.prompt_ids, 12)  # never masked


def greedy_reference(model, prompt_ids: list[int], new: int) -> list[int]:
    """Greedy tokens by full forward passes: nothing forced or masked. Every pass reads the whole
    buffer of prompt + `new` tokens (one compiled shape); causal attention keeps the tokens not
    yet chosen out of the logits read."""
    graphdef, params = nnx.split(model)
    p = len(prompt_ids)
    ids = np.zeros((1, p + new), np.int32)
    ids[0, :p] = prompt_ids
    for t in range(p, p + new):
        ids[0, t] = int(jnp.argmax(_forward_logits(graphdef, params, ids)[0, t - 1]))
    return ids[0, p:].tolist()


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(graphdef, params, ids):
    return forward(nnx.merge(graphdef, params), ids, jnp.ones_like(ids, bool))


def test_plain_forces_and_masks_nothing(demo_like):
    model, tokenizer = demo_like
    out = gen(demo_like, "plain", max_new_tokens=12)
    for g in out:
        assert g.mode == "plain" and not g.budget_forced
        want = greedy_reference(model, g.prompt_ids, 12)
        assert g.token_ids == want[: len(g.token_ids)]
    # thinkless forces a control token first; plain left it to the model
    assert [g.token_ids for g in out] != [g.token_ids for g in gen(demo_like, "thinkless")]


def test_plain_runs_a_tokenizer_without_thinking_delimiters(demo_like):
    model, _ = demo_like
    vocab = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    with pytest.raises(ModeError, match="mode plain runs it as it is"):
        jaxthink.generate(model, hf, ["a b"], "think", chat=False)
    (g,) = jaxthink.generate(model, hf, ["a b"], "plain", chat=False, max_new_tokens=6)
    assert g.num_tokens == len(g.token_ids) > 0 and g.num_thinking_tokens == 0
    assert g.token_ids == greedy_reference(model, [2, 3], 6)[: g.num_tokens]


def test_a_system_prompt_reaches_the_template(demo_like):
    _, tokenizer = demo_like
    plain = prepare(tokenizer, ["1+1"], "plain", ModeOptions(), chat=True)
    with_system = prepare(tokenizer, ["1+1"], "plain", ModeOptions(), True, "Be brief.")
    raw = prepare(tokenizer, ["1+1"], "plain", ModeOptions(), chat=False)
    assert raw.prompts == ["1+1"]
    assert with_system.prompts != plain.prompts
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        prepare(tokenizer, ["1+1", "  "], "plain", ModeOptions(), chat=True)
