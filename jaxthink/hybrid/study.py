"""The hybrid study: a base / thinking pair, the hybrid over coefficient grids and its ablations,
evaluated on the same problems, and the share of the base-to-thinking gap each recovers.

    pair + problems --evaluation runner, one resumable directory per run-->
      out/base                the base model alone (mode plain, greedy)
      out/thinking            the thinking model alone (mode think, greedy)
      out/hybrid_<grid>       the hybrid with each coefficient grid (grid "0" is the base model's
                              own greedy tokens: the control)
      out/bias_only_<grid>    the ablations, with the study's main grid
      out/random_latent_<grid>
    --> out/study.json, out/study.md (accuracy, mean tokens, steered fraction and gap recovered,
        overall and per level), out/steered.png (accuracy against steered fraction, one point per
        grid) and out/gap_by_level.png

Gap recovered = (accuracy - base) / (thinking - base) (docs/methods.md section 3); it is left
out where the thinking model is not ahead of the base. `python -m infer hybrid-study` runs it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxthink.decode.generate import GenerateConfig
from jaxthink.eval.datasets import Problem
from jaxthink.eval.report import legend_outside, save_figure
from jaxthink.eval.runner import evaluate
from jaxthink.hybrid.decoding import DEFAULT_COEFFICIENTS, hybrid_generate_fn
from jaxthink.hybrid.vectors import load_steering
from jaxthink.loading import load

STUDY_JSON, STUDY_MD = "study.json", "study.md"
STEERED_PNG, GAP_PNG = "steered.png", "gap_by_level.png"
ABLATIONS = ("bias_only", "random_latent")
DEFAULT_GRIDS = ((0.0,), (0.1, 0.2, 0.3), DEFAULT_COEFFICIENTS, (1.0, 2.0, 4.0, 8.0))


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One evaluation of the study: which model(s) decode, and with which coefficients."""

    name: str
    kind: str  # "base", "thinking", "hybrid", or an ablation
    coefficients: tuple[float, ...] = ()


def grid_name(grid: Sequence[float]) -> str:
    """`(0.1, 0.2, 0.3)` -> `"0.1-0.3x3"`, `(0.0,)` -> `"0"`: a run directory's suffix."""
    grid = [float(c) for c in grid]
    return f"{grid[0]:g}" if len(grid) == 1 else f"{min(grid):g}-{max(grid):g}x{len(grid)}"


def study_runs(grids: Sequence[Sequence[float]], main: Sequence[float]) -> list[StudyRun]:
    """The study's evaluations: base, thinking, a hybrid per grid, the ablations on `main`."""
    if not grids:
        raise ValueError("grids: give at least one coefficient grid, e.g. 0.1,0.5,1.0")
    runs = [StudyRun("base", "base"), StudyRun("thinking", "thinking")]
    runs += [StudyRun(f"hybrid_{grid_name(g)}", "hybrid", tuple(map(float, g))) for g in grids]
    main = tuple(map(float, main))
    runs += [StudyRun(f"{a}_{grid_name(main)}", a, main) for a in ABLATIONS]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"grids: two grids share a name ({', '.join(names[2:-2])}); drop one")
    return runs


