"""Evaluation problems from local JSONL / Parquet files, read through grain.

Owns the `Problem` record, the field-name presets of common benchmarks (gsm8k, math500, aime, and
jaxthink's own synthetic task), preset auto-detection, and `load_problems`. Files are local: no
dataset is ever downloaded. Errors name the file, the line (JSONL) or record, and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grain

# Fields that, when present, give a problem its id (MATH-500 calls it `unique_id`).
_ID_FIELDS = ("id", "unique_id", "problem_id", "idx")


class DatasetError(ValueError):
    """A dataset file that cannot be read as problems."""


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: `answer` is the gold answer string, `meta` the record's other fields."""

    id: str
    question: str
    answer: str
    level: Any = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """How a benchmark names its fields, and how its gold answer is written."""

    name: str
    question_field: str
    answer_field: str
    level_field: str | None = None
    gold: Callable[[Any], str] = lambda answer: str(answer).strip()


def gsm8k_gold(answer: Any) -> str:
    """GSM8K's gold is the text after `####` at the end of the worked solution, without commas."""
    text = str(answer)
    if "####" not in text:
        raise ValueError("a GSM8K answer must end with '#### <number>'")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


PRESETS = {
    "gsm8k": Preset("gsm8k", "question", "answer", gold=gsm8k_gold),
    "math500": Preset("math500", "problem", "answer", level_field="level"),
    "aime": Preset("aime", "problem", "answer"),
    "jaxthink": Preset("jaxthink", "question", "answer", level_field="level"),
}


def load_problems(
    path: str | Path,
    preset: str = "auto",
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a `.jsonl` or `.parquet` file.

    `preset` is a name in PRESETS or "auto" (chosen from the first record's keys);
    `question_field` / `answer_field` override the preset's field names (with "auto" and both
    given, the answer is used as written). Field names also match case-insensitively (`Problem`).
    """
    path = Path(path)
    records = _record_dataset(path)
    if limit is not None:
        records = records[:limit]
    first = next(iter(records), None)
    if first is None:
        return []
    chosen = _choose_preset(path, first[1], preset, question_field, answer_field)
    problems = records.map(lambda numbered: _to_problem(path, numbered, chosen))
    return list(problems)


def detect_preset(record: dict) -> str | None:
    """The preset a record's keys suggest, or None."""
    keys = {key.lower() for key in record}
    if {"problem", "answer"} <= keys:
        return "math500" if "level" in keys else "aime"
    if {"question", "answer"} <= keys:
        answer = _field(record, "answer")
        return "gsm8k" if isinstance(answer, str) and "####" in answer else "jaxthink"
    return None


# ---------------------------------------------------------------------------------------------
# Reading: every format becomes a grain MapDataset of (1-based line or record number, dict).


def _record_dataset(path: Path) -> grain.MapDataset:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_dataset(path)
    if suffix == ".parquet":
        return _parquet_dataset(path)
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; expected .jsonl or .parquet")


def _jsonl_dataset(path: Path) -> grain.MapDataset:
    with path.open(encoding="utf-8") as file:
        lines = [(number, line) for number, line in enumerate(file, start=1) if line.strip()]
    return grain.MapDataset.source(lines).map(lambda numbered: _parse_json_line(path, *numbered))


def _parse_json_line(path: Path, number: int, line: str) -> tuple[int, dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}:{number}: malformed JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return number, record


def _parquet_dataset(path: Path) -> grain.MapDataset:
    try:
        import pyarrow  # noqa: F401  (grain's Parquet reader needs it)
    except ImportError:
        raise DatasetError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    # grain's Parquet reader iterates rows as dicts of NumPy values; evaluation sets are small,
    # so they are read once into a random-access MapDataset like the JSONL ones.
    rows = grain.experimental.ParquetIterDataset(str(path))
    records = [(number, _plain_record(row)) for number, row in enumerate(rows, start=1)]
    return grain.MapDataset.source(records)


def _plain_record(row: dict) -> dict:
    """NumPy scalars (Parquet cells) -> Python values, so answers print as `42`, not `np.int64`."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}


# ---------------------------------------------------------------------------------------------
# Records -> problems


def _choose_preset(path, first_record, preset, question_field, answer_field) -> Preset:
    if preset == "auto":
        if question_field and answer_field:
            return Preset("custom", question_field, answer_field)
        name = detect_preset(first_record)
        if name is None:
            raise DatasetError(
                f"{path}: cannot tell the dataset preset from the keys {sorted(first_record)}; "
                f"pass preset= one of {sorted(PRESETS)} or question_field= and answer_field="
            )
        chosen = PRESETS[name]
    elif preset in PRESETS:
        chosen = PRESETS[preset]
    else:
        raise DatasetError(
            f"unknown preset {preset!r}; expected 'auto' or one of {sorted(PRESETS)}"
        )
    return Preset(
        chosen.name,
        question_field or chosen.question_field,
        answer_field or chosen.answer_field,
        chosen.level_field,
        chosen.gold,
    )


def _to_problem(path: Path, numbered: tuple[int, dict], preset: Preset) -> Problem:
    number, record = numbered
    where = f"{path}: record {number}" if path.suffix.lower() == ".parquet" else f"{path}:{number}"
    question = _required(record, preset.question_field, where, preset)
    answer = _required(record, preset.answer_field, where, preset)
    try:
        gold = preset.gold(answer)
    except ValueError as error:
        raise DatasetError(f"{where}: {error} (preset {preset.name})") from None
    used = {preset.question_field.lower(), preset.answer_field.lower()}
    level = _field(record, preset.level_field) if preset.level_field else None
    record_id = next((_field(record, key) for key in _ID_FIELDS if _has(record, key)), None)
    return Problem(
        id=str(record_id) if record_id is not None else f"{path.stem}-{number}",
        question=str(question),
        answer=gold,
        level=level,
        meta={key: value for key, value in record.items() if key.lower() not in used},
    )


def _required(record: dict, name: str, where: str, preset: Preset) -> Any:
    if not _has(record, name):
        raise DatasetError(
            f"{where}: missing field {name!r} (preset {preset.name}); "
            f"available keys: {sorted(record)}"
        )
    value = _field(record, name)
    if value is None:
        raise DatasetError(f"{where}: field {name!r} is null (preset {preset.name})")
    return value


def _has(record: dict, name: str) -> bool:
    return name in record or name.lower() in _lower_keys(record)


def _field(record: dict, name: str) -> Any:
    """record[name], falling back to a case-insensitive match (`Problem` for `problem`)."""
    if name in record:
        return record[name]
    return record.get(_lower_keys(record).get(name.lower()))


def _lower_keys(record: Iterable[str]) -> dict[str, str]:
    return {key.lower(): key for key in record}
