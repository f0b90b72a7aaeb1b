"""Grading: is an extracted answer equivalent to the gold answer?

Owns answer normalisation (`normalise_answer`, `canonical_answer` for grouping votes), the
equivalence check (`is_equivalent`) and grading of whole responses (`grade`, `grade_many`).

Equivalence, cheapest test first:
1. both sides read as plain numbers (after stripping `$`, `\\text{...}`, unit words, thousands
   commas, a `x =` prefix, `%`): the numbers decide, no sympy needed;
2. the normalised strings are equal;
3. math-verify (`parse` + `verify`) decides, in a separate worker process.

Why a process. math-verify's own timeouts use `signal.alarm`, which only works in the main thread,
so we call it with `parsing_timeout=None, timeout_seconds=None` and bound time ourselves. A thread
with a timeout cannot do it: a Python thread cannot be killed, and sympy's worst cases are single C
calls (e.g. evaluating `10^{10^{10}}` is one big-integer power) that not even a signal interrupts.
A child process can be killed. Each worker process imports only math_verify (not jaxthink, which
would import JAX), answers one JSON line per check, and is killed and replaced when a check
overruns `timeout_s`; the check then counts as not equivalent. Processes are started lazily, reused,
capped at the CPU count, and safe to use from any number of threads (`grade_many` uses a thread
pool). The bound needs a POSIX system (`poll` on a pipe), which every TPU/GPU host is.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

from jaxthink.eval.extract import extract_answer, matching_brace

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
# Answers longer than this are not handed to sympy: they are prose, not expressions, and only
# burn the time bound. They can still match through the string comparison.
MAX_SYMBOLIC_CHARS = 1000


@dataclass(frozen=True)
class Verdict:
    """The grade of one response: what was extracted, whether anything was, and if it is right."""

    answer: str | None
    correct: bool
    parsed: bool


def grade(response_text: str, gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Verdict:
    """Extracts the final answer of a response and checks it against the gold answer."""
    answer = extract_answer(response_text)
    correct = is_equivalent(answer, gold, timeout_s=timeout_s)
    return Verdict(answer=answer, correct=correct, parsed=answer is not None)


def grade_many(
    responses: Sequence[str],
    golds: Sequence[str],
    workers: int | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> list[Verdict]:
    """`grade` over pairs of (response, gold), in order, on a pool of `workers` threads."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda r, g: grade(r, g, timeout_s), responses, golds))


