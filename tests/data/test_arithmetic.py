"""Specification of the demo arithmetic task: traces, levels, split, generation, records."""

import json
import re

import pytest

from jaxthink.data import arithmetic as ar
from jaxthink.data.records import short_response, think_response, worked_response

PER_LEVEL = 2000

# --- a reference checker that reads traces without the solver ----------------------------------

_ADD = re.compile(r"(\d)\+(\d)\+(\d)=(\d\d)\|(\d*)\+(\d*)\|(\d+)")
_SUB = re.compile(r"(\d)-(\d)-(\d)=([01])(\d)\|(\d*)-(\d*)\|(\d+)")
_MUL = re.compile(r"(\d)\*(\d)\+(\d)=(\d\d)\|(\d*)\|(\d+)")
_MAC = re.compile(r"(\d)\*(\d)=(\d\d)\+(\d)\+(\d)=(\d\d)\|(\d*)\|(\d*)\|(\d+)")
_HEADER = re.compile(r"(\d+)\*(\d)\|(\d*)(\|\d*\|\d+)?")
_SIGN = re.compile(r"([+-])\|(\d+)-(\d+)")


def check_line(line: str) -> None:
    """Each line's own arithmetic holds (digit lookups, carries, borrows, products)."""
    if m := _ADD.fullmatch(line):
        x, y, c, cw = int(m[1]), int(m[2]), int(m[3]), int(m[4])
        assert x + y + c == cw and c in (0, 1), line
    elif m := _SUB.fullmatch(line):
        x, y, b, b_out, w = (int(m[i]) for i in range(1, 6))
        assert x - y - b + 10 * b_out == w and 0 <= w <= 9 and b in (0, 1), line
    elif m := _MUL.fullmatch(line):
        x, d, c, cw = int(m[1]), int(m[2]), int(m[3]), int(m[4])
        assert x * d + c == cw, line
    elif m := _MAC.fullmatch(line):
        x, d, p, t, c, cw = (int(m[i]) for i in range(1, 7))
        assert x * d == p and p + t + c == cw, line
    else:
        assert _HEADER.fullmatch(line) or _SIGN.fullmatch(line) or re.fullmatch(r"=-?\d+", line), (
            f"unrecognised trace line {line!r}"
        )


