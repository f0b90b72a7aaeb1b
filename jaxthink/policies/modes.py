"""Mode strings and what each mode asks of a row: prompt prefill, starting phase, per-row numbers.

A mode is `name` or `name=value`: `think`, `no_think`, `think_budget=512`, `thinkless`,
`thinkless=512` (thinkless with a thinking budget), `short`, `think_forced`, `extend=2`.
In evaluation a comma list sweeps the value: `think_budget=128,256,512`.
Options of a mode (answer prefix, grace, texts) are `ModeOptions` fields, not part of the string.
"""

from __future__ import annotations

import dataclasses
import math

NO_BUDGET = 2**30  # "unbounded" as an int32 the loop can compare against

# name -> (value syntax or None, one-line description)
MODES = {
    "think": (None, "the model thinks freely (the checkpoint's own chat template)"),
    "no_think": (None, "NoThinking: prefill a finished thinking block, the model answers directly"),
    "think_budget": ("N", "budget forcing: after N thinking tokens force </think> + answer prefix"),
    "thinkless": (
        "[N]",
        "the model picks <short> or <think> as its first token (budget N if given)",
    ),
    "short": (None, "force the <short> control token"),
    "think_forced": ("[N]", "force the <think> control token (budget N if given)"),
    "extend": ("K", "s1-style: suppress the end of thinking K times, appending 'Wait' instead"),
    "plain": (None, "the chat template as it is, nothing forced or masked (any tokenizer)"),
    "hybrid": (None, "a thinking model steers a base model (--base-model, --steering)"),
}
_NEEDS_VALUE = {"think_budget", "extend"}
_TAKES_VALUE = {"think_budget", "extend", "thinkless", "think_forced"}

# Phases of a row in the decode loop.
PRE, THINK, ANSWER = 0, 1, 2
# Control-token handling at the first response token (PLAIN: none, and nothing masked later).
FREE, CHOOSE, FORCE_SHORT, FORCE_THINK, PLAIN = 0, 1, 2, 3, 4


class ModeError(ValueError):
    """A mode string or mode/tokenizer combination that cannot run."""


def modes_help() -> str:
    lines = []
    for name, (syntax, text) in MODES.items():
        spelled = f"{name}={syntax}" if syntax and not syntax.startswith("[") else name
        if syntax and syntax.startswith("["):
            spelled = f"{name}[={syntax[1:-1]}]"
        lines.append(f"  {spelled:<20} {text}")
    return "modes:\n" + "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    value: int | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value}"

    @property
    def budget(self) -> int | None:
        return self.value if self.name in ("think_budget", "thinkless", "think_forced") else None

    @property
    def uses_control_tokens(self) -> bool:
        return self.name in ("thinkless", "short", "think_forced")


