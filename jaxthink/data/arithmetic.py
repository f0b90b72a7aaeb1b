"""The demo task: arithmetic problems by difficulty level, with step-by-step column traces.

Owns the level table, the trace writer (the "thinking"), the train/test split and problem
generation. A problem is a plain question string such as `48213+967`; the chat template wraps it.
The short response is `<short>\\boxed{49180}`, the thinking response is
`<think>` + trace + `</think>\\boxed{49180}`: every trace line carries its state, so each lookup
sits next to a marker and the answer is a copy of the last state.

Addition ("v1" of the demo notes). Column by column from the right: digit + digit + carry =
carry-out and written digit, then what is left of both operands, then the result so far. On the
last column the carry goes in front of the result.

    48213+967           9+5 (carry in front)
    3+7+0=10|4821+96|0  9+5+0=14|+|14
    1+6+1=08|482+9|80
    2+9+0=11|48+|180
    8+0+1=09|4+|9180
    4+0+0=04|+|49180

Subtraction. A sign line first: `+|X-Y` or, when the difference is negative, `-|X-Y` with the
operands swapped so that X >= Y. Then columns: digit - digit - borrow = borrow-out and written
digit, what is left, the result so far. Last, `=` and the signed result without leading zeros.

    47-503              1000-999
    -|503-47            +|1000-999
    3-7-0=16|50-4|6     0-9-0=11|100-99|1
    0-4-1=15|5-|56      0-9-1=10|10-9|01
    5-0-1=04|-|456      0-9-1=10|1-|001
    =-456               1-0-1=00|-|0001
                        =1

Multiplication. One block per multiplier digit, from the right. A block header names the
multiplicand, the digit and the multiplier digits still to do. The first block multiplies with
carries: digit * d + carry = carry-out and written digit, what is left of the multiplicand, the
result so far. Later blocks multiply and add into the running total at once: the header also
splits the running total into the part still to add into (`|208|`) and the digits that are
already final (`|2`); a line shows the product, then adds the total's digit and the carry, then
what is left of the multiplicand, of the total, and the result so far. On the last column the
whole sum goes in front. No separate column addition of partial products is needed.

    347*26
    347*6|2
    7*6+0=42|34|2
    4*6+4=28|3|82
    3*6+2=20||2082
    347*2||208|2
    7*2=14+8+0=22|34|20|22
    4*2=08+0+2=10|3|2|022
    3*2=06+2+1=09|||9022

Levels (`LEVELS`; a level samples one of its kinds uniformly, then the digit counts uniformly,
then the operands uniformly among numbers with those digit counts, from 1 up; a kind with
`b_values` takes its second operand from those). Trace lengths in characters (= tokens of the
character tokenizer; newlines included), measured over 4000 train problems per level, seed 0
(`level_stats()`). A thinking response is trace + 10 + answer tokens,
a short response 9 + answer tokens (`<think>`, `</think>`, `<short>` are one token each).

    level  name                          kinds (digits)          trace mean (per kind)  max  answer
    1      times 10                      * 3-4,10                150.0                   174  4.5
    2      times 100                     * 3,100                 208.0                   208  5.0
    3      1 digit added to 5-7 digits   + 5-7,1                 109.0                   133  6.0
    4      add/sub 3-5 digits            + 3-5,3-5 | - 3-5,1-5    84.6  (78.5 | 90.9)    117  4.7
    5      mul by 1 digit, 2x2 mul       * 2-3,1   | * 2,2        63.7  (41.1 | 85.9)     87  3.5
    6      3x2 and 4x2 mul               * 3,2     | * 4,2       153.9                   180  5.3

The easy levels take a long walk (every column of the long operand, or two or three blocks of
partial products for a multiplier of 10 or 100) to an answer that mostly copies the question: the
easy problems a reasoning model overthinks. Level 2 has only 900 problems (about 90 of them in
the test split), so a test set of unique problems holds at most about 90 per level. Levels 4-6
are where a direct answer has no chance at this size.

The split is a function of the problem alone (a hash of its canonical question), so train and
test never share a problem, whatever the seed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

OPS = ("+", "-", "*")
SPLITS = ("train", "test")
TEST_PERCENT = 10  # share of all problems (by hash) that belong to the test split


@dataclass(frozen=True)
class ProblemKind:
    """One family of problems: an operator and inclusive digit-count ranges of its operands.

    With `either_order` the two operands are written in a random order (for `-`, this makes
    about half of the differences negative); otherwise the `digits_a` operand comes first.
    """

    op: str
    digits_a: tuple[int, int]
    digits_b: tuple[int, int]
    either_order: bool = False
    b_values: tuple[int, ...] = ()  # the second operand is one of these (e.g. 10) if given

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"problem kind: op {self.op!r} is not one of {OPS}")
        for lo, hi in (self.digits_a, self.digits_b):
            if not 1 <= lo <= hi:
                raise ValueError(f"problem kind: digit range ({lo}, {hi}) needs 1 <= lo <= hi")
        lo, hi = self.digits_b
        if any(not lo <= len(str(b)) <= hi for b in self.b_values):
            raise ValueError(f"problem kind: b_values {self.b_values} outside digits_b {lo}-{hi}")


@dataclass(frozen=True)
class Level:
    """A difficulty level: a name and the kinds of problem it draws from (uniformly)."""

    name: str
    kinds: tuple[ProblemKind, ...]


def _either(op, digits_a, digits_b):
    return ProblemKind(op, digits_a, digits_b, either_order=True)


# Easy levels have long traces and near-copy direct answers (see the module doc); hard levels
# (multi-digit multipliers) need the trace.
LEVELS: dict[int, Level] = {
    1: Level("times 10", (ProblemKind("*", (3, 4), (2, 2), b_values=(10,)),)),
    2: Level("times 100", (ProblemKind("*", (3, 3), (3, 3), b_values=(100,)),)),
    3: Level("1 digit added to 5-7 digits", (_either("+", (5, 7), (1, 1)),)),
    4: Level("add/sub 3-5 digits", (_either("+", (3, 5), (3, 5)), _either("-", (3, 5), (1, 5)))),
    5: Level(
        "mul by 1 digit, 2x2 mul",
        (ProblemKind("*", (2, 3), (1, 1)), ProblemKind("*", (2, 2), (2, 2))),
    ),
    6: Level(
        "3x2 and 4x2 mul", (ProblemKind("*", (3, 3), (2, 2)), ProblemKind("*", (4, 4), (2, 2)))
    ),
}

_QUESTION = re.compile(r"(\d+)([+\-*])(\d+)")


# --- questions and answers ---------------------------------------------------------------------


def format_question(a: int, op: str, b: int) -> str:
    """`48213+967`: the plain question string (no `Q:`; the chat template adds it)."""
    if op not in OPS or a < 0 or b < 0:
        raise ValueError(f"question: need non-negative operands and an op in {OPS}, got {a}{op}{b}")
    return f"{a}{op}{b}"


def parse_question(question: str) -> tuple[int, str, int]:
    """`"48213+967"` -> `(48213, "+", 967)`."""
    match = _QUESTION.fullmatch(question.strip())
    if not match:
        raise ValueError(
            f"question {question!r}: expected <digits><op><digits> with op one of {OPS}, "
            "e.g. '48213+967'"
        )
    return int(match[1]), match[2], int(match[3])


def true_answer(question: str) -> int:
    a, op, b = parse_question(question)
    return a + b if op == "+" else a - b if op == "-" else a * b


def boxed(answer: int | str) -> str:
    return "\\boxed{" + str(answer) + "}"


# --- traces ------------------------------------------------------------------------------------


def trace_lines(question: str) -> list[str]:
    """The thinking trace of `question`, one state-carrying line per step (see module doc)."""
    a, op, b = parse_question(question)
    if op == "+":
        return _add_lines(str(a), str(b))
    if op == "-":
        return _sub_lines(a, b)
    return _mul_lines(str(a), str(b))


def think_text(question: str) -> str:
    """The trace as it sits between `<think>` and `</think>`: lines, each ending in a newline."""
    return "".join(line + "\n" for line in trace_lines(question))


def trace_result(trace: str) -> str:
    """The answer a trace arrives at: the result field of its last line (after the last `|`/`=`)."""
    last = trace.rstrip("\n").rsplit("\n", 1)[-1]
    return re.split(r"[|=]", last)[-1]


def _pop(digits: str) -> tuple[int, str]:
    """The last digit (0 once nothing is left) and what is left before it."""
    return (int(digits[-1]), digits[:-1]) if digits else (0, "")


def _add_lines(a: str, b: str) -> list[str]:
    lines, result, carry = [], "", 0
    while a or b:
        (x, a), (y, b) = _pop(a), _pop(b)
        total = x + y + carry
        written = str(total) if not (a or b) else str(total % 10)  # last column: carry in front
        result = written + result
        lines.append(f"{x}+{y}+{carry}={total:02d}|{a}+{b}|{result}")
        carry = total // 10
    return lines


def _sub_lines(a: int, b: int) -> list[str]:
    sign = "-" if a < b else "+"
    top, bottom = (str(b), str(a)) if a < b else (str(a), str(b))
    lines, result, borrow = [f"{sign}|{top}-{bottom}"], "", 0
    while top:
        (x, top), (y, bottom) = _pop(top), _pop(bottom)
        diff = x - y - borrow
        borrow_out = int(diff < 0)
        result = str(diff + 10 * borrow_out) + result
        lines.append(
            f"{x}-{y}-{borrow}={borrow_out}{diff + 10 * borrow_out}|{top}-{bottom}|{result}"
        )
        borrow = borrow_out
    value = result.lstrip("0") or "0"
    lines.append("=" + ("-" + value if sign == "-" and value != "0" else value))
    return lines


def _mul_lines(a: str, b: str) -> list[str]:
    lines, total, rest_b = [], "", b
    for shift in range(len(b)):
        d, rest_b = _pop(rest_b)
        if shift == 0:
            lines.append(f"{a}*{d}|{rest_b}")
            total = _mul_block(a, d, lines)
        else:
            high, low = total[:-shift], total[-shift:]
            lines.append(f"{a}*{d}|{rest_b}|{high}|{low}")
            total = _mul_add_block(a, d, high, low, lines)
    return lines


def _mul_block(a: str, d: int, lines: list[str]) -> str:
    """a * d with carries; appends its lines and returns the product's digits."""
    result, carry = "", 0
    while a:
        x, a = _pop(a)
        total = x * d + carry
        result = (str(total) if not a else str(total % 10)) + result
        lines.append(f"{x}*{d}+{carry}={total:02d}|{a}|{result}")
        carry = total // 10
    return result


