"""Data for jaxthink: training records and where they come from, the demo task's arithmetic
problems and its character tokenizer.

Owns this package's public names: `records` (data sources, the responses a record trains, the
grain streams), `arithmetic` (levels, traces, split, generation, JSONL) and `char_tokenizer`
(the demo model's Hugging Face tokenizer directory).
"""

from jaxthink.data.arithmetic import (
    LEVELS,
    Level,
    ProblemKind,
    boxed,
    canonical_question,
    format_question,
    generate_problems,
    make_record,
    parse_question,
    question_from_text,
    read_jsonl,
    split_of,
    think_text,
    trace_lines,
    trace_result,
    true_answer,
    write_jsonl,
)
from jaxthink.data.char_tokenizer import build_char_tokenizer
from jaxthink.data.records import short_response, think_response, worked_response

__all__ = [
    "LEVELS",
    "Level",
    "ProblemKind",
    "boxed",
    "build_char_tokenizer",
    "canonical_question",
    "format_question",
    "generate_problems",
    "make_record",
    "parse_question",
    "question_from_text",
    "read_jsonl",
    "short_response",
    "split_of",
    "think_response",
    "think_text",
    "trace_lines",
    "trace_result",
    "true_answer",
    "worked_response",
    "write_jsonl",
]
