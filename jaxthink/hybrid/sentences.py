"""Reasoning traces as sentences, and sentences as vectors: the input side of the taxonomy.

Owns (docs/methods.md section 3, "Taxonomy of reasoning sentences"):
  split_sentences      text -> sentences with character offsets into the text
  token_spans          character spans -> token index spans, from a fast tokenizer's offsets
  sentence_vectors     residual-stream activations [T, E] -> one mean vector per sentence [S, E]
  center_and_normalize subtract the global mean, L2-normalise each row

Nothing here knows about a model: the caller runs the thinking model over the tokenized trace,
takes the residual stream after block L, and hands the activations and the tokenizer's offsets in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

TERMINATORS = ".!?;"
# Characters that may follow a terminator and still belong to its sentence: `"Done."` or `(yes!)`.
CLOSERS = "\"')]}\u201d\u2019*"
# Words (lower case, without the final period) whose period never ends a sentence.
ABBREVIATIONS = frozenset(
    {
        "e.g",
        "i.e",
        "etc",
        "vs",
        "cf",
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "approx",
        "fig",
        "eq",
        "eqs",
        "resp",
        "al",
        "jr",
        "sr",
        "st",
    }
)
MIN_WORDS = 3


class Sentence(NamedTuple):
    """A sentence of `source`: `text == source[start:end]`, with no surrounding whitespace."""

    text: str
    start: int
    end: int


def split_sentences(
    text: str,
    *,
    region: tuple[int, int] | None = None,
    min_words: int = MIN_WORDS,
    abbreviations: Iterable[str] = ABBREVIATIONS,
) -> list[Sentence]:
    """The sentences of `text` (or of `text[region[0]:region[1]]`), offsets into `text`.

    A sentence ends at a newline, or after a run of `. ! ? ;` (plus closing quotes/brackets) that
    is followed by whitespace or the end of the text. Hence decimals (`3.14`), `x.y` and `e.g.,`
    never split. A period does not split either after a listed abbreviation (`e.g. the`, `Dr. Li`,
    `vs. 7`) or after an enumeration number that starts its line (`1. Add the`). Sentences of fewer
    than `min_words` words (whitespace-separated pieces containing a letter or digit, so `x = 5.`
    has two) are dropped; the offsets of the others are unaffected. `region` lets the caller split
    only the thinking part of a decoded prompt + trace while keeping offsets into the whole text,
    the same text a tokenizer's offset mapping refers to.
    """
    lo, hi = (0, len(text)) if region is None else region
    if not 0 <= lo <= hi <= len(text):
        raise ValueError(f"region {region} is not inside the text of length {len(text)}")
    abbreviations = frozenset(a.lower().rstrip(".") for a in abbreviations)
    sentences = []
    start = lo
    for end in _boundaries(text, lo, hi, abbreviations):
        sentence = _trimmed(text, start, end)
        if sentence is not None and _word_count(sentence.text) >= min_words:
            sentences.append(sentence)
        start = end
    return sentences


def _boundaries(text: str, lo: int, hi: int, abbreviations: frozenset[str]) -> list[int]:
    """Exclusive end offsets of the candidate sentences of text[lo:hi]; the last one is `hi`."""
    ends = []
    i = lo
    while i < hi:
        char = text[i]
        if char == "\n":
            ends.append(i)
            i += 1
            continue
        if char not in TERMINATORS:
            i += 1
            continue
        j = i
        while j < hi and text[j] in TERMINATORS:
            j += 1
        while j < hi and text[j] in CLOSERS:
            j += 1
        at_break = j == hi or text[j].isspace()
        if at_break and not _period_is_protected(text, lo, i, j, abbreviations):
            ends.append(j)
        i = j
    ends.append(hi)
    return ends


def _period_is_protected(
    text: str, lo: int, first: int, after: int, abbreviations: frozenset[str]
) -> bool:
    """Whether the terminator run text[first:after] is a single period that does not end a sentence.

    Protected: the period of an abbreviation (`e.g.`, `Dr.`) and of an enumeration number that
    starts its line (`1.`, `12.`). Checked only for a lone `.`: `etc.!` still ends a sentence.
    """
    if text[first:after].rstrip(CLOSERS) != ".":
        return False
    word_start = first
    while word_start > lo and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:first].lstrip("(\"'[{*").lower()
    if word in abbreviations:
        return True
    line_start = max(text.rfind("\n", lo, word_start) + 1, lo)
    return word.isdigit() and text[line_start:word_start].strip() == ""


def _trimmed(text: str, start: int, end: int) -> Sentence | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Sentence(text[start:end], start, end) if end > start else None


def _word_count(text: str) -> int:
    return sum(any(c.isalnum() for c in piece) for piece in text.split())


def token_spans(
    sentences: Sequence[Sentence], offsets: Sequence[tuple[int, int]] | np.ndarray
) -> list[tuple[int, int]]:
    """Token spans [start_tok, end_tok) of `sentences`, given each token's (char_start, char_end).

    `offsets` is what a Hugging Face fast tokenizer returns with `return_offsets_mapping=True` for
    the text the sentences index into (one sequence, no batch axis). A token belongs to a sentence
    if its characters overlap the sentence's; the span runs from the first such token to the last,
    so every character of the sentence lies inside its tokens. Zero-width tokens (BOS and other
    special tokens get (0, 0)) belong to no sentence. A token that straddles a boundary (a BPE
    merge across the whitespace between two sentences, or a byte-level piece of a character)
    belongs to both sentences: adjacent spans may share that one token. Raises if a sentence
    overlaps no token (text beyond a truncated tokenization, or offsets of another text).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim == 3 and offsets.shape[0] == 1:  # a batch of one, as return_tensors gives
        offsets = offsets[0]
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(
            f"offsets must be [T, 2] (char_start, char_end) pairs, got {offsets.shape}"
        )
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    spans = []
    for sentence in sentences:
        (hits,) = np.nonzero(real & (starts < sentence.end) & (ends > sentence.start))
        if hits.size == 0:
            raise ValueError(
                f"sentence at characters [{sentence.start}, {sentence.end}) "
                f"({sentence.text[:40]!r}) overlaps none of the {len(offsets)} tokens; "
                "expected offsets of the same text the sentences were split from, tokenized "
                "without truncation"
            )
        spans.append((int(hits[0]), int(hits[-1]) + 1))
    return spans


