"""Evaluation runs: modes on a problem set, graded, summarised and resumable
(`python -m infer --data FILE --out DIR` is its command line).

Every (mode, problem, sample) becomes one line of DIR/samples.jsonl: its text, token counts,
extracted answer and verdict. Lines are appended and flushed as soon as a problem's samples are
graded, so a killed run loses at most the problem in flight; running again reads the file and
generates only what is missing. When every sample is there, report.py writes summary.json,
summary.md, pass_at_k.png and pareto.png.

Every (mode, problem) is one request to the continuous-batching engine (all modes and problems in
one run, each problem's lines written when its last sample ends). Reproducibility: a problem's
seed is derived from (seed, problem id) and sample j draws from fold_in(key(that seed), j),
whatever its slot or neighbours, so sample j is the same however the work was split into runs.
Every mode uses the same derived seed (common random numbers: modes are compared on the same
noise, and a budget sweep's runs share their first thinking tokens). DIR/run.json records the
settings that decide the samples; resuming with different ones is refused rather than mixing two
runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxthink.decode.generate import GenerateConfig, Generation, settings_from, stream
from jaxthink.eval import report
from jaxthink.eval.datasets import Problem
from jaxthink.eval.grade import Verdict, grade_many
from jaxthink.policies import Mode, ModeOptions, parse_modes

SAMPLES_JSONL, RUN_JSON, LOCK = "samples.jsonl", "run.json", ".lock"
# The settings a resumed run must share with the samples already on disk.
SAMPLE_SETTINGS = (
    "n",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "options",
    "chat",
    "system",
)
SETTING_DEFAULTS = {"chat": True, "system": None}  # of keys an older run.json may lack

Key = tuple[str, str, int]  # (mode, problem id, sample index)


def evaluate(
    model,
    tokenizer,
    problems: Sequence[Problem],
    modes: str | Mode | Sequence[str | Mode],
    settings: GenerateConfig | None = None,
    *,
    out_dir: str | Path,
    options: ModeOptions | None = None,
    progress: bool = True,
    info: dict | None = None,
    generate_fn=None,
    chat: bool = True,
    system: str | None = None,
    **fields,
) -> dict:
    """Samples, grades and summarises every mode on every problem; returns the summary.

    `modes` are Modes or mode strings (a string may sweep: `think_budget=128,256`). `settings`
    is a `GenerateConfig` (or its fields as keywords: n, max_new_tokens, temperature, ...; `seed`
    is one seed, from which each problem's is derived). Outputs go to `out_dir` (see the module
    docstring); an `out_dir` holding an interrupted run is resumed. `info` (e.g. the data and
    model paths) is recorded in run.json and the summary. `generate_fn` stands in for
    `jaxthink.generate` if given (the hybrid decode passes its own). `chat=False` sends the
    questions without the chat template; `system` adds a system turn (as in `generate`).
    """
    modes = _as_modes(modes)
    _check_problems(problems)
    settings = settings_from(settings, fields)
    n, seed = settings.n, settings.seed
    options = options or ModeOptions.for_model(model.cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompt = {"chat": chat, "system": system}
    recorded = {
        name: getattr(settings, name)
        for name in SAMPLE_SETTINGS
        if name not in prompt and name != "options"
    }
    recorded["options"] = dataclasses.asdict(options)
    recorded.update(prompt)
    if generate_fn is not None and system is not None:
        raise ValueError("system: not available with the hybrid decode")
    with _sole_writer(out):
        run = _claim_run(out / RUN_JSON, recorded, info or {})
        samples_path = out / SAMPLES_JSONL
        done = read_samples(samples_path)
        _check_same_problems(samples_path, done, problems)
        todo = [
            (mode, problem, missing)
            for mode in modes
            for problem in problems
            if (missing := [j for j in range(n) if (str(mode), problem.id, j) not in done])
        ]
        total = len(modes) * len(problems) * n
        with _progress_bar(total, sum(len(m) for _, _, m in todo), progress) as bar:
            if not todo:
                finished = iter(())
            elif generate_fn is None:
                finished = _stream_problems(
                    model, tokenizer, todo, seed, settings, options, chat, system
                )
            else:
                finished = (
                    _sample_problems(
                        model, tokenizer, chunk, seed, settings, options, generate_fn, chat
                    )
                    for chunk in _chunks(todo, max(1, (settings.slots or 64) // n))
                )
            for rows in finished:
                bar.set_description(rows[0]["mode"], refresh=False)
                _append(samples_path, rows)
                done.update({_key(row): row for row in rows})
                bar.update(len(rows))
        rows_by_mode = {
            str(mode): [[done[(str(mode), p.id, j)] for j in range(n)] for p in problems]
            for mode in modes
        }
        summary = report.summarize(rows_by_mode, run)
        report.write_report(summary, out)
    return summary


# ---------------------------------------------------------------------------------------------
# One problem under one mode: n samples in one call, graded.


def problem_seed(seed: int, problem_id: str) -> int:
    """The seed of a problem's `generate` call: a stable hash of (seed, problem id), 31 bits."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _chunks(todo: list, size: int) -> list[list]:
    """Consecutive work items of one mode, at most `size` problems each (one `generate` call)."""
    chunks: list[list] = []
    for item in todo:
        if chunks and len(chunks[-1]) < size and chunks[-1][0][0] == item[0]:
            chunks[-1].append(item)
        else:
            chunks.append([item])
    return chunks


