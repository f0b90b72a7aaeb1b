"""Steering: the model-independent parts of the hybrid method's unsupervised reasoning taxonomy.

sentences (split traces, map to tokens, sentence vectors) -> sae (top-k sparse autoencoder whose
argmax latent is a sentence's cluster) -> taxonomy (per-cluster report, JSON + Markdown).
"""

from jaxthink.steer.sae import (
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
from jaxthink.steer.sentences import (
    Sentence,
    center_and_normalize,
    sentence_vectors,
    split_sentences,
    token_spans,
)
from jaxthink.steer.taxonomy import (
    decoder_orthogonality,
    render_markdown,
    taxonomy_report,
    write_report,
)

__all__ = [
    "DEFAULT_LATENTS",
    "SAEConfig",
    "SAEParams",
    "Sentence",
    "assign_clusters",
    "center_and_normalize",
    "decode",
    "decoder_orthogonality",
    "encode",
    "init_sae",
    "load_sae",
    "make_update_step",
    "normalized_loss",
    "preactivations",
    "render_markdown",
    "renormalize_decoder",
    "sae_learning_rate",
    "save_sae",
    "sentence_vectors",
    "split_sentences",
    "taxonomy_report",
    "token_spans",
    "top_k_codes",
    "train_grid",
    "train_sae",
    "write_report",
]
