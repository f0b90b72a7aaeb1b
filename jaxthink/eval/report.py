"""The evaluation report: graded samples in, summary.json, summary.md and two plots out.

`summarize` turns the graded samples of each mode (problems x n rows, as written to samples.jsonl)
into metrics computed with `jaxthink.eval.metrics`: accuracy (pass@1), pass@k for k = 1..n, cons@n,
confidence-highest and Borda (p = 0.5) selections, token statistics, parallel latency, and the
fractions truncated and budget-forced; per level too when problems have levels. `markdown` formats
the summary as tables; `plot_pass_at_k` and `plot_pareto` draw it (the NoThinking paper's views).
Plots use matplotlib's object API (`Figure`, rendered by Agg): no pyplot, no global backend switch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from jaxthink.eval.metrics import (
    accuracy,
    borda_vote,
    confidence_highest,
    cons_at_k,
    parallel_latency,
    pass_at_k_curve,
    token_stats,
)

BORDA_POWER = 0.5  # the NoThinking paper's vote weight (N - r + 1)^p
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
PASS_AT_K_PNG, PARETO_PNG = "pass_at_k.png", "pareto.png"
NO_LEVEL = "none"  # level key of problems without a level, in a set where others have one

Rows = Sequence[Sequence[dict]]  # one list of n sample rows per problem


# ---------------------------------------------------------------------------------------------
# Metrics


def mode_metrics(problem_rows: Rows) -> dict:
    """Every metric of one mode over its problems (each with the same number n of samples)."""
    column = lambda key: [[row[key] for row in rows] for rows in problem_rows]
    correct = np.array(column("correct"), dtype=bool)
    answers = column("extracted_answer")
    confidences = column("confidence")
    lengths = np.array(column("num_tokens"), dtype=np.int64)
    thinking = np.array(column("num_thinking_tokens"), dtype=np.int64)
    thought = np.array(column("chosen_mode")) == "think"
    n = correct.shape[1]
    return {
        "problems": len(problem_rows),
        "samples": int(correct.size),
        "accuracy": accuracy(correct.ravel()),
        "pass_at_k": {str(k): float(v) for k, v in enumerate(pass_at_k_curve(correct), start=1)},
        "cons_at_n": cons_at_k(answers, correct, k=n),
        "confidence_highest": _selection_accuracy(
            answers, confidences, correct, confidence_highest
        ),
        "borda": _selection_accuracy(answers, confidences, correct, _borda),
        "parsed": accuracy(np.array(column("parsed"), dtype=bool).ravel()),
        **token_stats(lengths.ravel(), thinking.ravel(), thought.ravel()),
        "parallel_latency": float(np.mean(parallel_latency(lengths))),
        "truncated": accuracy((np.array(column("finish_reason")) == "length").ravel()),
        "budget_forced": accuracy(np.array(column("budget_forced"), dtype=bool).ravel()),
        **_steered(problem_rows, lengths),
    }


def _steered(problem_rows: Rows, lengths: np.ndarray) -> dict:
    """Hybrid samples: the steered share of all their generated tokens."""
    if not problem_rows or "steered_fraction" not in problem_rows[0][0]:
        return {}
    fractions = np.array([[row["steered_fraction"] for row in rows] for rows in problem_rows])
    return {"steered_fraction": float((fractions * lengths).sum() / max(lengths.sum(), 1))}


def summarize(rows_by_mode: dict[str, Rows], run: dict | None = None) -> dict:
    """The summary of an evaluation: run settings, then per mode its metrics (and per level)."""
    modes = {}
    for mode, problem_rows in rows_by_mode.items():
        metrics = mode_metrics(problem_rows)
        levels = _by_level(problem_rows)
        if levels:
            metrics["levels"] = {level: mode_metrics(rows) for level, rows in levels.items()}
        modes[mode] = metrics
    first = next(iter(rows_by_mode.values()), [])
    return {
        "run": dict(run or {}),
        "problems": len(first),
        "n": len(first[0]) if first else 0,
        "modes": modes,
    }


def _borda(answers, confidences):
    return borda_vote(answers, confidences, p=BORDA_POWER)


def _selection_accuracy(answers, confidences, correct, select) -> float:
    """Fraction of problems whose selected answer is correct (no answer selected: wrong).

    A selection returns one of the samples' answers as written; equal strings grade alike, so
    the first sample with that string gives the verdict.
    """
    wins = []
    for problem_answers, problem_confidences, problem_correct in zip(answers, confidences, correct):
        chosen = select(problem_answers, problem_confidences)
        wins.append(chosen is not None and problem_correct[problem_answers.index(chosen)])
    return accuracy(wins)


def _by_level(problem_rows: Rows) -> dict[str, list]:
    """Problems grouped by level (natural order), or {} when no problem has a level."""
    levels = [rows[0].get("level") if rows else None for rows in problem_rows]
    if all(level is None for level in levels):
        return {}
    groups: dict = {}
    for level, rows in zip(levels, problem_rows):
        groups.setdefault(level, []).append(rows)
    return {_level_key(level): groups[level] for level in sorted(groups, key=_natural)}


def _level_key(level) -> str:
    return NO_LEVEL if level is None else str(level)


def _natural(level):
    """Sort key: numbers by value, before strings; no level last."""
    if level is None:
        return (2, 0.0, "")
    try:
        return (0, float(level), str(level))
    except (TypeError, ValueError):
        return (1, 0.0, str(level))


# ---------------------------------------------------------------------------------------------
# Markdown


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _columns(n: int) -> list[tuple[str, object]]:
    """(header, metrics -> cell text) of a table row, for n samples per problem."""
    pct = lambda key: lambda m: _percent(m[key])
    cols = [("acc %", pct("accuracy"))]
    for k in _pass_ks(n):
        cols.append((f"pass@{k} %", lambda m, k=k: _percent(m["pass_at_k"][str(k)])))
    if n > 1:
        cols += [
            (f"cons@{n} %", pct("cons_at_n")),
            ("conf-top %", pct("confidence_highest")),
            ("Borda %", pct("borda")),
        ]
    cols += [
        ("mean tok", lambda m: f"{m['mean_tokens']:.1f}"),
        ("median tok", lambda m: f"{m['median_tokens']:g}"),
        ("think tok", lambda m: f"{m['mean_thinking_tokens']:.1f}"),
        ("think %", pct("think_ratio")),
        ("latency tok", lambda m: f"{m['parallel_latency']:.1f}"),
        ("truncated %", pct("truncated")),
        ("forced %", pct("budget_forced")),
    ]
    return cols


def _pass_ks(n: int) -> list[int]:
    """The pass@k columns of the table: powers of two up to n, and n (k = 1 is the accuracy)."""
    return sorted({2**i for i in range(1, n.bit_length()) if 2**i <= n} | ({n} if n > 1 else set()))


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---:" if h.endswith(("%", "tok")) else "---" for h in header]  # numbers right
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    """summary.md: a table with one row per mode, then one per (level, mode) if there are levels."""
    n, modes = summary["n"], summary["modes"]
    cols = _columns(n)
    cells = lambda metrics: [cell(metrics) for _, cell in cols]
    headers = [header for header, _ in cols]
    run = summary.get("run", {})
    settings = ", ".join(f"{key} {run[key]}" for key in _SHOWN_SETTINGS if key in run)
    parts = [
        f"# Evaluation: {summary['problems']} problems x {n} samples",
        "",
        settings + ("." if settings else ""),
        "",
        _table(["mode", *headers], [[mode, *cells(m)] for mode, m in modes.items()]),
    ]
    level_rows = [
        [level, mode, *cells(lm)]
        for level in _levels_in(modes)
        for mode, m in modes.items()
        if (lm := m.get("levels", {}).get(level)) is not None
    ]
    if level_rows:
        parts += ["", "## By level", "", _table(["level", "mode", *headers], level_rows)]
    parts += ["", _LEGEND]
    return "\n".join(parts) + "\n"


_SHOWN_SETTINGS = ("data", "model", "max_new_tokens", "temperature", "top_p", "top_k", "seed")
_LEGEND = (
    "acc = mean over all samples (pass@1); pass@k unbiased; cons = majority vote; conf-top = "
    "the most self-certain sample; Borda = confidence-ranked vote (p = 0.5); tok = generated "
    "tokens per sample; think % = samples that thought; latency = mean over problems of the "
    "longest of its n samples (parallel decoding); truncated = hit max_new_tokens; forced = "
    "budget forcing closed the thinking."
)


def _levels_in(modes: dict) -> list[str]:
    seen: dict[str, None] = {}
    for metrics in modes.values():
        seen.update(dict.fromkeys(metrics.get("levels", {})))
    return list(seen)


# ---------------------------------------------------------------------------------------------
# Plots


MARKERS, LINES = "osD^vPX*", ("-", "--", ":", "-.")
DODGE = 0.8  # percentage points between curves that would lie on top of each other


def curve_styles(curves: dict[str, list[float]]) -> dict[str, dict]:
    """Per curve (name -> values): its color, marker and line style, each its own, and for a curve
    equal to an earlier one a small vertical offset and a label that says so, so that
    coinciding curves stay visible."""
    styles, firsts = {}, {}
    for i, (name, values) in enumerate(curves.items()):
        same = firsts.setdefault(tuple(values), name)
        copies = sum(1 for k, other in styles.items() if other["same_as"] == same and k != same)
        offset = round(DODGE * (copies + 1), 2) if same != name else 0.0
        styles[name] = {
            "color": f"C{i % 10}",
            "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINES[i % len(LINES)],
            "offset": offset,
            "label": f"{name} (= {same}, drawn {offset:+.1f})" if offset else name,
            "same_as": same,
        }
    return styles


def legend_outside(ax, **kw) -> None:
    """The legend to the right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


