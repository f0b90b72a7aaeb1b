"""The demo model's character tokenizer, written as a real Hugging Face tokenizer directory.

Owns `build_char_tokenizer(out_dir)`: one token per character of printable ASCII plus newline,
and six added tokens with fixed ids:

    id  token      kind
    0   <pad>      special (padding)
    1   <eos>      special (end of a response)
    2   <unk>      special (any character outside the vocabulary)
    3   <think>    added, NOT special: decodes as itself even with skip_special_tokens=True
    4   </think>   added, NOT special
    5   <short>    added, NOT special
    6   "\\n"      then the 95 printable ASCII characters " " .. "~" at ids 7..101

The control tokens are non-special added tokens (as in Qwen3's own tokenizer), so every decode
keeps them and a response reads back exactly as written. The tokenizer.json is built with the
`tokenizers` library: a WordLevel model over single characters, a Split pre-tokenizer that isolates
every character (newlines included) and a Fuse decoder, so `decode(encode(s)) == s` with no spaces
inserted. The chat template renders a user turn as `Q: {question}\\n`, the generation prompt as
`A:` (the model's first response token is then the control token) and an assistant turn as
`A:{content}<eos>`, so prompt + response + `<eos>` is exactly the rendered conversation.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from jaxthink.tokenizer import END_THINK, SHORT, THINK

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)  # skipped by decode(..., skip_special_tokens=True)
CONTROL_TOKENS = (THINK, END_THINK, SHORT)  # always decoded as themselves
CHARACTERS = ("\n",) + tuple(chr(c) for c in range(32, 127))

# token -> id, stable across builds: specials, control tokens, then the characters.
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CONTROL_TOKENS + CHARACTERS)}

# The chat template writes a user turn as the task's question: the digits and the signs
# + - * of the text, with x or the multiplication sign between digits read as *, so that
# "What is 4,821 + 967?" and "4821+967" are one prompt on every path that formats a prompt (a text
# with no digit is left as it is). The checkpoint carries it: models trained on this tokenizer
# read free text the same way.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set ns = namespace(q='') -%}"
    "{%- for ch in message['content'] | replace(' ', '') | replace(',', '') -%}"
    "{%- if ch in '0123456789+-*' -%}{%- set ns.q = ns.q + ch -%}"
    "{%- elif ch in 'x\u00d7' and loop.previtem is defined and loop.nextitem is defined"
    " and loop.previtem in '0123456789' and loop.nextitem in '0123456789' -%}"
    "{%- set ns.q = ns.q + '*' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set q = ns.q if ns.q | select('in', '0123456789') | list else message['content'] -%}"
    "{{ 'Q: ' + q + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'A:' + message['content'] + '" + EOS + "' }}"
    "{%- else -%}"
    "{{ message['content'] + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}A:{%- endif -%}"
)


def char_tokenizer() -> Tokenizer:
    """The `tokenizers.Tokenizer` itself (what `build_char_tokenizer` saves as tokenizer.json)."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token=UNK))
    # `[\s\S]` matches every character, newline included; "isolated" makes each one a word.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join tokens as they are: no spaces between characters
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CONTROL_TOKENS])
    return tok


def build_char_tokenizer(out_dir: str | Path) -> Path:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`.

    The directory loads with `transformers.AutoTokenizer.from_pretrained(out_dir,
    local_files_only=True)`. Returns the directory path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    char_tokenizer().save(str(out / "tokenizer.json"))
    special_map = {"eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special_map)
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
