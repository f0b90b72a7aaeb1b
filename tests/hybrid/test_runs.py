"""Steering-vector training and the two stages behind `python -m train sae|steer`: example rows,
the objective, training, selection by perplexity, difference of means, sentence activations, and
the stages end to end into `python -m infer --mode hybrid`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.cli import main as infer_main
from jaxthink.data.arithmetic import generate_problems
from jaxthink.hybrid.activations import Trace, sentence_activations, tokenize_trace, trace_sentences
from jaxthink.hybrid.sentences import sentence_vectors
from jaxthink.hybrid.train_vectors import (
    VectorTraining,
    example,
    hardest,
    mean_difference,
    pack,
    perplexities,
    row_losses,
    train_vector,
)
from jaxthink.hybrid.vectors import load_steering
from jaxthink.models import Steering, forward
from tests.char_models import char_checkpoint, char_model
from train.__main__ import main as train_main


@pytest.fixture(scope="module")
def base():
    return char_model(seed=1)


def random_examples(n, vocab, seed=0, target=None):
    """Random contexts, each followed by 4 random target tokens (or by `target` in every row)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(8, 20))
        ids = rng.integers(7, vocab, length).tolist()
        if target is not None:
            ids[-4:] = target
        out.append(example(ids, length - 4, length, max_len=64))
    return out


def test_example_rows_mark_the_positions_that_predict_the_target():
    ids = list(range(10, 20))
    e = example(ids, 4, 7, max_len=100)
    assert (e.ids, e.start, e.end) == (ids[:7], 4, 7)
    batch = pack([e])
    assert batch["tokens"].shape == (1, 64) and batch["valid"][0].sum() == 7
    assert np.flatnonzero(batch["target"][0]).tolist() == [3, 4, 5]  # they predict ids[4:7]
    cut = example(ids, 4, 7, max_len=5)  # the context loses its oldest tokens
    assert (cut.ids, cut.start, cut.end) == (ids[2:7], 2, 5)
    with pytest.raises(ValueError, match="does not fit max_len=3"):
        example(ids, 4, 7, max_len=3)


def test_objective_is_the_scaled_cross_entropy_of_the_target_when_steered(base):
    model, _ = base
    batch = pack(random_examples(3, model.cfg.vocab_size))
    vector = jnp.asarray(np.random.default_rng(1).normal(size=model.cfg.hidden_size), jnp.float32)
    losses = jax.jit(row_losses, static_argnums=(3, 4))
    got = np.asarray(losses(model, vector, batch, 1, 0.7))
    logits = jax.jit(forward)(
        model, batch["tokens"], batch["valid"], steer=Steering(vector, batch["target"], 1)
    )
    logp = np.asarray(jax.nn.log_softmax(0.7 * np.asarray(logits, np.float64), axis=-1))
    for r in range(3):
        positions = np.flatnonzero(batch["target"][r])
        nll = [-logp[r, p, batch["tokens"][r, p + 1]] for p in positions]
        assert got[r] == pytest.approx(np.mean(nll), rel=1e-5)
    plain = np.asarray(losses(model, jnp.zeros_like(vector), batch, 1, 1.0))
    np.testing.assert_allclose(np.exp(plain), perplexities(model, pack_rows(batch)), rtol=1e-5)


def pack_rows(batch):
    """The examples of a packed batch again (for `perplexities`, which packs its own)."""
    rows = []
    for r in range(batch["tokens"].shape[0]):
        n = int(batch["valid"][r].sum())
        positions = np.flatnonzero(batch["target"][r])
        rows.append(example(batch["tokens"][r, :n].tolist(), positions[0] + 1, n, 64))
    return rows


def test_training_lowers_the_loss_with_the_fixed_vector_alongside(base):
    model, _ = base
    examples = random_examples(10, model.cfg.vocab_size, seed=2, target=[60, 61, 62, 63])
    config = VectorTraining(lr=0.1, max_epochs=6, patience=6, batch_size=4, val_fraction=0.2)
    fixed = np.full(model.cfg.hidden_size, 0.5, np.float32)
    vector, history = train_vector(model, examples, 1, config, fixed=fixed)
    assert (history["n_train"], history["n_val"], history["epochs"]) == (8, 2, 6)
    assert history["best_loss"] < history["initial_loss"] - 0.5  # one target, learnable
    assert history["norm"] == pytest.approx(float(np.linalg.norm(vector)), rel=1e-5)
    assert history["best_loss"] == min(history["val_loss"])
    with pytest.raises(ValueError, match="no examples"):
        train_vector(model, [], 1, config)


def test_selection_keeps_the_highest_perplexity_examples(base):
    model, _ = base
    examples = random_examples(6, model.cfg.vocab_size, seed=3)
    ppl = perplexities(model, examples, batch_size=4)
    top = set(np.argsort(-ppl)[:2].tolist())
    assert hardest(model, examples, 2, batch_size=4) == [examples[i] for i in sorted(top)]
    assert hardest(model, examples, 10) == examples


def test_difference_of_means():
    vectors = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 0.0]], np.float32)
    clusters = np.array([0, 0, 1, 1])
    got = mean_difference(vectors, clusters, 3)
    overall = vectors.mean(axis=0)
    np.testing.assert_allclose(got, [[2.0, 0.0] - overall, [0.0, 2.0] - overall, [0.0, 0.0]])