def _stream_problems(model, tokenizer, todo, seed, settings, options, chat, system):
    """The rows of each problem's missing samples (all modes in one engine run), graded, as soon
    as the last of them ends. Sample j of a problem draws from the problem's own seed (see
    `problem_seed`), so a resumed run writes the same samples as an uninterrupted one."""
    seeds = [problem_seed(seed, problem.id) for _, problem, _ in todo]
    left = [len(missing) for _, _, missing in todo]
    generated: dict[int, dict[int, Generation]] = {i: {} for i in range(len(todo))}
    samples = stream(
        model,
        tokenizer,
        [problem.question for _, problem, _ in todo],
        [m for m, _, _ in todo],
        settings.replace(seed=tuple(seeds)),
        options=options,
        chat=chat,
        system=system,
        samples=[missing for _, _, missing in todo],
    )
    for i, j, g in samples:
        generated[i][j] = g
        left[i] -= 1
        if not left[i]:
            mode, problem, missing = todo[i]
            got = generated.pop(i)
            yield _graded(mode, [(problem, j, seeds[i], got[j]) for j in missing])


def _sample_problems(
    model, tokenizer, chunk, seed, settings, options, generate_fn, chat
) -> list[dict]:
    """The rows of the missing samples of a few problems under one mode, from one call of
    `generate_fn` (a `jaxthink.generate`-shaped function: the hybrid decode's)."""
    mode = chunk[0][0]
    problems = [problem for _, problem, _ in chunk]
    seeds = [problem_seed(seed, p.id) for p in problems]
    try:
        generations = generate_fn(
            model,
            tokenizer,
            [p.question for p in problems],
            mode,
            n=settings.n,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            seed=seeds,
            options=options,
            slots=settings.slots,
            progress=None,
            chat=chat,
        )
    except ValueError as error:
        ids = ", ".join(repr(p.id) for p in problems)
        raise ValueError(f"problems {ids} ({mode}): {error}") from None
    n = settings.n
    return _graded(
        mode,
        [
            (problem, j, s, generations[i * n + j])
            for i, ((_, problem, missing), s) in enumerate(zip(chunk, seeds, strict=True))
            for j in missing
        ],
    )


def _graded(mode, picked: list) -> list[dict]:
    """samples.jsonl rows of (problem, sample index, seed, Generation) items, graded."""
    verdicts = grade_many([g.text for *_, g in picked], [p.answer for p, *_ in picked])
    return [
        sample_row(mode, problem, j, s, g, v)
        for (problem, j, s, g), v in zip(picked, verdicts, strict=True)
    ]


def sample_row(mode, problem: Problem, j: int, seed: int, g: Generation, v: Verdict) -> dict:
    """One line of samples.jsonl."""
    return {
        "mode": str(mode),
        "problem_id": problem.id,
        "sample": j,
        "level": problem.level,
        "question": problem.question,
        "gold": problem.answer,
        "generate_seed": seed,  # generate([question], mode, n=n, seed=[this])[j] is this sample
        "text": g.text,
        "extracted_answer": v.answer,
        "correct": v.correct,
        "parsed": v.parsed,
        "chosen_mode": g.chosen_mode,
        "num_tokens": g.num_tokens,
        "num_thinking_tokens": g.num_thinking_tokens,
        "num_answer_tokens": g.num_answer_tokens,
        "confidence": g.confidence,
        "finish_reason": g.finish_reason,
        "budget_forced": g.budget_forced,
        **({"steered_fraction": g.steered_fraction} if hasattr(g, "steered_fraction") else {}),
    }


# ---------------------------------------------------------------------------------------------
# samples.jsonl and run.json


