"""Answer extraction: find the final answer in a model response.

Owns the split of a response into its thinking and answer parts (`split_thinking`, also used by
the sampler) and the search of the answer part for the final answer (`extract_answer`): the last
`\\boxed{...}`, else a `Final Answer:` line, else a GSM8K `#### 42` line. Grading lives in grade.py.
"""

from __future__ import annotations

import re

from jaxthink.tokenizer import END_THINK, SHORT, THINK

CONTROL_TOKENS = (THINK, SHORT)

# `\boxed` and `\fbox` both mark a final answer; `\boxed 5` (no braces) is valid LaTeX too.
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FINAL_ANSWER = re.compile(r"final answer\s*:", re.IGNORECASE)
_GSM8K_MARK = "####"
# Wrappers a model puts around a one-line final answer: math delimiters and markdown bold.
_LINE_WRAPPERS = ("$", "\\[", "\\]", "\\(", "\\)", "*")


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, answer) of a response, both stripped of surrounding whitespace.

    The split is at the last `</think>`; a leading `<think>` is dropped from the thinking. With no
    `</think>`, a response that opened with `<think>` is all (unfinished) thinking, anything else
    is all answer (a leading `<short>` is dropped from it).
    """
    body = text.lstrip()
    close = body.rfind(END_THINK)
    if close >= 0:
        thinking = _drop_prefix(body[:close].lstrip(), THINK)
        return thinking.strip(), body[close + len(END_THINK) :].strip()
    if body.startswith(THINK):
        return body[len(THINK) :].strip(), ""
    return "", _drop_prefix(body, SHORT).strip()


def answer_part(text: str) -> str:
    """The part of a response that may hold the final answer.

    After the last `</think>` if there is one, else after a leading control token (`<short>` or
    `<think>`), else the whole text. Unlike `split_thinking`, a `<think>` response that was cut
    before `</think>` is searched too: penalising truncation is the reward's job, not extraction's.
    """
    close = text.rfind(END_THINK)
    if close >= 0:
        return text[close + len(END_THINK) :]
    body = text.lstrip()
    for token in CONTROL_TOKENS:
        if body.startswith(token):
            return body[len(token) :]
    return text


def extract_answer(text: str) -> str | None:
    """The final answer of a response, stripped, or None when there is none.

    Looks in `answer_part(text)` for, in order of preference: the last well-formed `\\boxed{...}`
    (or `\\fbox{...}`, or `\\boxed x`); the text after the last `Final Answer:` up to the end of
    its line; the text after the last GSM8K-style `####`.
    """
    answer = answer_part(text)
    for find in (last_boxed, after_final_answer, after_gsm8k_mark):
        found = find(answer)
        if found:
            return found
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed `\\boxed{...}` / `\\fbox{...}` / `\\boxed x`, else None.

    A box whose braces never close (a truncated response) is skipped in favour of an earlier one.
    """
    command_ends = sorted(
        m.end() for command in _BOX_COMMANDS for m in re.finditer(re.escape(command), text)
    )
    for command_end in reversed(command_ends):
        content = _box_content(text, command_end)
        if content:
            return content
    return None


def after_final_answer(text: str) -> str | None:
    """Text after the last `Final Answer:` to the end of its line, unwrapped, else None."""
    matches = list(_FINAL_ANSWER.finditer(text))
    if not matches:
        return None
    line = _first_line(text[matches[-1].end() :])
    return _unwrap_line(line) or None


def after_gsm8k_mark(text: str) -> str | None:
    """Text after the last `####` to the end of its line, else None."""
    mark = text.rfind(_GSM8K_MARK)
    if mark < 0:
        return None
    return _unwrap_line(_first_line(text[mark + len(_GSM8K_MARK) :])) or None


def matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, or None if it never closes.

    Escaped braces (`\\{`, `\\}`) are content, not structure: `\\boxed{\\{1, 2\\}}` is one box.
    """
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_content(text: str, after_command: int) -> str | None:
    """Content of a box whose command ends at `after_command`; None if malformed or empty."""
    rest = text[after_command:]
    if rest.startswith("{"):
        close = matching_brace(text, after_command)
        if close is None:
            return None
        return text[after_command + 1 : close].strip() or None
    if rest[:1].isspace():
        # `\boxed 5`: the argument is the next token, up to whitespace or a math delimiter.
        token = re.match(r"\s+([^\s$]+)", rest)
        return token.group(1).rstrip(".") if token else None
    return None  # e.g. `\boxedfoo`: another command that merely starts with `\boxed`


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.split("\n", 1)[0] if stripped else ""


def _unwrap_line(line: str) -> str:
    """Strips math delimiters, markdown bold and a sentence-ending period around an answer."""
    previous = None
    while line != previous:
        previous = line
        line = line.strip()
        for wrapper in _LINE_WRAPPERS:
            line = _drop_prefix(line, wrapper)
            if line.endswith(wrapper):
                line = line[: -len(wrapper)]
        if line.endswith(".") and not line.endswith(".."):
            line = line[:-1]
    return line


def _drop_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text
