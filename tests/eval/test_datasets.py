"""Datasets (datasets.py): JSONL and Parquet round trips per preset, auto-detection, errors."""

import json

import pytest

from jaxthink.eval.datasets import DatasetError, Problem, detect_preset, load_problems

# One record per preset, as the public benchmark files write them, and the problem it must give.
RECORDS = {
    "gsm8k": (
        {"question": "Natalia sold 48 clips...", "answer": "48 + 24 = 72\n#### 1,072"},
        Problem("gsm8k-1", "Natalia sold 48 clips...", "1072", None, {}),
    ),
    "math500": (
        {
            "problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.",
            "solution": "...",
            "answer": "\\frac{3}{4}",
            "subject": "Algebra",
            "level": 2,
            "unique_id": "test/algebra/1.json",
        },
        Problem(
            "test/algebra/1.json",
            "Compute $\\frac{1}{2}+\\frac{1}{4}$.",
            "\\frac{3}{4}",
            2,
            {
                "solution": "...",
                "subject": "Algebra",
                "level": 2,
                "unique_id": "test/algebra/1.json",
            },
        ),
    ),
    "aime": (
        {"id": 60, "problem": "Find the remainder...", "answer": 204},
        Problem("60", "Find the remainder...", "204", None, {"id": 60}),
    ),
    "jaxthink": (
        {"question": "What is 17 + 25?", "answer": "42", "level": "easy"},
        Problem("jaxthink-1", "What is 17 + 25?", "42", "easy", {"level": "easy"}),
    ),
}


def write_jsonl(path, records, raw_lines=()):
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path, records):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("preset", sorted(RECORDS))
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip_for_each_preset(tmp_path, preset, fmt):
    record, expected = RECORDS[preset]
    path = tmp_path / f"{preset}.{fmt}"
    (write_jsonl if fmt == "jsonl" else write_parquet)(path, [record, record])
    for requested in (preset, "auto"):
        problems = load_problems(path, preset=requested)
        assert len(problems) == 2
        assert problems[0] == expected
        assert problems[1].answer == expected.answer


def test_auto_detection_reads_the_first_record_keys():
    assert {name: detect_preset(record) for name, (record, _) in RECORDS.items()} == {
        name: name for name in RECORDS
    }
    assert detect_preset({"Problem": "p", "Answer": "1"}) == "aime"  # capitalised AIME files
    assert detect_preset({"prompt": "p", "target": "1"}) is None


def test_custom_fields_limit_and_case_insensitive_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "custom.jsonl", [{"prompt": f"q{i}", "target": i} for i in range(5)]
    )
    problems = load_problems(path, question_field="prompt", answer_field="target", limit=2)
    assert [(p.question, p.answer, p.id) for p in problems] == [
        ("q0", "0", "custom-1"),
        ("q1", "1", "custom-2"),
    ]
    aime = write_jsonl(tmp_path / "aime24.jsonl", [{"ID": "2024-I-1", "Problem": "p", "Answer": 7}])
    assert load_problems(aime) == [Problem("2024-I-1", "p", "7", None, {"ID": "2024-I-1"})]


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [RECORDS["gsm8k"][0]], raw_lines=["", "{oops"])
    with pytest.raises(DatasetError, match=r"broken\.jsonl:3: malformed JSON"):
        load_problems(path)


def test_missing_field_names_field_file_and_keys(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "p", "level": 1, "solution": "s"}])
    with pytest.raises(DatasetError) as error:
        load_problems(path, preset="math500")
    message = str(error.value)
    assert "'answer'" in message and "math.jsonl:1" in message
    assert "['level', 'problem', 'solution']" in message


def test_other_errors_say_what_would_be_accepted(tmp_path):
    unknown = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p"}])
    with pytest.raises(DatasetError, match="cannot tell the dataset preset"):
        load_problems(unknown)
    with pytest.raises(DatasetError, match="unknown preset 'gsm9k'"):
        load_problems(unknown, preset="gsm9k")
    with pytest.raises(DatasetError, match="expected .jsonl or .parquet"):
        load_problems(write_jsonl(tmp_path / "x.json", [{}]))
    with pytest.raises(DatasetError, match="no such file"):
        load_problems(tmp_path / "missing.jsonl")
    no_mark = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "72"}])
    with pytest.raises(DatasetError, match=r"g\.jsonl:1: a GSM8K answer must end with '####"):
        load_problems(no_mark, preset="gsm8k")
    assert load_problems(write_jsonl(tmp_path / "empty.jsonl", [])) == []