def is_equivalent(pred: str | None, gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a predicted answer means the same as the gold answer.

    Decisions worth knowing: `10\\%` equals both `10` and `0.1` (benchmarks write percentages
    either way); `x = 5` equals `5` (naming the variable is not an error); non-integers match
    within a relative and absolute tolerance of 1e-6, integers exactly. `timeout_s` bounds the
    math-verify step (seconds, in a worker process); `None` runs it in this process, unbounded.
    """
    if pred is None or not pred.strip():
        return False
    pred_numbers, gold_numbers = _numbers(pred), _numbers(str(gold))
    if pred_numbers is not None and gold_numbers is not None:
        return _any_number_matches(pred_numbers, gold_numbers)
    if _compact(normalise_answer(pred)) == _compact(normalise_answer(str(gold))):
        return True
    if len(pred) > MAX_SYMBOLIC_CHARS:
        return False
    return _math_verify(_strip_dollars(pred), _strip_dollars(str(gold)), timeout_s)


def canonical_answer(answer: str) -> str:
    """A grouping key for votes: equivalent common forms of an answer map to the same key.

    Numbers map to their exact value (`0.5`, `\\frac{1}{2}`, `1/2` -> `1/2`; `1,000` -> `1000`;
    `10\\%` -> `10`, the form most gold answers use), anything else to its normalised string. It is
    a cheap, deterministic approximation of `is_equivalent` (no sympy), fit for grouping samples.
    """
    numbers = _numbers(answer)
    if numbers:
        return str(numbers[0])
    return _compact(normalise_answer(answer))


def normalise_answer(answer: str) -> str:
    """An answer with LaTeX presentation removed: spacing, `$`, `\\left`, `\\text{}`, degrees.

    `\\dfrac`/`\\tfrac` become `\\frac`, `\\%` becomes `%`, `{,}` becomes `,`, whitespace collapses.
    """
    text = answer.strip().replace("\u2212", "-")  # a Unicode minus sign is still a minus
    for command in ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ "):
        text = text.replace(command, " ")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _unwrap_commands(text, ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mbox"))
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", text)
    text = text.replace("\\%", "%").replace("{,}", ",")
    text = _strip_dollars(text).replace("~", " ")
    text = re.sub(r"\s+", " ", text).strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def shutdown_verifiers() -> None:
    """Stops the math-verify worker processes (they restart on the next check)."""
    _POOL.close_all()


# ---------------------------------------------------------------------------------------------
# Numbers: the cheap, decisive path.

_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d{1,3})?", re.IGNORECASE)
_SLASH_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))")
_ASSIGNMENT = re.compile(r"[a-zA-Z]\s*=\s*(.+)")
_UNIT_WORDS = re.compile(r"(.*?\d\.?)\s*((?:[a-zA-Z]{2,}\.?\s*)+)")
# Words that are mathematics, not units: `5 pi` is not 5.
_MATH_WORDS = {"pi", "sqrt", "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "exp", "mod"}
_MAX_NUMBER_CHARS = 100  # longer "numbers" are not worth exact rational arithmetic
_TOLERANCE = Fraction(1, 10**6)


def _numbers(answer: str) -> list[Fraction] | None:
    """The values a plain numeric answer may denote (two for a percentage), else None."""
    text = normalise_answer(answer)
    assignment = _ASSIGNMENT.fullmatch(text)
    if assignment:
        text = assignment.group(1).strip()
    units = _UNIT_WORDS.fullmatch(text)
    if units and not (set(units.group(2).lower().replace(".", " ").split()) & _MATH_WORDS):
        text = units.group(1)
    percent = text.endswith("%")
    value = _number(text.rstrip("%").strip())
    if value is None:
        return None
    return [value, value / 100] if percent else [value]


def _number(text: str) -> Fraction | None:
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _DECIMAL.fullmatch(text):
        return Fraction(text)
    slash = _SLASH_FRACTION.fullmatch(text)
    if slash:
        numerator, denominator = int(slash.group(1)), int(slash.group(2))
        return Fraction(numerator, denominator) if denominator else None
    latex = _LATEX_FRACTION.fullmatch(text)
    if latex:
        sign, num_braced, num_digit, den_braced, den_digit = latex.groups()
        numerator = _number((num_braced or num_digit).strip())
        denominator = _number((den_braced or den_digit).strip())
        if numerator is None or not denominator:
            return None
        return -numerator / denominator if sign == "-" else numerator / denominator
    return None


def _any_number_matches(preds: list[Fraction], golds: list[Fraction]) -> bool:
    return any(_numbers_match(p, g) for p in preds for g in golds)


def _numbers_match(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False  # integers: exact or wrong
    gap = abs(a - b)
    return gap <= _TOLERANCE and gap <= _TOLERANCE * max(abs(a), abs(b))


def _unwrap_commands(text: str, commands: Sequence[str]) -> str:
    """Replaces `\\cmd{content}` by `content` for each command, braces matched properly."""
    pattern = re.compile("(?:" + "|".join(re.escape(c) for c in commands) + r")\s*\{")
    match = pattern.search(text)
    while match:
        open_brace = match.end() - 1
        close = matching_brace(text, open_brace)
        if close is None:
            break
        text = text[: match.start()] + text[open_brace + 1 : close] + text[close + 1 :]
        match = pattern.search(text, match.start())
    return text


def _strip_dollars(text: str) -> str:
    return text.replace("\\$", "").replace("$", "").strip()


def _compact(text: str) -> str:
    """Spacing- and case-insensitive form for string comparison (`(A)` vs `(a)`)."""
    return re.sub(r"\s+", "", text).lower()


# ---------------------------------------------------------------------------------------------
# math-verify, time-bounded in worker processes.

# The child imports math_verify only. Its timeouts are off (they need the main thread and cannot
# stop C calls anyway); the parent kills the whole process when a check overruns.
_WORKER_SOURCE = r"""
import json, logging, sys
logging.disable(logging.WARNING)
from math_verify import parse, verify

def check(gold, pred):
    gold_parsed = parse("$" + gold + "$", parsing_timeout=None)
    pred_parsed = parse("$" + pred + "$", parsing_timeout=None)
    return verify(gold_parsed, pred_parsed, timeout_seconds=None)

sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    gold, pred = json.loads(line)
    try:
        ok = check(gold, pred)
    except Exception:
        ok = False
    sys.stdout.write("1\n" if ok else "0\n")
    sys.stdout.flush()
"""
_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a busy machine; not part of a check's bound


def _math_verify(pred: str, gold: str, timeout_s: float | None) -> bool:
    if timeout_s is None:
        return _math_verify_here(pred, gold)
    worker = _POOL.acquire()
    if worker is None:
        return False
    ok = worker.check(gold, pred, timeout_s)
    _POOL.release(worker if ok is not None else None)
    return bool(ok)


def _math_verify_here(pred: str, gold: str) -> bool:
    """math-verify in this process and thread, without any time bound."""
    from math_verify import parse, verify

    gold_parsed = parse("$" + gold + "$", parsing_timeout=None)
    pred_parsed = parse("$" + pred + "$", parsing_timeout=None)
    return verify(gold_parsed, pred_parsed, timeout_seconds=None)


class _Worker:
    """One math-verify child process speaking one JSON line per check."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a crash shows as a failed check; its traceback is noise
            bufsize=0,
        )
        # poll, not select: select fails on descriptors above 1024, common in a big JAX process.
        self._poller = select.poll()
        self._poller.register(self.process.stdout, select.POLLIN)
        if self._read_line(_STARTUP_TIMEOUT_S) != b"ready":
            self.kill()
            raise RuntimeError("the math-verify worker process did not start")

    def check(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """The verdict, or None if the worker overran `timeout_s` or died (it is then killed)."""
        try:
            self.process.stdin.write((json.dumps([gold, pred]) + "\n").encode())
            self.process.stdin.flush()
            reply = self._read_line(timeout_s)
        except OSError:
            reply = None
        if reply not in (b"0", b"1"):
            self.kill()
            return None
        return reply == b"1"

    def _read_line(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        line = b""
        stdout = self.process.stdout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poller.poll(remaining * 1000):
                return None
            chunk = os.read(stdout.fileno(), 64)
            if not chunk:
                return None  # the child exited
            line += chunk
        return line.strip()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()


class _WorkerPool:
    """Idle workers shared by all threads; at most `limit` processes alive at once."""

    def __init__(self, limit: int):
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()

    def acquire(self) -> _Worker | None:
        """An idle worker or a new one; None (with a warning) if a process cannot be started."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        # Take a process slot, or wait for a busy worker to come back (it frees its slot if killed).
        while not self._slots.acquire(timeout=0.05):
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                continue
        try:
            worker = _Worker()
        except (OSError, RuntimeError) as error:
            self._slots.release()
            logger.warning("math-verify worker unavailable (%s); grading without it", error)
            return None
        with self._lock:
            self._all.add(worker)
        return worker

    def release(self, worker: _Worker | None) -> None:
        """Returns a healthy worker to the pool; pass None for one that was killed."""
        if worker is not None:
            self._idle.put(worker)
            return
        with self._lock:
            dead = {w for w in self._all if w.process.poll() is not None}
            self._all -= dead
        for _ in dead:
            self._slots.release()

    def close_all(self) -> None:
        with self._lock:
            workers, self._all = self._all, set()
        while not self._idle.empty():
            self._idle.get_nowait()
        for worker in workers:
            worker.kill()
            self._slots.release()


_POOL = _WorkerPool(limit=max(1, os.cpu_count() or 1))
atexit.register(shutdown_verifiers)