def plot_pass_at_k(summary: dict, path: str | Path) -> Path:
    """pass@k per mode against k (left) and against the tokens its k samples cost, k x mean
    tokens per sample (right: modes compared at matched token budgets, with the votes over all
    n samples as markers at n x mean tokens); log2 axes from n = 4 on."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    by_k, by_tokens = fig.subplots(1, 2)
    n = summary["n"]
    votes = (("cons_at_n", "*", "majority"), ("confidence_highest", "X", "most confident"))
    votes = votes if n > 1 else ()  # a vote over one sample is that sample
    curves = {
        mode: [100 * v for v in metrics["pass_at_k"].values()]
        for mode, metrics in summary["modes"].items()
    }
    styles = curve_styles(curves)
    for mode, metrics in summary["modes"].items():
        style = styles[mode]
        line = dict(color=style["color"], marker=style["marker"], linestyle=style["linestyle"])
        ks = [int(k) for k in metrics["pass_at_k"]]
        values = [v + style["offset"] for v in curves[mode]]
        by_k.plot(ks, values, markersize=5, label=style["label"], **line)
        tokens = [k * max(metrics["mean_tokens"], 1.0) for k in ks]
        by_tokens.plot(tokens, values, markersize=5, label=style["label"], **line)
        for key, marker, _ in votes:
            vote = 100 * metrics[key] + style["offset"]
            by_tokens.plot(
                tokens[-1], vote, marker=marker, markersize=9, color=style["color"], ls="none"
            )
    for _, marker, name in votes:
        by_tokens.plot([], [], marker=marker, color="gray", ls="none", label=f"{name} of {n}")
    ticks = [k for k in (2**i for i in range(n.bit_length())) if k <= n]
    ticks += [n] if n not in ticks else []
    if n >= 4:
        for ax in (by_k, by_tokens):
            ax.set_xscale("log", base=2)
        by_k.minorticks_off()
        by_tokens.xaxis.set_major_formatter(LogFormatter(base=2, labelOnlyBase=False))
    by_k.set_xticks(ticks, labels=[str(k) for k in ticks])
    title = f"({summary['problems']} problems, n = {n})"
    by_k.set(xlabel="k (samples per problem)", ylabel="pass@k (%)", title=f"pass@k by mode {title}")
    by_tokens.set(
        xlabel="generated tokens per problem (k x mean tokens per sample)",
        ylabel="pass@k, votes (%)",
        title=f"At matched token budgets {title}",
    )
    for ax in (by_k, by_tokens):
        ax.set_ylim(-2, 104)
        ax.grid(alpha=0.3)
    legend_outside(by_tokens, fontsize="small")
    return save_figure(fig, path)


def plot_pareto(summary: dict, path: str | Path) -> Path:
    """Accuracy against mean tokens per sample: a point per mode, a sweep's points joined by a
    line and labelled with their values; log token axis when the means span 8x or more."""
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    families = _mode_families(summary["modes"])
    for i, (name, members) in enumerate(families.items()):
        xs = [metrics["mean_tokens"] for _, metrics in members]
        ys = [100 * metrics["accuracy"] for _, metrics in members]
        style = LINES[i % len(LINES)] if len(members) > 1 else "none"
        marker = MARKERS[i % len(MARKERS)]
        ax.plot(xs, ys, marker=marker, markersize=7, linestyle=style, label=name, alpha=0.85)
        for (mode, _), x, y in zip(members, xs, ys):
            label = mode.partition("=")[2] if len(members) > 1 else mode  # a sweep: its value
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    tokens = [m["mean_tokens"] for m in summary["modes"].values()]
    if min(tokens) > 0 and max(tokens) >= 8 * min(tokens):  # budgets usually grow geometrically
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # 300, not 3 x 10^2
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.set_ylim(-2, 102)
    ax.margins(x=0.15)
    ax.set(
        xlabel="mean generated tokens per sample",
        ylabel="accuracy, pass@1 (%)",
        title=f"Accuracy vs tokens ({summary['problems']} problems, n = {summary['n']})",
    )
    ax.grid(alpha=0.3)
    legend_outside(ax, title="mode", fontsize="small")
    return save_figure(fig, path)


def _mode_families(modes: dict) -> dict[str, list[tuple[str, dict]]]:
    """Modes grouped by name (`think_budget=128,256` -> one family), each sorted by its value."""
    families: dict[str, list] = {}
    for mode, metrics in modes.items():
        name, _, value = mode.partition("=")
        families.setdefault(name, []).append((int(value) if value else -1, mode, metrics))
    return {
        name: [(mode, metrics) for _, mode, metrics in sorted(members, key=lambda m: m[0])]
        for name, members in families.items()
    }


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_report(summary: dict, out_dir: str | Path) -> list[Path]:
    """Writes summary.json, summary.md, pass_at_k.png and pareto.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / SUMMARY_MD).write_text(markdown(summary), encoding="utf-8")
    return [
        out / SUMMARY_JSON,
        out / SUMMARY_MD,
        plot_pass_at_k(summary, out / PASS_AT_K_PNG),
        plot_pareto(summary, out / PARETO_PNG),
    ]