def run_study(
    thinking: str | Path,
    base: str | Path,
    steering: str | Path,
    problems: Sequence[Problem],
    out_dir: str | Path,
    *,
    grids: Sequence[Sequence[float]] = DEFAULT_GRIDS,
    main_grid: Sequence[float] = DEFAULT_COEFFICIENTS,
    max_new_tokens: int = 320,
    slots: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Evaluates every run of the study (each resumes on its own), then writes the report."""
    runs = study_runs(grids, main_grid)
    out = Path(out_dir)
    models = {name: load(path) for name, path in (("thinking", thinking), ("base", base))}
    vectors = load_steering(steering)
    settings = GenerateConfig(max_new_tokens=max_new_tokens, slots=slots)
    info = {"model": str(thinking), "base_model": str(base), "steering": str(steering)}
    summaries = {}
    for run in runs:
        log(f"{run.name}: {len(problems)} problems")
        if run.kind in ("base", "thinking"):
            model, tokenizer, _ = models[run.kind]
            mode, generate_fn = ("plain" if run.kind == "base" else "think"), None
        else:
            model, tokenizer, _ = models["thinking"]
            base_model, base_tokenizer, _ = models["base"]
            ablation = "none" if run.kind == "hybrid" else run.kind
            mode = "hybrid"
            generate_fn = hybrid_generate_fn(
                base_model, base_tokenizer, vectors, run.coefficients, ablation
            )
        run_info = {**info, "kind": run.kind, "coefficients": list(run.coefficients)}
        summary = evaluate(
            model,
            tokenizer,
            problems,
            mode,
            settings,
            out_dir=out / run.name,
            progress=progress,
            info=run_info,
            generate_fn=generate_fn,
        )
        summaries[run.name] = (run, summary["modes"][mode])
    study = summarize_study(summaries)
    write_study(study, out)
    return study


# ---------------------------------------------------------------------------------------------
# The report


def _figures(metrics: dict) -> dict:
    return {
        "accuracy": metrics["accuracy"],
        "mean_tokens": metrics["mean_tokens"],
        "steered_fraction": metrics.get("steered_fraction"),
        "truncated": metrics["truncated"],
        "problems": metrics["problems"],
    }


def gap_recovered(accuracy: float, base: float, thinking: float) -> float | None:
    """(accuracy - base) / (thinking - base); None where the thinking model is not ahead."""
    return (accuracy - base) / (thinking - base) if thinking > base else None


def summarize_study(summaries: dict[str, tuple[StudyRun, dict]]) -> dict:
    """Per run its figures and gap recovered, overall and per level (levels of the base run)."""
    base, thinking = summaries["base"][1], summaries["thinking"][1]
    levels = list(base.get("levels", {}))
    rows = {}
    for name, (run, metrics) in summaries.items():
        row = {"kind": run.kind, "coefficients": list(run.coefficients), **_figures(metrics)}
        row["gap_recovered"] = gap_recovered(
            metrics["accuracy"], base["accuracy"], thinking["accuracy"]
        )
        row["levels"] = {}
        for level in levels:
            m = metrics["levels"][level]
            row["levels"][level] = {
                **_figures(m),
                "gap_recovered": gap_recovered(
                    m["accuracy"],
                    base["levels"][level]["accuracy"],
                    thinking["levels"][level]["accuracy"],
                ),
            }
        rows[name] = row
    return {"levels": levels, "runs": rows}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def study_markdown(study: dict) -> str:
    """The study's tables: every run overall, then accuracy and gap recovered per level."""
    head = "| run | coefficients | accuracy % | mean tokens | steered % | gap recovered % |"
    lines = [head, "|---|---|---:|---:|---:|---:|"]
    for name, r in study["runs"].items():
        grid = ",".join(f"{c:g}" for c in r["coefficients"]) or "-"
        lines.append(
            f"| {name} | {grid} | {_pct(r['accuracy'])} | {r['mean_tokens']:.0f} | "
            f"{_pct(r['steered_fraction'])} | {_pct(r['gap_recovered'])} |"
        )
    levels = study["levels"]
    if levels:
        lines += ["", "Accuracy % per level (gap recovered %):", ""]
        lines.append("| run | " + " | ".join(f"level {lv}" for lv in levels) + " |")
        lines.append("|---|" + "---:|" * len(levels))
        for name, r in study["runs"].items():
            cells = []
            for lv in levels:
                x = r["levels"][lv]
                gap = "" if r["kind"] in ("base", "thinking") else f" ({_pct(x['gap_recovered'])})"
                cells.append(_pct(x["accuracy"]) + gap)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_steered(study: dict, path: str | Path) -> Path:
    """Hybrid accuracy against steered fraction, one point per grid (ablations marked apart),
    with the base and thinking models' accuracy as lines."""
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    ax = fig.subplots()
    runs = study["runs"]
    for name, style in (("base", ":"), ("thinking", "--")):
        ax.axhline(100 * runs[name]["accuracy"], color="grey", linestyle=style, label=name)
    markers = {"hybrid": "o", "bias_only": "s", "random_latent": "^"}
    for kind, marker in markers.items():
        points = [
            (r["steered_fraction"], r["accuracy"], grid_name(r["coefficients"]))
            for r in runs.values()
            if r["kind"] == kind
        ]
        if not points:
            continue
        x, y, grids = zip(*points, strict=True)
        ax.plot(100 * np.array(x), 100 * np.array(y), marker, label=kind.replace("_", " "))
        if kind != "hybrid":  # the ablations run the main grid; the legend tells them apart
            continue
        for xi, yi, grid in zip(x, y, grids, strict=True):
            ax.annotate(
                f"c {grid}",
                (100 * xi, 100 * yi),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("steered tokens (% of generated tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("hybrid accuracy against steered fraction, one point per coefficient grid")
    legend_outside(ax)
    return save_figure(fig, path)


def plot_gap_by_level(study: dict, path: str | Path) -> Path:
    """The gap recovered per level, one bar per hybrid or ablation run."""
    levels = study["levels"] or ["all"]
    runs = {n: r for n, r in study["runs"].items() if r["kind"] not in ("base", "thinking")}
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    for i, (name, r) in enumerate(runs.items()):
        gaps = [
            (r["levels"][lv]["gap_recovered"] if lv in r["levels"] else r["gap_recovered"])
            for lv in levels
        ]
        values = [np.nan if g is None else 100 * g for g in gaps]
        ax.bar(np.arange(len(levels)) + i * width, values, width, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
    centre = width * (len(runs) - 1) / 2
    for j, lv in enumerate(levels):  # where the base model already does what thinking does
        if lv in study["runs"]["base"]["levels"] and all(
            r["levels"][lv]["gap_recovered"] is None for r in runs.values()
        ):
            ax.text(j + centre, 5, "no gap", ha="center", fontsize=8, color="grey")
    ax.set_xticks(np.arange(len(levels)) + centre, [str(lv) for lv in levels])
    ax.set_xlabel("level")
    ax.set_ylabel("gap recovered (%)")
    ax.set_title("(hybrid - base) / (thinking - base), per level")
    legend_outside(ax)
    return save_figure(fig, path)


def write_study(study: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STUDY_JSON).write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    (out / STUDY_MD).write_text(study_markdown(study), encoding="utf-8")
    return [
        out / STUDY_JSON,
        out / STUDY_MD,
        plot_steered(study, out / STEERED_PNG),
        plot_gap_by_level(study, out / GAP_PNG),
    ]