def _mul_add_block(a: str, d: int, high: str, low: str, lines: list[str]) -> str:
    """high*10^k + low + a*d*10^k: the running total plus this block's shifted partial product."""
    result, carry = low, 0
    while a:
        (x, a), (t, high) = _pop(a), _pop(high)
        total = x * d + t + carry
        result = (str(total) if not a else str(total % 10)) + result
        lines.append(f"{x}*{d}={x * d:02d}+{t}+{carry}={total:02d}|{a}|{high}|{result}")
        carry = total // 10
    assert not high, "the running total never outlasts the multiplicand"
    return result


# --- records -----------------------------------------------------------------------------------


def make_record(question: str, level: int) -> dict:
    """The record of one problem: `question`, `prompt` (= question, the user turn's content),
    `answer` (the gold number as a string), `level`, `think` (the trace without tags) and
    `short` (`\\boxed{answer}`)."""
    answer = str(true_answer(question))
    return {
        "question": question,
        "prompt": question,
        "answer": answer,
        "level": level,
        "think": think_text(question),
        "short": boxed(answer),
    }


# --- split and generation ----------------------------------------------------------------------


_LOOSE_QUESTION = re.compile(r"(\d+)\s*([+\-*x\u00d7])\s*(\d+)")


def question_from_text(text: str) -> str:
    """The task's question in free text: `"What is 4821 + 967?"` -> `"4821+967"` (x and the
    multiplication sign read as `*`)."""
    match = _LOOSE_QUESTION.search(text.replace(",", ""))
    if not match:
        raise ValueError(
            f"prompt {text!r}: the demo model answers sums, differences and products of whole "
            "numbers, e.g. 'What is 4821 + 967?' or '347*26'"
        )
    op = "*" if match[2] in "x\u00d7" else match[2]
    return format_question(int(match[1]), op, int(match[3]))


