"""Hybrid decoding: the slot engine's hybrid step reproduces the uncached published algorithm
token for token (one-position window, every ablation, early ends, any slot count), the per-token
choice rule, the front end."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxthink
from jaxthink.decode import engine, sampler
from jaxthink.hybrid.decoding import choose, hybrid_generate, run_hybrid
from jaxthink.hybrid.reference import hybrid_reference
from jaxthink.hybrid.sae import init_sae
from jaxthink.hybrid.vectors import SteeringVectors, load_steering, save_steering
from jaxthink.models import Qwen
from tests.char_models import char_model

COEFFICIENTS = (0.25, 0.5, 1.0, 2.0)
QUESTIONS = ("12+9", "345*7", "9")
NEW = 16


@pytest.fixture(scope="module")
def pair():
    """A thinking model and a base model (different seeds: they disagree on most tokens)."""
    thinking, tokenizer = char_model(seed=0)
    base, _ = char_model(seed=1)
    return thinking, base, tokenizer


def random_steering(e=64, n=5, seed=0, layer=1, sae_layer=2):
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    sae = init_sae(rng, n, e)._replace(b_enc=jnp.asarray(rng.normal(size=n), jnp.float32))
    return SteeringVectors(
        layer=layer,
        bias=(2.0 * unit(rng.normal(size=e))).astype(np.float32),
        vectors=(4.0 * unit(rng.normal(size=(n, e)))).astype(np.float32),
        sae=sae,
        sae_mean=(0.1 * rng.normal(size=e)).astype(np.float32),
        sae_layer=sae_layer,
    )


def prompts(tokenizer, opening="<think>"):
    return [tokenizer.encode(f"Q: {q}\nA:{opening}") for q in QUESTIONS]


@pytest.mark.parametrize("ablation", ["none", "bias_only", "random_latent"])
def test_cached_hybrid_equals_the_uncached_algorithm(pair, ablation):
    thinking, base, tokenizer = pair
    steering = random_steering()
    rows = prompts(tokenizer)
    keys = [jax.random.fold_in(jax.random.key(7), r) for r in range(len(rows))]
    out = run_hybrid(
        thinking,
        base,
        rows,
        rows,
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(1,),
        ablation=ablation,
        keys=keys,
    )
    chosen, steered = set(), []
    for row, sample, key in zip(rows, out, keys, strict=True):
        ref = hybrid_reference(
            thinking,
            base,
            row,
            row,
            steering,
            coefficients=COEFFICIENTS,
            max_new_tokens=NEW,
            eos_ids=(1,),
            ablation=ablation,
            key=jax.random.fold_in(key, 0),  # its sample 0
        )
        assert sample.tokens.tolist() == ref.tokens
        assert sample.steered.tolist() == ref.steered
        assert sample.latents.tolist() == ref.latents
        assert sample.coefficients.tolist() == ref.coefficients
        chosen |= set(ref.coefficients)
        steered += ref.steered
    assert any(steered) and not all(steered)  # both branches of the rule ran
    assert len(chosen - {-1}) > 1  # different coefficients won: the steering mattered


@pytest.mark.parametrize("slots", [1, 2])
def test_samples_do_not_depend_on_the_slots(pair, slots):
    """Fewer slots than prompts: rows queue, start and end at different steps, and each still
    gets the tokens (and random-latent draws) it gets with a slot per prompt."""
    thinking, base, tokenizer = pair
    rows = prompts(tokenizer)
    rows = rows + [rows[0][:-3] + rows[0][-1:]]  # a fourth, shorter prompt
    run = lambda n, ablation: run_hybrid(
        thinking,
        base,
        rows,
        rows,
        random_steering(seed=3),
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(1,),
        ablation=ablation,
        slots=n,
    )
    for ablation in ("none", "random_latent"):
        alone, queued = run(len(rows), ablation), run(slots, ablation)
        for a, q in zip(alone, queued, strict=True):
            assert q.tokens.tolist() == a.tokens.tolist()
            assert q.latents.tolist() == a.latents.tolist()
            assert q.coefficients.tolist() == a.coefficients.tolist()


def test_rows_end_at_their_own_eos_like_the_reference(pair):
    thinking, base, tokenizer = pair
    steering = random_steering(seed=1)
    rows = prompts(tokenizer)
    first = run_hybrid(
        thinking,
        base,
        rows,
        rows,
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(1,),
    )
    eos = int(first[0].tokens[5])  # a token row 0 emits at step 5 now ends it there
    out = run_hybrid(
        thinking,
        base,
        rows,
        rows,
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(eos,),
    )
    for r, row in enumerate(rows):
        ref = hybrid_reference(
            thinking,
            base,
            row,
            row,
            steering,
            coefficients=COEFFICIENTS,
            max_new_tokens=NEW,
            eos_ids=(eos,),
        )
        assert out[r].tokens.tolist() == ref.tokens
    assert len(out[0].tokens) <= 6 and out[0].tokens[-1] == eos


def test_new_coefficient_values_and_ablations_reuse_the_compiled_loop(pair):
    thinking, base, tokenizer = pair
    rows = prompts(tokenizer)
    run = lambda coefficients, ablation: run_hybrid(
        thinking,
        base,
        rows,
        rows,
        random_steering(seed=2),
        coefficients=coefficients,
        max_new_tokens=NEW,
        eos_ids=(1,),
        ablation=ablation,
    )
    run(COEFFICIENTS, "none")
    before = dict(sampler.TRACE_COUNT)
    run((0.1, 0.3, 3.0, 9.0), "random_latent")
    run(COEFFICIENTS, "bias_only")
    assert dict(sampler.TRACE_COUNT) == before


def test_choice_rule():
    logp = jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.2, 0.4, 0.4], [0.5, 0.3, 0.2]]))
    base_greedy = jnp.array([0, 0, 2])
    steered = jnp.array([True, True, False])  # row 2: the two models agreed
    candidates = jnp.array([[2, 1, 0], [2, 1, 2], [1, 1, 1]])
    token, coefficient = choose(base_greedy, steered, candidates, logp)
    # Row 0: candidate 1 (p 0.6); row 1: tokens 2 and 1 tie at 0.4, the first wins; row 2: base.
    assert token.tolist() == [1, 2, 2]
    assert coefficient.tolist() == [1, 0, -1]


def test_generate_front_end(pair, tmp_path):
    thinking, base, tokenizer = pair
    path = save_steering(tmp_path / "steering.npz", random_steering())
    steering = load_steering(path)
    np.testing.assert_array_equal(steering.vectors, random_steering().vectors)
    out = hybrid_generate(
        thinking,
        base,
        tokenizer,
        list(QUESTIONS),
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
    )
    assert [g.prompt for g in out] == list(QUESTIONS)
    # The thinking model's prompt opens the thinking block; the base model's is its plain one.
    rows, base_rows = prompts(tokenizer), prompts(tokenizer, opening="")
    keys = [jax.random.fold_in(jax.random.key(0), r) for r in range(len(rows))]  # seed 0's
    samples = run_hybrid(
        thinking,
        base,
        rows,
        base_rows,
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(1,),
        keys=keys,
    )
    for sample, g in zip(samples, out, strict=True):
        assert g.token_ids == sample.tokens.tolist()
        assert g.mode == "hybrid" and g.num_tokens == len(g.token_ids) == len(g.latents)
        assert g.steered_fraction == g.steered_tokens / g.num_tokens
        assert g.steered_tokens == sum(c is not None for c in g.coefficients)
        assert set(g.coefficients) <= {None, *COEFFICIENTS}
        assert g.text == tokenizer.decode(
            g.token_ids[:-1] if g.finish_reason == "eos" else g.token_ids
        )


def spy_layouts(monkeypatch) -> list:
    """Records (thinking, base) `out_in` of the weights every compiled-loop call runs on."""
    layouts, run_steps = [], engine.run_steps

    def spy(graphdef, params, *args):
        steer = args[7]  # after state, tok, pad_id, max_steps, until_one_ends, head, mesh
        out_in = lambda d, p: nnx.merge(d, p).layers[0].mlp.out_in
        layouts.append((out_in(graphdef, params), out_in(steer.base_def, steer.base_params)))
        return run_steps(graphdef, params, *args)

    monkeypatch.setattr(engine, "run_steps", spy)
    return layouts


def test_one_slot_runs_the_thinking_model_on_its_decoding_layout(pair, monkeypatch):
    """With one slot the loop runs the thinking model on `for_decoding`'s [out, in] weights and
    the base model on its own (its candidates pass has a row per coefficient), and still gives
    the uncached algorithm's tokens."""
    thinking, base, tokenizer = pair
    layouts = spy_layouts(monkeypatch)
    steering, row = random_steering(), prompts(tokenizer)[1]
    (sample,) = run_hybrid(
        thinking,
        base,
        [row],
        [row],
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(1,),
    )
    ref = hybrid_reference(
        thinking,
        base,
        row,
        row,
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        eos_ids=(1,),
        key=jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0),
    )
    assert layouts and set(layouts) == {(True, False)}
    assert sample.tokens.tolist() == ref.tokens
    assert sample.coefficients.tolist() == ref.coefficients
    assert len(set(ref.coefficients) - {-1}) > 1  # the candidates pass ran and mattered


