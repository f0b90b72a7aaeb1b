"""The taxonomy report: cluster sizes, decile examples, orthogonality, JSON and Markdown."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.hybrid import (
    SAEParams,
    Sentence,
    assign_clusters,
    decoder_orthogonality,
    taxonomy_report,
    write_report,
)

DIM, LATENTS, N = 6, 4, 90


def fixed_sae():
    """Latent j reads and writes the basis direction e_j; latent 3 can never win (a dead latent)."""
    eye = np.eye(LATENTS, DIM, dtype=np.float32)
    eye[3] = np.array([1.0, 1.0, 0, 0, 0, 0]) / np.sqrt(2.0)
    b_enc = np.array([0.0, 0.0, 0.0, -100.0], np.float32)
    return SAEParams(jnp.asarray(eye.T), jnp.asarray(b_enc), jnp.asarray(eye), jnp.zeros(DIM))


def sentence_rows(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % 3
    x = 0.05 * rng.normal(size=(N, DIM)).astype(np.float32)
    x[np.arange(N), labels] += rng.uniform(0.2, 1.0, N)  # activation of the own latent
    texts = [f"sentence {i} of kind {label}" for i, label in enumerate(labels)]
    return jnp.asarray(x), texts


def test_report_sizes_examples_and_orthogonality():
    params = fixed_sae()
    x, texts = sentence_rows()
    report = taxonomy_report(params, x, texts, examples_per_decile=2, max_examples=12)
    clusters = np.asarray(assign_clusters(params, x))
    assert report["n_sentences"] == N and report["n_latents"] == LATENTS and report["k"] == 3
    assert sum(c["size"] for c in report["clusters"]) == N
    assert [c["size"] for c in report["clusters"]] == [30, 30, 30, 0]
    for c in report["clusters"][:3]:
        members = {i for i in range(N) if clusters[i] == c["latent"]}
        examples = c["examples"]
        assert len(examples) == 12
        assert {e["index"] for e in examples} <= members
        assert all(texts[e["index"]] == e["text"] for e in examples)
        assert all(e["text"].endswith(f"kind {c['latent']}") for e in examples)
        assert len({e["index"] for e in examples}) == 12
        # the top deciles come first and every decile is represented
        assert [e["decile"] for e in examples] == sorted(
            (e["decile"] for e in examples), reverse=True
        )
        assert {e["decile"] for e in examples} == set(range(1, 11))
        top = c["top_examples"]
        activations = [float(x[i, c["latent"]]) for i in members]
        assert top[0]["activation"] == pytest.approx(max(activations), rel=1e-5)
        assert c["mean_activation"] == pytest.approx(np.mean(activations), rel=1e-5)
        assert c["title"] is None
    dead = report["clusters"][3]
    assert dead["examples"] == [] and dead["mean_activation"] is None
    ortho = report["orthogonality"]
    assert 0.0 <= ortho["mean_abs_cosine"] <= ortho["max_abs_cosine"] <= 1.0
    assert ortho["max_abs_cosine"] == pytest.approx(1 / np.sqrt(2.0), rel=1e-6)
    assert ortho["mean_abs_cosine"] == pytest.approx(4 / (12 * np.sqrt(2.0)), rel=1e-6)
    assert report["clusters"][0]["nearest_latent"] == 3
    assert 0.0 < report["reconstruction_loss"] < 1.0


def test_examples_are_deterministic_and_spread_over_deciles():
    params = fixed_sae()
    x, texts = sentence_rows()
    a = taxonomy_report(params, x, texts, examples_per_decile=2, max_examples=100)
    b = taxonomy_report(params, x, texts, examples_per_decile=2, max_examples=100)
    assert a == b
    examples = a["clusters"][0]["examples"]
    assert len(examples) == 20  # 30 members: 10 deciles of 3, two from each
    for decile in range(1, 11):
        assert sum(e["decile"] == decile for e in examples) == 2
    activations = [e["activation"] for e in examples]
    assert activations == sorted(activations, reverse=True)


def test_titler_and_sentence_objects():
    params = fixed_sae()
    x, texts = sentence_rows()
    sentences = [Sentence(t, 0, len(t)) for t in texts]
    seen = []

    def titler(examples):
        seen.append(examples)
        return f"kind {examples[0][-1]} | {len(examples)} examples"

    report = taxonomy_report(params, x, sentences, titler=titler, max_examples=5)
    assert [c["title"] for c in report["clusters"]] == [
        "kind 0 | 5 examples",
        "kind 1 | 5 examples",
        "kind 2 | 5 examples",
        None,  # a dead latent is not titled
    ]
    assert len(seen) == 3


def test_write_report_json_and_markdown(tmp_path):
    params = fixed_sae()
    x, texts = sentence_rows()
    report = taxonomy_report(params, x, texts, titler=lambda ex: "a | b", meta={"layer": 4})
    json_path, md_path = write_report(report, tmp_path / "out", "layer4_n4")
    assert json.loads(json_path.read_text()) == report
    markdown = md_path.read_text()
    assert markdown.startswith("# Reasoning taxonomy: layer4_n4")
    assert "| 0 | a \\| b | 30 | 33.3% |" in markdown
    assert "## Latent 3" in markdown and "No sentences" in markdown
    assert texts[report["clusters"][1]["top_examples"][0]["index"]] in markdown


def test_report_checks_rows_against_sentences():
    with pytest.raises(ValueError, match="one row per sentence"):
        taxonomy_report(fixed_sae(), jnp.zeros((3, DIM)), ["only one sentence here"])


def test_orthogonality_bounds():
    eye = jnp.eye(3, 5)
    params = SAEParams(eye.T, jnp.zeros(3), eye, jnp.zeros(5))
    assert decoder_orthogonality(params) == {"mean_abs_cosine": 0.0, "max_abs_cosine": 0.0}
    same = jnp.ones((2, 5)) / jnp.sqrt(5.0)
    parallel = SAEParams(same.T, jnp.zeros(2), same.at[1].multiply(-1), jnp.zeros(5))
    assert decoder_orthogonality(parallel)["max_abs_cosine"] == pytest.approx(1.0)
