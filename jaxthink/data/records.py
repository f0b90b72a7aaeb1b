"""Training records: where they come from (`DataSource`: a JSONL/Parquet file or the demo task's
synthetic problems), the responses a record trains, read, then streamed through grain.

A record is `{prompt, answer}` for RL and evaluation, plus for SFT either `response` or the
Thinkless pair `think` (the trace, no tags) and `short` (the direct answer, e.g. `\\boxed{42}`);
`think_response`, `short_response` and `worked_response` write the pair out as responses.

The stream is the same for SFT samples and RL prompts: shuffled deterministically from a seed
(a new order every epoch), cut into shares (`shard` = (index, count): share i takes every
count-th record of the shuffled order from the i-th, so shares never overlap), repeated without
end. Which share a process reads is `jaxthink.distributed.data_shard` of the run's mesh. Its
iterators are checkpointable (`get_state` / `set_state`), which is how a resumed run continues
exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain

from jaxthink.data.arithmetic import generate_problems
from jaxthink.tokenizer import END_THINK, SHORT, THINK


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Records from a JSONL or Parquet file (`path`), or, without a path, `count` synthetic
    arithmetic problems of `levels` (jaxthink.data.arithmetic). `seed` orders the shuffle."""

    path: str = ""
    levels: tuple[int, ...] = ()
    count: int = 10000
    seed: int = 0

    def __post_init__(self):
        if not self.path and not self.levels:
            raise ValueError("give data.path (a JSONL/Parquet file) or data.levels (synthetic)")


# Records become an iterator in the main thread, in order. grain's default reads ahead with 16
# threads and polls their futures: with Python-side tokenizing that cost 0.29 s of CPU per demo
# SFT batch, against 0.08 s in order (the 2 cores are the training step's). Streams that want
# read-ahead add one thread at the end (sft_data).
IN_ORDER = grain.ReadOptions(num_threads=0)

FORMATS = (".jsonl", ".json", ".parquet")

# Models trained on these responses answer `</think>\boxed{answer}`, so budget forcing goes on
# with `\boxed{` and NoThinking closes an empty thinking block: what `python -m train` writes
# into a fresh model's config.json (jaxthink.policies.ModeOptions.for_model reads it back).
MODE_OPTIONS = {"answer_prefix": "\\boxed{", "no_think_text": ""}


def think_response(record: dict) -> str:
    """`<think>` + trace + `</think>` + `\\boxed{answer}`."""
    return THINK + record["think"] + END_THINK + record["short"]


def short_response(record: dict) -> str:
    """`<short>` + `\\boxed{answer}`."""
    return SHORT + record["short"]


def worked_response(record: dict) -> str:
    """The trace written out as a plain solution, then the answer: trace + `\\boxed{answer}`, no
    tags (a base model's pretraining text: it has seen worked solutions, never `<think>`)."""
    return record["think"] + record["short"]


def read_records(source: DataSource) -> list[dict]:
    """All records of a data source: the file's rows, or synthetic arithmetic problems."""
    if not source.path:
        return generate_problems(source.count, source.levels, seed=source.seed)
    path = Path(source.path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path {path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        raise ValueError(f"data.path {path}: unknown format; accepted: {', '.join(FORMATS)}")
    if not records:
        raise ValueError(f"data.path {path}: no records")
    return records


def record_stream(items: list, seed: int, shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
    """`items` shuffled from `seed` (reshuffled every epoch), share `shard`, repeated."""
    if not items:
        raise ValueError("no training items to stream")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"data shard {index} of {count}: expected 0 <= index < count")
    if len(items) < count:
        raise ValueError(f"{len(items)} training items cannot be cut into {count} shares")
    ds = grain.MapDataset.source(items).shuffle(seed=seed)
    if count > 1:
        ds = ds.slice(slice(index, None, count))
    return ds.repeat()


def prompt_batches(records: list[dict], per_step: int, seed: int) -> grain.IterDataset:
    """RL prompts: lists of `per_step` records, in a checkpointable stream.

    Every process reads the same whole stream: a rollout is one program over the whole mesh,
    so each process holds all of a step's prompts (and afterwards feeds its own rows of the
    samples to the update)."""
    for i, record in enumerate(records):
        if "answer" not in record or not ("prompt" in record or "question" in record):
            raise ValueError(
                f"RL record {i} has keys {sorted(record)}; expected 'prompt' (or 'question') "
                "and 'answer'"
            )
    return record_stream(records, seed).batch(per_step, batch_fn=list).to_iter_dataset(IN_ORDER)


def question_of(record: dict) -> str:
    return record["prompt"] if "prompt" in record else record["question"]