def test_sentence_activations_equal_one_trace_at_a_time(base):
    model, tokenizer = base
    records = generate_problems(5, [1, 3, 4], seed=1)
    traces = [Trace(f"Q: {r['question']}\nA:<think>", r["think"]) for r in records]
    sentences = trace_sentences(traces, min_words=1)
    got = sentence_activations(model, tokenizer, traces, sentences, [0, 2], batch_size=2)
    alone = jax.jit(lambda m, ids, valid: forward(m, ids, valid, capture_layer=2)[1])
    for t, trace in enumerate(traces):
        rows = [j for j, s in enumerate(sentences) if s.trace == t]
        tok = tokenize_trace(tokenizer, trace, [sentences[j] for j in rows])
        ids, valid = np.zeros((1, 256), np.int32), np.zeros((1, 256), bool)
        ids[0, : len(tok.ids)], valid[0, : len(tok.ids)] = tok.ids, True  # one trace per call
        expected = sentence_vectors(alone(model, ids, valid)[0, : len(tok.ids)], tok.spans)
        np.testing.assert_allclose(got[2][rows], expected, atol=1e-5)
        assert tokenizer.decode(tok.ids[tok.thinking_start :]) == trace.thinking


def test_stages_end_to_end_into_the_hybrid_cli(tmp_path, capsys):
    thinking = char_checkpoint(tmp_path / "thinking", seed=0)
    base_dir = char_checkpoint(tmp_path / "base", seed=1)
    traces = tmp_path / "traces.jsonl"
    with traces.open("w") as f:
        for r in generate_problems(12, [2, 3, 4], seed=0):
            f.write(json.dumps({"question": r["question"], "think": r["think"]}) + "\n")
    sae_run = tmp_path / "sae"
    train_main(
        [
            "sae",
            f"model={thinking}",
            f"traces={traces}",
            "layers=2",
            "latents=3",
            "min_words=1",
            "sae.max_epochs=5",
            f"run_dir={sae_run}",
        ]
    )
    summary = json.loads((sae_run / "summary.json").read_text())
    assert [(r["layer"], r["n_latents"]) for r in summary["grid"]] == [(2, 3)]
    assert (sae_run / "layer2" / "n3" / "taxonomy.md").read_text().startswith("# Reasoning")
    sae_file = sae_run / "layer2" / "n3" / "sae.npz"
    written = sae_file.stat().st_mtime_ns
    capsys.readouterr()
    train_main(
        [
            "sae",
            f"model={thinking}",
            f"traces={traces}",
            "layers=2",
            "latents=3,4",
            "min_words=1",
            "sae.max_epochs=5",
            f"run_dir={sae_run}",
            "on_change=resume",
        ]
    )
    assert "resumed: 12 traces" in capsys.readouterr().out  # the grid grew: only n=4 trains
    assert sae_file.stat().st_mtime_ns == written
    again = json.loads((sae_run / "summary.json").read_text())
    assert again["grid"][0] == summary["grid"][0] and again["grid"][1]["n_latents"] == 4
    with pytest.raises(SystemExit):  # another grid without on_change: refused
        train_main(
            [
                "sae",
                f"model={thinking}",
                f"traces={traces}",
                "layers=2",
                "latents=3",
                "min_words=1",
                "sae.max_epochs=5",
                f"run_dir={sae_run}",
            ]
        )
    assert "latents: [3, 4] -> [3]" in capsys.readouterr().err
    train_main(
        [
            "sae",
            f"model={thinking}",
            f"traces={traces}",
            "layers=2",
            "latents=3",
            "min_words=1",
            "sae.max_epochs=5",
            f"run_dir={sae_run}",
            "on_change=restart",
        ]
    )
    assert not (sae_run / "layer2" / "n4").exists()  # starting over removed the grid's SAEs
    assert "resumed" not in capsys.readouterr().out
    steer = [
        "steer",
        f"model={base_dir}",
        f"sae_run={sae_run}",
        "sae_layer=2",
        "latents=3",
        "layer=1",
    ]
    train_main(steer + ["method=mean_diff", f"run_dir={tmp_path / 'mean_diff'}"])
    assert load_steering(tmp_path / "mean_diff" / "steering.npz").norms["bias"] == 0.0
    train_main(
        steer
        + [
            "training.max_epochs=1",
            "max_examples=3",
            "bias_examples=3",
            "training.batch_size=4",
            f"run_dir={tmp_path / 'optimized'}",
        ]
    )
    path = tmp_path / "optimized" / "steering.npz"
    steering = load_steering(path)
    capsys.readouterr()
    train_main(
        steer
        + [
            "training.max_epochs=1",
            "max_examples=3",
            "bias_examples=3",
            "training.batch_size=4",
            f"run_dir={tmp_path / 'optimized'}",
        ]
    )
    assert "resumed: the bias and 3 vectors" in capsys.readouterr().out  # nothing retrained
    np.testing.assert_array_equal(load_steering(path).vectors, steering.vectors)
    report = json.loads((tmp_path / "optimized" / "report.json").read_text())
    assert (steering.layer, steering.sae_layer, steering.n_latents) == (1, 2, 3)
    assert report["norms"]["bias"] == pytest.approx(float(np.linalg.norm(steering.bias)))
    assert report["bias"]["examples"] == 3
    capsys.readouterr()
    infer_main(
        [
            "--mode",
            "hybrid",
            "--model",
            str(thinking),
            "--base-model",
            str(base_dir),
            "--steering",
            str(path),
            "--prompt",
            "12+9",
            "--max-new-tokens",
            "6",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "hybrid" and out["num_tokens"] <= 6
    assert out["steered_fraction"] == out["steered_tokens"] / out["num_tokens"]