def test_generate_through_one_slot_equals_a_slot_per_prompt(pair, monkeypatch):
    thinking, base, tokenizer = pair
    steering = random_steering()
    run = lambda slots: hybrid_generate(
        thinking,
        base,
        tokenizer,
        list(QUESTIONS),
        steering,
        coefficients=COEFFICIENTS,
        max_new_tokens=NEW,
        slots=slots,
        ablation="random_latent",
    )
    together = run(None)
    layouts = spy_layouts(monkeypatch)
    alone = run(1)
    assert set(layouts) == {(True, False)}
    assert [g.token_ids for g in alone] == [g.token_ids for g in together]
    assert [g.latents for g in alone] == [g.latents for g in together]


def test_mismatched_models_and_files_are_refused(pair):
    thinking, base, tokenizer = pair
    shaped = lambda **kw: nnx.eval_shape(  # the checks read configs only: no weights needed
        lambda: Qwen(dataclasses.replace(base.cfg, **kw), rngs=nnx.Rngs(0))
    )
    other = shaped(hidden_size=32, intermediate_size=64, num_layers=2)
    call = lambda base_model, steering, **kw: hybrid_generate(
        thinking, base_model, tokenizer, "1+1", steering, max_new_tokens=4, **kw
    )
    with pytest.raises(ValueError, match="steering layer 2: the base model has blocks 0..1"):
        call(other, random_steering(layer=2))
    with pytest.raises(ValueError, match="steering vectors have width 64 but the base model's"):
        call(other, random_steering(layer=0))
    wider = shaped(vocab_size=120)
    with pytest.raises(ValueError, match="vocabulary has 102 entries and the base model's 120"):
        call(wider, random_steering())
    with pytest.raises(ValueError, match="ablation 'random'; accepted: none, bias_only"):
        call(base, random_steering(), ablation="random")
    with pytest.raises(ValueError, match="coefficients: give at least one"):
        call(base, random_steering(), coefficients=())


def test_coefficient_zero_is_the_base_model_alone(pair):
    """With the one coefficient 0 every candidate is the base model's unsteered greedy token, so
    the hybrid writes what the base model writes prompted alone (mode plain): the control run."""
    thinking, base, tokenizer = pair
    out = hybrid_generate(
        thinking,
        base,
        tokenizer,
        list(QUESTIONS),
        random_steering(),
        coefficients=(0.0,),
        max_new_tokens=NEW,
    )
    alone = jaxthink.generate(base, tokenizer, list(QUESTIONS), "plain", max_new_tokens=NEW)
    assert [g.token_ids for g in out] == [g.token_ids for g in alone]
    assert any(g.steered_tokens for g in out)  # the models did disagree