def reference_value(question: str) -> int:
    a, op, b = re.fullmatch(r"(\d+)([+*-])(\d+)", question).groups()
    a, b = int(a), int(b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


# --- traces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", sorted(ar.LEVELS))
def test_traces_reach_the_true_answer_at_every_level(level):
    for record in ar.generate_problems(PER_LEVEL, [level], seed=level):
        lines = record["think"].splitlines()
        for line in lines:
            check_line(line)
        final = re.split(r"[|=]", lines[-1])[-1]
        assert final == record["answer"] == str(reference_value(record["question"])), record


def test_trace_handles_operands_in_either_order_and_carries_out():
    for question in ["967+48213", "9+99999", "7*347", "99*9999", "1-99999", "100000-1", "5-5"]:
        assert ar.trace_result(ar.think_text(question)) == str(reference_value(question))


def test_addition_trace_is_the_v1_format():
    assert ar.think_text("48213+967") == (
        "3+7+0=10|4821+96|0\n"
        "1+6+1=08|482+9|80\n"
        "2+9+0=11|48+|180\n"
        "8+0+1=09|4+|9180\n"
        "4+0+0=04|+|49180\n"
    )


def test_addition_puts_the_last_carry_in_front():
    assert ar.trace_lines("95+7") == ["5+7+0=12|9+|2", "9+0+1=10|+|102"]


def test_subtraction_swaps_negative_differences_and_strips_leading_zeros():
    assert ar.trace_lines("47-503") == [
        "-|503-47",
        "3-7-0=16|50-4|6",
        "0-4-1=15|5-|56",
        "5-0-1=04|-|456",
        "=-456",
    ]
    assert ar.trace_lines("1000-999")[-2:] == ["1-0-1=00|-|0001", "=1"]
    assert ar.trace_lines("5-5")[-1] == "=0"


def test_multiplication_adds_each_block_into_the_running_total():
    assert ar.trace_lines("347*26") == [
        "347*6|2",
        "7*6+0=42|34|2",
        "4*6+4=28|3|82",
        "3*6+2=20||2082",
        "347*2||208|2",
        "7*2=14+8+0=22|34|20|22",
        "4*2=08+0+2=10|3|2|022",
        "3*2=06+2+1=09|||9022",
    ]


def test_responses_wrap_trace_and_answer_in_the_control_tokens():
    record = ar.make_record("9+5", level=1)
    assert think_response(record) == "<think>9+5+0=14|+|14\n</think>\\boxed{14}"
    assert short_response(record) == "<short>\\boxed{14}"
    assert worked_response(record) == "9+5+0=14|+|14\n\\boxed{14}"  # a base model's text


def test_records_hold_question_answer_level_and_paired_responses():
    record = ar.make_record("47-503", level=2)
    assert record == {
        "question": "47-503",
        "prompt": "47-503",
        "answer": "-456",
        "level": 2,
        "think": ar.think_text("47-503"),
        "short": "\\boxed{-456}",
    }


def test_bad_questions_and_levels_are_named_in_the_error():
    with pytest.raises(ValueError, match="'4/2'"):
        ar.parse_question("4/2")
    with pytest.raises(ValueError, match="level 9"):
        ar.generate_problems(1, [9])
    with pytest.raises(ValueError, match="split 'dev'"):
        ar.generate_problems(1, [1], split="dev")


# --- levels ----------------------------------------------------------------------------------


def _fits(kind, a, b):
    def within(n, rng):
        return rng[0] <= len(str(n)) <= rng[1]

    orders = [(a, b), (b, a)] if kind.either_order else [(a, b)]
    return any(within(x, kind.digits_a) and within(y, kind.digits_b) for x, y in orders)


@pytest.mark.parametrize("level", sorted(ar.LEVELS))
def test_level_operands_have_the_digit_counts_of_one_of_its_kinds(level):
    for record in ar.generate_problems(500, [level], seed=0):
        a, op, b = ar.parse_question(record["question"])
        assert a >= 1 and b >= 1
        kinds = [k for k in ar.LEVELS[level].kinds if k.op == op]
        assert any(_fits(k, a, b) for k in kinds), record["question"]


def test_level_table_grows_from_near_copy_answers_to_multi_digit_multiplication():
    assert sorted(ar.LEVELS) == [1, 2, 3, 4, 5, 6]
    assert {r["question"][-3:] for r in ar.generate_problems(50, [1])} == {"*10"}
    assert {r["question"][-4:] for r in ar.generate_problems(50, [2])} == {"*100"}
    (kind,) = ar.LEVELS[3].kinds  # a one-digit number added to a long one
    assert (kind.op, kind.digits_a, kind.digits_b) == ("+", (5, 7), (1, 1))
    assert {k.op for k in ar.LEVELS[4].kinds} == {"+", "-"}
    assert all(k.op == "*" and k.digits_b[0] >= 2 for k in ar.LEVELS[6].kinds)


def test_easy_levels_think_longer_than_the_multiplications_of_level_5():
    stats = ar.level_stats(n=500)
    assert min(stats[level]["mean_trace"] for level in (1, 2, 3)) > stats[5]["mean_trace"] + 30


def test_fixed_second_operands_must_have_the_kinds_digit_count():
    with pytest.raises(ValueError, match=r"b_values \(100,\) outside digits_b 2-2"):
        ar.ProblemKind("*", (3, 4), (2, 2), b_values=(100,))


def test_hardest_traces_stay_short_enough_for_a_tiny_model():
    stats = ar.level_stats(n=500)
    assert max(s["mean_trace"] for s in stats.values()) < 210
    assert max(s["max_trace"] for s in stats.values()) < 256


def test_levels_take_turns():
    records = ar.generate_problems(9, [1, 4, 6], seed=0)
    assert [r["level"] for r in records] == [1, 4, 6] * 3


# --- determinism and split -------------------------------------------------------------------


def test_generation_is_deterministic_from_the_seed():
    assert ar.generate_problems(200, seed=3) == ar.generate_problems(200, seed=3)
    assert ar.generate_problems(200, seed=3) != ar.generate_problems(200, seed=4)


def test_train_and_test_never_share_a_problem_across_seeds():
    train = {
        ar.canonical_question(r["question"])
        for seed in (0, 1)
        for r in ar.generate_problems(3000, seed=seed)
    }
    test = {
        ar.canonical_question(r["question"])
        for seed in (0, 2)
        for r in ar.generate_problems(480, seed=seed, split="test")
    }
    assert train and test and not train & test


def test_split_is_a_function_of_the_problem_alone():
    assert ar.split_of("48213+967") == ar.split_of("967+48213")
    assert ar.split_of("347*26") == ar.split_of("26*347")
    all_l1 = [f"{a}+{b}" for a in range(1, 100) for b in range(1, 100)]
    share = sum(ar.split_of(q) == "test" for q in all_l1) / len(all_l1)
    assert 0.07 < share < 0.13


def test_test_split_problems_are_unique():
    questions = [r["question"] for r in ar.generate_problems(480, seed=0, split="test")]
    assert len(set(questions)) == len(questions)


def test_write_jsonl_round_trips(tmp_path):
    records = ar.generate_problems(12, seed=0)
    path = ar.write_jsonl(records, tmp_path / "sub" / "train.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records == ar.read_jsonl(path)


@pytest.mark.parametrize(
    "text, question",
    [
        ("What is 4821 + 967?", "4821+967"),
        ("347 x 26", "347*26"),
        ("12\u00d73=?", "12*3"),
        ("1,000 - 999", "1000-999"),
        ("48213-9672", "48213-9672"),
    ],
)
def test_questions_are_read_from_free_text(text, question):
    assert ar.question_from_text(text) == question


def test_text_without_a_question_is_refused_with_an_example():
    with pytest.raises(ValueError, match="'hello'.*e.g. 'What is 4821 \\+ 967\\?'"):
        ar.question_from_text("hello")


def test_a_level_that_runs_out_of_unique_test_problems_is_named():
    # level 2 ("times 100" on 3 digits) has 900 problems, about 90 of them in the test split
    with pytest.raises(ValueError, match="level 2: ran out of unique test problems"):
        ar.generate_problems(200, [2], split="test")
