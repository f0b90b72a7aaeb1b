"""The tokenizer layer: a checkpoint's own tokenizer and chat template, read through `transformers`.

Loads tokenizers offline, finds the control tokens the reasoning modes steer by (`<think>`,
`</think>`, `<short>`, end of response) and turns questions into prompt text and token ids.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import transformers

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
THINK, END_THINK, SHORT = "<think>", "</think>", "<short>"
# Tokens that end a response in some Qwen-family checkpoint (Qwen chat, Qwen base, DeepSeek R1).
EOS_CANDIDATES = ("<|im_end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>")


class TokenizerError(ValueError):
    """A tokenizer directory or tokenizer that jaxthink cannot use as it stands."""


def load_tokenizer(path: str | Path) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer stored in a local checkpoint directory, ready for left-padded batches.

    Never downloads and never runs code from the directory (`trust_remote_code` stays off).
    Decoder-only generation pads on the left so every row's last prompt token lines up; a
    tokenizer without a pad token pads with its end-of-sequence token.
    """
    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(
            f"{path}: no such directory; expected a Hugging Face checkpoint or tokenizer "
            f"directory containing {' or '.join(TOKENIZER_FILES)}"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise TokenizerError(
            f"{path}: no tokenizer files; expected {' or '.join(TOKENIZER_FILES)} (found: {found})"
        )
    tokenizer = _tokenizer_class(path).from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TokenizerError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _tokenizer_class(path: Path):
    """The class that reads this directory's tokenizer exactly as its tokenizer.json defines it.

    transformers 5 picks the tokenizer class from config.json's model_type, and the Qwen2 class
    replaces the file's pre-tokenizer with Qwen's BPE split. That is right for real Qwen
    checkpoints, and wrong for a generic `tokenizer.json` tokenizer (the demo's character
    vocabulary): a config that names the generic class gets it.
    """
    config = path / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    if declared in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return transformers.PreTrainedTokenizerFast
    return transformers.AutoTokenizer


@dataclasses.dataclass(frozen=True)
class ControlTokens:
    """Ids of the tokens the reasoning modes force, mask or count; None when absent."""

    think: int | None  # <think>
    end_think: int | None  # </think>
    short: int | None  # <short> (Thinkless)
    eos: tuple[int, ...]  # every id that ends a response
    pad: int

    @property
    def has_thinking(self) -> bool:
        """Both thinking delimiters exist, so thinking can be opened, closed and budgeted."""
        return self.think is not None and self.end_think is not None

    @property
    def has_short(self) -> bool:
        """The model can choose a short answer (`<short>`) instead of thinking (Thinkless)."""
        return self.short is not None


def token_id(tokenizer, token: str) -> int | None:
    """The id of `token` if it is in the vocabulary as exactly that string, else None.

    `convert_tokens_to_ids` answers the unknown token's id for strings it does not know; the
    round trip back to a string tells a real entry from that fallback.
    """
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or tokenizer.convert_ids_to_tokens(i) != token:
        return None
    return i


def control_tokens(tokenizer) -> ControlTokens:
    """Looks the control tokens up by exact string; eos lists the tokenizer's own eos first."""
    candidates = [tokenizer.eos_token_id] + [token_id(tokenizer, t) for t in EOS_CANDIDATES]
    eos = tuple(dict.fromkeys(i for i in candidates if i is not None))
    if not eos:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TokenizerError(
            f"{name}: no end-of-response token (no eos_token and none of {EOS_CANDIDATES})"
        )
    pad = tokenizer.pad_token_id
    return ControlTokens(
        think=token_id(tokenizer, THINK),
        end_think=token_id(tokenizer, END_THINK),
        short=token_id(tokenizer, SHORT),
        eos=eos,
        pad=eos[0] if pad is None else pad,
    )


def format_prompt(
    tokenizer,
    question: str,
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
    **template_kwargs,
) -> str:
    """One user turn (plus an optional system turn) rendered by the checkpoint's chat template.

    The template is the model's training format, so it is used as is; `template_kwargs` reach
    the template (e.g. Qwen3's `enable_thinking=False`). The text already holds any BOS token.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TokenizerError(
            f"{name}: the tokenizer has no chat template (no 'chat_template' in "
            "tokenizer_config.json and no chat_template.jinja); format the prompt text yourself "
            "and encode it with encode_prompts"
        )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
    )


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of already formatted prompts, adding no special tokens.

    Chat templates write the BOS token themselves; letting the tokenizer add its own would
    put it in twice (R1-Distill's tokenizer prepends BOS by default).
    """
    if isinstance(prompts, str):
        raise TypeError("encode_prompts takes a list of prompt strings, got a single str")
    if not prompts:
        return []
    return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]


def thinking_prefix_in_prompt(tokenizer, **template_kwargs) -> bool:
    """Whether the chat template's generation prompt already opens a `<think>` block.

    DeepSeek-R1-Distill's template ends with `<think>\\n`, so the model starts inside its
    thoughts; Thinkless-style templates stop at the assistant tag and let the model choose.
    Trailing whitespace after `<think>` is ignored.
    """
    if token_id(tokenizer, THINK) is None:
        return False
    prompt = format_prompt(tokenizer, "1+1=?", **template_kwargs)
    return prompt.rstrip().endswith(THINK)
