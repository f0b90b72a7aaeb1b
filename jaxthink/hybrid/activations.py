"""Reasoning traces through a model: the sentences of every trace and their vectors per layer.

    traces (prompt text + thinking text)
      --split_sentences over the thinking part, token_spans from the tokenizer's offsets-->
    sentences --residual_stream after the asked blocks, mean over [start - 1, end)-->
    {layer: [N, E] sentence vectors}

A trace is what the model read: `prompt` is the formatted prompt including whatever opens the
thinking block (`<think>`), `thinking` the reasoning text after it. Sentence offsets are into the
thinking text, so the same sentences can be located in another model's tokenization of the same
trace (the steering stage runs the base model over the thinking model's traces). Vectors come
back raw; centring and normalising over the whole corpus is the caller's (`center_and_normalize`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from jaxthink.hybrid.sentences import (
    MIN_WORDS,
    Sentence,
    sentence_vectors,
    split_sentences,
    token_spans,
)
from jaxthink.models.qwen import residual_stream

_BUCKET = 64  # padded widths are multiples of this: a corpus compiles a few programs


@dataclasses.dataclass(frozen=True)
class Trace:
    prompt: str  # the formatted prompt, ending where the thinking text starts
    thinking: str  # the reasoning text (inside the thinking block)
    question: str = ""


@dataclasses.dataclass(frozen=True)
class TraceSentence:
    trace: int  # index of the trace
    text: str
    start: int  # character offsets into the trace's thinking text
    end: int


@dataclasses.dataclass(frozen=True)
class Tokenized:
    """A trace as token ids, with its sentences' token spans [start, end) in those ids."""

    ids: list[int]
    spans: list[tuple[int, int]]
    thinking_start: int  # the first token of the thinking text


def trace_sentences(traces: Sequence[Trace], min_words: int = MIN_WORDS) -> list[TraceSentence]:
    """Every sentence of every trace's thinking text, in trace order."""
    return [
        TraceSentence(i, s.text, s.start, s.end)
        for i, trace in enumerate(traces)
        for s in split_sentences(trace.thinking, min_words=min_words)
    ]


def tokenize_trace(tokenizer, trace: Trace, sentences: Sequence[TraceSentence]) -> Tokenized:
    """Token ids of prompt + thinking and the token spans of `sentences` (of this trace).

    Needs a fast tokenizer (character offsets). Special tokens are not added: the prompt text
    already holds what the chat template wrote.
    """
    text = trace.prompt + trace.thinking
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if "offset_mapping" not in encoded:
        raise ValueError(f"{type(tokenizer).__name__}: sentence spans need a fast tokenizer")
    offsets = np.asarray(encoded["offset_mapping"], np.int64).reshape(-1, 2)
    shift = len(trace.prompt)
    shifted = [Sentence(s.text, s.start + shift, s.end + shift) for s in sentences]
    spans = token_spans(shifted, offsets) if shifted else []
    first = int(np.searchsorted(offsets[:, 1], shift, side="right"))
    return Tokenized(list(encoded["input_ids"]), spans, first)


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"))
def _streams(graphdef, params, tokens, valid, layers: tuple[int, ...]):
    return residual_stream(nnx.merge(graphdef, params), tokens, valid, layers)


def sentence_activations(
    model,
    tokenizer,
    traces: Sequence[Trace],
    sentences: Sequence[TraceSentence],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> dict[int, np.ndarray]:
    """{layer: [len(sentences), E]} mean residual stream after that block over each sentence's
    token positions [start - 1, end) (float32, not centred).

    `max_tokens` cuts each trace to its first tokens (the paper reads up to 1000 tokens of
    thinking); a sentence reaching past the cut raises, so drop such sentences first with
    `sentences_within`.
    """
    layers = tuple(int(layer) for layer in layers)
    by_trace = _by_trace(sentences)
    graphdef, params = nnx.split(model)
    out = {layer: np.zeros((len(sentences), model.cfg.hidden_size), np.float32) for layer in layers}
    items = []
    for t, rows in by_trace.items():
        tok = tokenize_trace(tokenizer, traces[t], [sentences[j] for j in rows])
        ids = tok.ids[:max_tokens] if max_tokens else tok.ids
        items.append((ids, tok.spans, rows))
    items.sort(key=lambda item: len(item[0]))  # similar lengths share a padded batch
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        width = -(-max(len(ids) for ids, _, _ in chunk) // _BUCKET) * _BUCKET
        tokens = np.zeros((len(chunk), width), np.int32)
        valid = np.zeros((len(chunk), width), bool)
        for r, (ids, _, _) in enumerate(chunk):
            tokens[r, : len(ids)], valid[r, : len(ids)] = ids, True
        streams = np.asarray(_streams(graphdef, params, tokens, valid, layers))  # [L, B, W, E]
        for r, (ids, spans, rows) in enumerate(chunk):
            for li, layer in enumerate(layers):
                vectors = sentence_vectors(streams[li, r, : len(ids)], spans)
                out[layer][rows] = np.asarray(vectors)
    return out


def sentences_within(
    tokenizer, traces: Sequence[Trace], sentences: Sequence[TraceSentence], max_tokens: int
) -> list[TraceSentence]:
    """The sentences whose tokens all lie in the first `max_tokens` tokens of their trace."""
    kept = []
    for t, rows in _by_trace(sentences).items():
        own = [sentences[j] for j in rows]
        spans = tokenize_trace(tokenizer, traces[t], own).spans
        kept += [s for s, (_, end) in zip(own, spans, strict=True) if end <= max_tokens]
    return kept


def _by_trace(sentences: Sequence[TraceSentence]) -> dict[int, list[int]]:
    """{trace index: indices of its sentences}, traces in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for j, s in enumerate(sentences):
        groups.setdefault(s.trace, []).append(j)
    return groups
