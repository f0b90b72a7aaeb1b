"""Per-step metrics: one JSON object per line in `run_dir/metrics.jsonl`, a console line, and
the plot of the think ratio over steps (the Thinkless U-curve).

A resumed run first drops the lines past the step it resumes from, so the log always describes
the run that produced the current parameters. Paths may be local or gs:// (etils.epath): a
local log is appended to, a remote one (objects cannot be appended to) rewritten whole. In a
multi-host run only the main process writes (`enabled`).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
from etils import epath


def _plain(value):
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "dtype"):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


class MetricsLog:
    """Appends step records to a JSONL file; `resume_step` truncates what came after it.
    With `enabled` False (a process other than the main one) it writes nothing."""

    def __init__(self, path, resume_step: int = 0, enabled: bool = True):
        self.path = epath.Path(path)
        self.enabled = enabled
        self.remote = "://" in str(path)
        if not enabled:
            return
        self.lines = [
            json.dumps(r) + "\n" for r in read_metrics(self.path) if r.get("step", 0) <= resume_step
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(self.lines), encoding="utf-8")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _plain(v) for k, v in record.items()}) + "\n"
        self.lines.append(line)
        if self.remote:
            self.path.write_text("".join(self.lines), encoding="utf-8")
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)


def read_metrics(path) -> list[dict]:
    path = epath.Path(path)
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


def plot_metric(runs, out, key: str = "think_ratio", title: str | None = None) -> epath.Path | None:
    """A line plot of `key` over steps from a metrics file, or from several runs given as
    {label: metrics file} (one line each, labelled). None if no record has `key`."""
    named = runs if isinstance(runs, dict) else {None: runs}
    curves = {
        label: [r for r in read_metrics(path) if isinstance(r.get(key), (int, float))]
        for label, path in named.items()
    }
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, records in curves.items():
        ax.plot([r["step"] for r in records], [r[key] for r in records], marker=".", label=label)
    if len(curves) > 1:
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title or f"{key.replace('_', ' ')} over training")
    if key == "think_ratio":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    out = epath.Path(out)
    out.write_bytes(buffer.getvalue())
    return out
