"""The hybrid method: a thinking model steers a base model with vectors found by an unsupervised
taxonomy of its reasoning sentences.

sentences (split traces, map to tokens, sentence vectors) -> activations (traces through a model:
sentence vectors per layer) -> sae (top-k sparse autoencoder whose argmax latent is a sentence's
cluster) -> taxonomy (per-cluster report, JSON + Markdown) -> train_vectors (optimised or
difference-of-means vectors for the base model) -> vectors (the steering file) -> decoding (hybrid
decoding on the slot engine; reference.py is the uncached published loop it must equal). The runs
`python -m train sae` and `python -m train steer` are sae_run.py and steer_run.py.
"""

from jaxthink.hybrid.activations import (
    Trace,
    TraceSentence,
    sentence_activations,
    trace_sentences,
)
from jaxthink.hybrid.sae import (
    DEFAULT_LATENTS,
    SAEConfig,
    SAEParams,
    assign_clusters,
    decode,
    encode,
    init_sae,
    load_sae,
    make_update_step,
    normalized_loss,
    preactivations,
    renormalize_decoder,
    sae_learning_rate,
    save_sae,
    top_k_codes,
    train_grid,
    train_sae,
)
from jaxthink.hybrid.sentences import (
    Sentence,
    center_and_normalize,
    sentence_vectors,
    split_sentences,
    token_spans,
)
from jaxthink.hybrid.taxonomy import (
    decoder_orthogonality,
    render_markdown,
    taxonomy_report,
    write_report,
)
from jaxthink.hybrid.train_vectors import VectorTraining, mean_difference, train_vector
from jaxthink.hybrid.vectors import SteeringVectors, load_steering, save_steering

__all__ = [
    "DEFAULT_LATENTS",
    "SAEConfig",
    "SAEParams",
    "Sentence",
    "SteeringVectors",
    "Trace",
    "TraceSentence",
    "VectorTraining",
    "assign_clusters",
    "center_and_normalize",
    "decode",
    "decoder_orthogonality",
    "encode",
    "init_sae",
    "load_sae",
    "load_steering",
    "make_update_step",
    "mean_difference",
    "normalized_loss",
    "preactivations",
    "render_markdown",
    "renormalize_decoder",
    "sae_learning_rate",
    "save_sae",
    "save_steering",
    "sentence_activations",
    "sentence_vectors",
    "split_sentences",
    "taxonomy_report",
    "token_spans",
    "top_k_codes",
    "trace_sentences",
    "train_grid",
    "train_sae",
    "train_vector",
    "write_report",
]
