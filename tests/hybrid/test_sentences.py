"""Sentences of a reasoning trace: splitting, token spans, sentence vectors, centring."""

import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jaxthink.hybrid import (
    Sentence,
    center_and_normalize,
    sentence_vectors,
    split_sentences,
    token_spans,
)

SPLIT_CASES = {
    "terminators": (
        "We add the two numbers. Is that right? Yes it is! So far so good; now divide by two.",
        [
            "We add the two numbers.",
            "Is that right?",
            "Yes it is!",
            "So far so good;",
            "now divide by two.",
        ],
    ),
    "decimals": (
        "Multiply 3.14 by 2.5 to get 7.85 exactly. Then subtract .5 from it.",
        ["Multiply 3.14 by 2.5 to get 7.85 exactly.", "Then subtract .5 from it."],
    ),
    "abbreviations": (
        "Use a known identity, e.g. the square of a sum. It holds, i.e. always. "
        "Dr. Li compares 3 vs. 4 here. Apples, pears, etc. are fruit in the bowl.",
        [
            "Use a known identity, e.g. the square of a sum.",
            "It holds, i.e. always.",
            "Dr. Li compares 3 vs. 4 here.",
            "Apples, pears, etc. are fruit in the bowl.",
        ],
    ),
    "newlines": (
        "First compute the sum\nthen check the carry digit\n\n  and write it down  \n",
        ["First compute the sum", "then check the carry digit", "and write it down"],
    ),
    "enumerations": (
        "1. Add the numbers together.\n2. Divide the total by two.\nThe answer is 12. Done with it.",
        [
            "1. Add the numbers together.",
            "2. Divide the total by two.",
            "The answer is 12.",
            "Done with it.",
        ],
    ),
    "short sentences dropped": (
        "Okay. So the answer is 7. Hmm. x = 5. Wait, let me verify this...\nYes.",
        ["So the answer is 7.", "Wait, let me verify this..."],
    ),
    "quotes and repeated terminators": (
        'He said "this is done." Is it really?! Then he left the room.',
        ['He said "this is done."', "Is it really?!", "Then he left the room."],
    ),
    "no terminator at the end": ("the carry is one so we write", ["the carry is one so we write"]),
    "empty": ("", []),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_sentences_table(case):
    text, expected = SPLIT_CASES[case]
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == expected
    for s in sentences:
        assert text[s.start : s.end] == s.text
        assert s.text == s.text.strip()


def test_dropping_short_sentences_keeps_the_others_offsets():
    text = "Ok. Hmm. We now add the tens. No. Then we carry the one."
    sentences = split_sentences(text)
    assert sentences == [
        Sentence("We now add the tens.", 9, 29),
        Sentence("Then we carry the one.", 34, 56),
    ]
    assert [s.text for s in split_sentences(text, min_words=1)][:2] == ["Ok.", "Hmm."]


def test_region_splits_only_the_trace_with_offsets_into_the_whole_text():
    text = "Question: what is 2+2?<think>\nTwo plus two is four. I am quite sure.</think>Four."
    lo, hi = text.index("<think>") + len("<think>"), text.index("</think>")
    sentences = split_sentences(text, region=(lo, hi))
    assert [s.text for s in sentences] == ["Two plus two is four.", "I am quite sure."]
    assert all(text[s.start : s.end] == s.text for s in sentences)
    with pytest.raises(ValueError, match="region"):
        split_sentences(text, region=(5, len(text) + 1))


def test_custom_abbreviations():
    text = "See approx. 5 cases per row. Then by Thm. 2 it holds."
    assert len(split_sentences(text)) == 3  # "Thm." is not a known abbreviation
    assert [s.text for s in split_sentences(text, abbreviations={"approx", "thm."})] == [
        "See approx. 5 cases per row.",
        "Then by Thm. 2 it holds.",
    ]


def word_level_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """A Hugging Face fast tokenizer whose vocabulary is the words and punctuation of `text`."""
    pieces = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {"[UNK]": 0, "[BOS]": 1} | {w: i + 2 for i, w in enumerate(pieces)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="[BOS]")


def test_token_spans_with_a_word_level_fast_tokenizer():
    text = "We add 12 and 30. The sum is 42!\nDone, so the answer is 42."
    tokenizer = word_level_tokenizer(text)
    encoding = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    sentences = split_sentences(text)
    spans = token_spans(sentences, encoding["offset_mapping"])
    assert [tokens[a:b] for a, b in spans] == [
        ["We", "add", "12", "and", "30", "."],
        ["The", "sum", "is", "42", "!"],
        ["Done", ",", "so", "the", "answer", "is", "42", "."],
    ]


def byte_level_bpe_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A small byte-level BPE like Qwen's: tokens carry their leading space (` the`)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<bos>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>")


def test_token_spans_with_a_byte_level_bpe_cover_every_character():
    text = "<think>\nFirst, 12 + 30 = 42. So the answer is 42.\n\nWait, let me check 3.5 * 2 = 7."
    tokenizer = byte_level_bpe_tokenizer([text] * 3)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    sentences = split_sentences(text)
    spans = token_spans(sentences, offsets)
    assert [s.text for s in sentences] == [  # `<think>` alone is one word: dropped
        "First, 12 + 30 = 42.",
        "So the answer is 42.",
        "Wait, let me check 3.5 * 2 = 7.",
    ]
    for sentence, (a, b) in zip(sentences, spans):
        covered = set().union(*(range(*offsets[t]) for t in range(a, b)))
        assert set(range(sentence.start, sentence.end)) <= covered
        # the first and last tokens overlap the sentence: spans are as tight as possible
        assert offsets[a][1] > sentence.start and offsets[b - 1][0] < sentence.end


def test_token_spans_zero_width_and_straddling_tokens():
    text = "We add the tens. Then we carry one."
    first, second = split_sentences(text)
    # BOS (0, 0), four tokens, one token "s. T" straddling both sentences, then the rest
    offsets = [(0, 0), (0, 2), (2, 6), (6, 10), (10, 14), (14, 18), (18, 21), (21, 35), (35, 35)]
    assert token_spans([first, second], offsets) == [(1, 6), (5, 8)]
    with pytest.raises(ValueError, match="overlaps none"):
        token_spans([Sentence("beyond", 40, 46)], offsets)
    assert token_spans([first], np.array([offsets])) == [(1, 6)]  # a batch of one is fine
    with pytest.raises(ValueError, match=r"\[T, 2\]"):
        token_spans([first], np.array([offsets, offsets]))


def test_sentence_vectors_average_the_window_including_the_token_before():
    activations = jnp.arange(12.0).reshape(6, 2)  # row t = [2t, 2t + 1]
    vectors = sentence_vectors(activations, [(0, 2), (2, 3), (3, 6)])
    # windows [0, 2) (clipped at 0), [1, 3) and [2, 6)
    np.testing.assert_allclose(vectors, [[1.0, 2.0], [3.0, 4.0], [7.0, 8.0]])
    with pytest.raises(ValueError, match="span 1"):
        sentence_vectors(activations, [(0, 2), (4, 7)])


def test_center_and_normalize():
    vectors = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0], [2.0, 6.0]])
    normalised, mean = center_and_normalize(vectors)
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(normalised[2], [0.0, -1.0])
    np.testing.assert_allclose(jnp.linalg.norm(normalised, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(normalised[0], np.array([-1.0, -1.0]) / np.sqrt(2.0), rtol=1e-6)
    again, same_mean = center_and_normalize(jnp.array([[2.0, 3.0], [2.0, 4.0]]), mean)
    np.testing.assert_allclose(again, [[0.0, 0.0], [0.0, 1.0]])  # a zero row stays zero
    assert same_mean is not None and not np.isnan(np.asarray(again)).any()
