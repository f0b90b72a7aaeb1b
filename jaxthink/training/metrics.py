"""Per-step metrics: one JSON object per line in `run_dir/metrics.jsonl`, a console line, and
the plot of the think ratio over steps (the Thinkless U-curve).

A resumed run first drops the lines past the step it resumes from, so the log always describes
the run that produced the current parameters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _plain(value):
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "dtype"):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


class MetricsLog:
    """Appends step records to a JSONL file; `resume_step` truncates what came after it."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def console_line(record: dict, keys: tuple[str, ...]) -> str:
    """`step 12 | loss 1.234 | ...` with the keys present in `record`."""
    parts = [f"step {record['step']}"]
    for key in keys:
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(parts)


def plot_metric(
    path: str | Path, out: str | Path, key: str = "think_ratio", title: str | None = None
) -> Path | None:
    """A line plot of `key` over steps from a metrics file (None if no record has it)."""
    records = [r for r in read_metrics(path) if isinstance(r.get(key), (int, float))]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r[key] for r in records], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title or f"{key.replace('_', ' ')} over training")
    if key == "think_ratio":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