def read_samples(path: Path) -> dict[Key, dict]:
    """The rows of samples.jsonl by (mode, problem id, sample); {} if there is no file.

    A last line cut short by a kill is dropped, and cut off the file so appends start on a fresh
    line; any other unreadable line is an error naming it. Repeated keys keep the first row.
    """
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete, newline, tail = data.rpartition(b"\n")
    lines = complete.split(b"\n") if newline else []
    rows: dict[Key, dict] = {}
    for number, line in enumerate(lines, start=1):
        if line.strip():
            row = _parse_row(path, number, line)
            rows.setdefault(_key(row), row)
    if tail.strip():
        try:
            row = _parse_row(path, len(lines) + 1, tail)
        except ValueError:  # a line cut short by a kill: forget it
            os.truncate(path, len(complete) + len(newline))
        else:  # a whole line that only missed its newline
            rows.setdefault(_key(row), row)
            with path.open("ab") as file:
                file.write(b"\n")
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    """Appends rows and flushes them: a kill after this loses none of them."""
    with path.open("a", encoding="utf-8") as file:
        file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _parse_row(path: Path, number: int, line: bytes) -> dict:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(
            f"{path}:{number}: not a JSON line; delete that line (its sample is regenerated)"
        ) from None
    if not isinstance(row, dict) or not {"mode", "problem_id", "sample"} <= row.keys():
        raise ValueError(f"{path}:{number}: not a sample row (needs mode, problem_id and sample)")
    return row


def _key(row: dict) -> Key:
    return (row["mode"], str(row["problem_id"]), int(row["sample"]))


@contextlib.contextmanager
def _sole_writer(out: Path):
    """Holds an exclusive lock on DIR/.lock for the run: two runs appending to one samples.jsonl
    would duplicate work, so the second is refused. The lock dies with its process."""
    with (out / LOCK).open("w") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{out} is in use by another evaluation run; wait for it to finish or give "
                "another --out directory"
            ) from None
        yield


def _claim_run(path: Path, settings: dict, info: dict) -> dict:
    """run.json's settings, checked against an earlier run in the same directory, then written."""
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [
            f"{key}={before.get(key, SETTING_DEFAULTS.get(key))!r} (now {settings[key]!r})"
            for key in SAMPLE_SETTINGS
            if before.get(key, SETTING_DEFAULTS.get(key)) != settings[key]
        ]
        # what made the samples, beside the sampling settings (the model; the hybrid's pair,
        # steering file and grid); the data file may move, its problems are checked row by row
        changed += [
            f"{key}={before[key]!r} (now {info[key]!r})"
            for key in info.keys() & before.keys() - {"data"}
            if before[key] != info[key]
        ]
        if changed:
            raise ValueError(
                f"{path.parent} holds an evaluation run with other settings: {', '.join(changed)}; "
                "resume with the same settings or give another --out directory"
            )
    run = {**settings, **info}
    path.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return run


def _check_same_problems(path: Path, done: dict[Key, dict], problems: Sequence[Problem]) -> None:
    """Rows on disk must belong to the same problems: an id whose question changed is refused."""
    by_id = {p.id: p for p in problems}
    for (_, problem_id, _), row in done.items():
        problem = by_id.get(problem_id)
        if problem and (row.get("question"), row.get("gold")) != (problem.question, problem.answer):
            raise ValueError(
                f"{path}: problem {problem_id!r} has question {row.get('question')!r} / gold "
                f"{row.get('gold')!r} there but {problem.question!r} / {problem.answer!r} in the "
                "data; give another --out directory for a different data set"
            )


def _check_problems(problems: Sequence[Problem]) -> None:
    if not problems:
        raise ValueError("no problems to evaluate")
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise ValueError(
                f"problem id {problem.id!r} appears twice; samples are keyed by problem id, so "
                "ids must be unique (drop the id field to number problems by line)"
            )
        seen.add(problem.id)


def _as_modes(modes) -> list[Mode]:
    """Modes from Modes and mode strings (sweeps expanded), duplicates dropped, order kept."""
    if isinstance(modes, (str, Mode)):
        modes = [modes]
    expanded = [
        m for text in modes for m in ([text] if isinstance(text, Mode) else parse_modes(text))
    ]
    if not expanded:
        raise ValueError("no modes to evaluate")
    return list(dict.fromkeys(expanded))


def _progress_bar(total: int, todo: int, enabled: bool):
    """A tqdm bar over all samples, starting at those already done (disabled: a silent one)."""
    from tqdm import tqdm

    disable = not enabled or todo == 0
    return tqdm(total=total, initial=total - todo, unit="sample", file=sys.stderr, disable=disable)