def canonical_question(question: str) -> str:
    """The question with the operands of `+` and `*` in increasing order (`967+48213`)."""
    a, op, b = parse_question(question)
    if op in "+*" and a > b:
        a, b = b, a
    return format_question(a, op, b)


def split_of(question: str) -> str:
    """`"train"` or `"test"`, decided by a hash of the canonical question alone."""
    digest = hashlib.sha256(canonical_question(question).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


def _sample_operand(rng: random.Random, digits: tuple[int, int]) -> int:
    n = rng.randint(*digits)
    return rng.randint(1 if n == 1 else 10 ** (n - 1), 10**n - 1)


def sample_question(rng: random.Random, level: int) -> str:
    """One question of `level` (either split)."""
    kind = rng.choice(_level(level).kinds)
    a = _sample_operand(rng, kind.digits_a)
    b = rng.choice(kind.b_values) if kind.b_values else _sample_operand(rng, kind.digits_b)
    if kind.either_order and rng.random() < 0.5:
        a, b = b, a
    return format_question(a, kind.op, b)


def generate_problems(
    n: int,
    levels: Iterable[int] | None = None,
    seed: int = 0,
    split: str = "train",
    *,
    unique: bool | None = None,
) -> list[dict]:
    """`n` problem records of `split`, deterministic from `seed`.

    Levels take turns: record i has level `levels[i % len(levels)]` (all levels by default), so
    `n = 100 * len(levels)` gives 100 per level. With `unique` (default: only for the test split)
    no question repeats; small levels can run out of unique problems, which raises ValueError.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    levels = list(LEVELS if levels is None else levels)
    if not levels:
        raise ValueError(
            "generate_problems: levels is empty; expected some of " + str(list(LEVELS))
        )
    for level in levels:
        _level(level)
    unique = split == "test" if unique is None else unique
    rng, seen, records = random.Random(seed), set(), []
    for i in range(n):
        level = levels[i % len(levels)]
        for _ in range(100_000):
            question = sample_question(rng, level)
            if split_of(question) == split and not (unique and question in seen):
                break
        else:
            raise ValueError(f"level {level}: ran out of unique {split} problems after {i} records")
        seen.add(question)
        records.append(make_record(question, level))
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line (UTF-8); creates parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _level(level: int) -> Level:
    if level not in LEVELS:
        raise ValueError(f"level {level!r}: expected one of {sorted(LEVELS)}")
    return LEVELS[level]


def level_stats(levels: Sequence[int] | None = None, n: int = 4000, seed: int = 0) -> dict:
    """Mean and max trace length and mean answer length (characters) per level: the doc table."""
    stats = {}
    for level in LEVELS if levels is None else levels:
        recs = generate_problems(n, [level], seed)
        lengths = [len(r["think"]) for r in recs]
        stats[level] = {
            "mean_trace": sum(lengths) / n,
            "max_trace": max(lengths),
            "mean_answer": sum(len(r["answer"]) for r in recs) / n,
        }
    return stats