@dataclasses.dataclass(frozen=True)
class ModeOptions:
    """Texts and switches shared by all rows of a call.

    The defaults suit R1-style checkpoints. A checkpoint trained on another format names its
    own in config.json under `"mode_options"` (the demo model: budget forcing continues with
    `\\boxed{`); `for_model` reads them, and explicit values override both.
    """

    no_think_text: str = "Okay, I think I have finished thinking."
    answer_prefix: str = "\n\nFinal Answer:"
    finish_line: bool = False  # budget forcing: first let the model end its line (grace 10% of N)
    wait_text: str = "Wait"

    @classmethod
    def for_model(cls, cfg, **overrides) -> ModeOptions:
        """The options of a model (its `ModelConfig`, or None): the checkpoint's own
        `mode_options`, then the `overrides` that are not None."""
        own = (cfg.hf_config.get("mode_options") if cfg is not None else None) or {}
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(own, dict) or set(own) - fields:
            raise ModeError(
                f"config.json mode_options {own!r}: expected an object with keys among "
                f"{sorted(fields)}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**own, **given})


def parse_mode(text: str | Mode) -> Mode:
    """`"think_budget=512"` -> Mode("think_budget", 512). Unknown names list every mode."""
    if isinstance(text, Mode):
        return text
    modes = parse_modes(text)
    if len(modes) != 1:
        raise ModeError(f"mode {text!r} is a sweep of {len(modes)} modes; give one value here")
    return modes[0]


def parse_modes(text: str) -> list[Mode]:
    """A mode string whose value may be a comma list (a sweep): one Mode per value."""
    name, _, raw = text.strip().partition("=")
    name = name.strip()
    if name not in MODES:
        raise ModeError(f"unknown mode {text!r}\n{modes_help()}")
    if not raw:
        if name in _NEEDS_VALUE:
            raise ModeError(f"mode {name} needs a value: {name}={MODES[name][0]}\n{modes_help()}")
        return [Mode(name)]
    if name not in _TAKES_VALUE:
        raise ModeError(f"mode {name} takes no value, got {text!r}\n{modes_help()}")
    modes = []
    for part in raw.split(","):
        try:
            value = int(part)
        except ValueError:
            raise ModeError(f"mode {text!r}: {part!r} is not an integer") from None
        if value <= 0 or (name == "extend" and value > 1000):
            raise ModeError(f"mode {text!r}: the value must be a positive integer, got {value}")
        modes.append(Mode(name, value))
    return modes


@dataclasses.dataclass(frozen=True)
class RowSetup:
    """What a mode asks of one row: text appended to the prompt and the loop's per-row numbers."""

    prefill: str
    phase: int
    control: int
    budget: int
    grace: int
    extend: int


def row_setup(mode: Mode, opts: ModeOptions, control, prompt_opens_thinking: bool) -> RowSetup:
    """The per-row setup of `mode` for a tokenizer with these control tokens.

    `control` is a `jaxthink.tokenizer.ControlTokens`; `prompt_opens_thinking` says whether the
    chat template's generation prompt already ends with `<think>` (DeepSeek-R1-Distill does).
    On a Thinkless-style checkpoint (control token first) the thinking modes force `<think>` as
    the first response token, the way that model was trained to start thinking.
    """
    check_mode_supported(mode, control, prompt_opens_thinking)
    if mode.name == "plain":  # thinking, if the model opens it, is still split and counted
        return RowSetup("", THINK if prompt_opens_thinking else PRE, PLAIN, NO_BUDGET, 0, 0)
    budget = mode.budget or NO_BUDGET
    grace = math.ceil(0.1 * budget) if (opts.finish_line and mode.budget) else 0
    extend = mode.value if mode.name == "extend" else 0
    control_first = control.short is not None and not prompt_opens_thinking
    open_think = "" if prompt_opens_thinking else "<think>\n"
    if mode.name == "no_think":
        return RowSetup(f"{open_think}{opts.no_think_text}\n</think>", ANSWER, FREE, budget, 0, 0)
    if mode.name == "thinkless":
        return RowSetup("", PRE, CHOOSE, budget, grace, 0)
    if mode.name == "short":
        return RowSetup("", PRE, FORCE_SHORT, budget, grace, 0)
    if mode.name == "think_forced" or control_first:
        return RowSetup("", PRE, FORCE_THINK, budget, grace, extend)
    return RowSetup(open_think, THINK, FREE, budget, grace, extend)


def check_mode_supported(mode: Mode, control, prompt_opens_thinking: bool) -> None:
    if mode.name == "hybrid":
        raise ModeError(
            "mode hybrid decodes two models: give the base model and the steering file "
            "(python -m infer --mode hybrid --base-model DIR --steering FILE, or "
            "jaxthink.hybrid_generate(thinking, base, tokenizer, prompts, steering))"
        )
    if mode.name == "plain":
        return
    if mode.uses_control_tokens:
        if control.short is None or control.think is None:
            raise ModeError(
                f"mode {mode} needs the control tokens <short> and <think> in the tokenizer "
                "(a Thinkless-style checkpoint); this tokenizer lacks "
                + ("<short>" if control.short is None else "<think>")
            )
        if prompt_opens_thinking:
            raise ModeError(
                f"mode {mode} needs a chat template whose generation prompt leaves the first "
                "response token to the model; this one already opens <think>"
            )
    if not control.has_thinking:
        raise ModeError(
            f"mode {mode} needs the tokens <think> and </think> in the tokenizer; "
            "this tokenizer has no thinking delimiters (mode plain runs it as it is: "
            "--mode plain, or mode='plain')"
        )
