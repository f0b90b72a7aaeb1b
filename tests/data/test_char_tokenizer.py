"""Specification of the demo character tokenizer as a Hugging Face tokenizer directory."""

import json

import pytest
from transformers import AutoTokenizer

from jaxthink.data import arithmetic as ar
from jaxthink.data.char_tokenizer import build_char_tokenizer
from jaxthink.data.records import short_response, think_response

FIXED_IDS = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<think>": 3, "</think>": 4, "<short>": 5}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_char_tokenizer(tmp_path_factory.mktemp("char_tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def _texts():
    records = ar.generate_problems(60, seed=0)
    yield from (think_response(r) + "<eos>" for r in records)
    yield from (short_response(r) + "<eos>" for r in records)
    yield "<think>\nOkay, I think I have finished thinking.\n</think>\n\nFinal Answer: \\boxed{7}"
    yield "3+7+0=10|  \n\nWait, Hmm. Alternatively\n"


def test_directory_holds_the_three_tokenizer_files(tok_dir):
    names = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<eos>" and config["pad_token"] == "<pad>"


def test_decode_of_encode_is_the_text_exactly(tok):
    for text in _texts():
        assert tok.decode(tok.encode(text)) == text


def test_task_text_has_no_unknown_characters(tok):
    for text in _texts():
        assert tok.unk_token_id not in tok.encode(text)


def test_one_token_per_character(tok):
    assert len(tok.encode("12+7\n\\boxed{19}")) == len("12+7\n\\boxed{19}")


def test_specials_are_single_tokens_with_fixed_ids(tok):
    for token, token_id in FIXED_IDS.items():
        assert tok.encode(token) == [token_id]
        assert tok.convert_tokens_to_ids(token) == token_id
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0


def test_control_tokens_survive_skip_special_tokens(tok):
    ids = tok.encode("<short>\\boxed{3}<eos><pad>")
    assert tok.decode(ids, skip_special_tokens=True) == "<short>\\boxed{3}"
    assert tok.decode(tok.encode("<think>1\n</think>"), skip_special_tokens=True) == (
        "<think>1\n</think>"
    )


def test_generation_prompt_ends_at_the_answer_marker(tok):
    messages = [{"role": "user", "content": "12+7"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "Q: 12+7\nA:"


def test_conversation_is_prompt_plus_response_plus_eos(tok):
    user = {"role": "user", "content": "12+7"}
    response = "<short>\\boxed{19}"
    prompt = tok.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(
        [user, {"role": "assistant", "content": response}], tokenize=False
    )
    assert full == prompt + response + "<eos>"


def test_vocabulary_is_small(tok):
    assert len(tok) < 128