def sentence_vectors(activations, spans: Sequence[tuple[int, int]]) -> jnp.ndarray:
    """Mean activation [S, E] of each sentence over token positions [start - 1, end).

    The window includes the token before the sentence (the paper's choice: the position whose
    output predicts the sentence's first token); at position 0 it is clipped to [0, end).
    `activations` is [T, E], e.g. the residual stream after block L for one sequence.
    """
    activations = jnp.asarray(activations)
    if activations.ndim != 2:
        raise ValueError(f"activations must be [T, E], got shape {activations.shape}")
    length = activations.shape[0]
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    bad = (bounds[:, 0] < 0) | (bounds[:, 1] <= bounds[:, 0]) | (bounds[:, 1] > length)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"span {i} = {tuple(bounds[i])} is not a non-empty token range inside [0, {length})"
        )
    lo = np.maximum(bounds[:, 0] - 1, 0)
    positions = np.arange(length)
    window = (positions >= lo[:, None]) & (positions < bounds[:, 1][:, None])
    weights = window / window.sum(axis=1, keepdims=True)
    return jnp.asarray(weights, jnp.float32) @ activations.astype(jnp.float32)


def center_and_normalize(vectors, mean=None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(rows minus `mean`, L2-normalised; the mean used). Rows that centre to zero stay zero.

    `vectors` is [N, E]; with an explicit `mean` [E] any [..., E] works. `mean=None` uses the rows' own mean: pass the whole corpus (all traces of a layer) to get the
    global mean, and keep it: a hidden state must be centred with the same mean before the SAE
    classifies it at decoding time.
    """
    vectors = jnp.asarray(vectors, jnp.float32)
    if mean is None:
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be [N, E] to take their mean, got {vectors.shape}")
        mean = vectors.mean(axis=0)
    mean = jnp.asarray(mean, jnp.float32)
    if mean.shape != vectors.shape[-1:]:
        raise ValueError(f"mean has shape {mean.shape}, expected ({vectors.shape[-1]},)")
    centred = vectors - mean
    norms = jnp.linalg.norm(centred, axis=-1, keepdims=True)
    normalised = jnp.where(norms > 0, centred / jnp.where(norms > 0, norms, 1.0), 0.0)
    return normalised, mean
