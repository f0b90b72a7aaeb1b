"""`python -m train sae`: the unsupervised taxonomy of a thinking model's reasoning sentences.

    thinking model --greedy traces (or a traces file)--> traces.jsonl
      --sentences, residual stream after each layer, centred + normalised--> sentences.jsonl,
         layer{L}/vectors.npz
      --top-k SAE for every (layer, latents) of the grid--> layer{L}/n{n}/sae.npz
         + layer{L}/n{n}/taxonomy.{json,md}, and summary.{json,md} over the grid

A traces file is JSONL with the question (`question`, else `prompt`) and the reasoning text
(`thinking`, else `think`, as the arithmetic records hold it). Prompts are formatted with the
thinking model's chat template and the opening of its thinking block, as the hybrid decode does.
The SAE file keeps its centring mean and layer, which the steering stage and the hybrid read.

A rerun into the same run_dir (the same settings) keeps its traces and every SAE of the grid
already trained, and trains the rest.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

import jaxthink
from jaxthink.data.records import DataSource, question_of, read_records
from jaxthink.hybrid.activations import (
    Trace,
    sentence_activations,
    sentences_within,
    trace_sentences,
)
from jaxthink.hybrid.decoding import thinking_opening
from jaxthink.hybrid.sae import DEFAULT_LATENTS, SAEConfig, save_sae, train_sae
from jaxthink.hybrid.sentences import center_and_normalize
from jaxthink.hybrid.taxonomy import taxonomy_report, write_report
from jaxthink.runs.config import RunDir
from jaxthink.runs.run import claim_run_dir
from jaxthink.tokenizer import format_prompt

DEFAULT_TRACE_TOKENS = 1000  # the paper reads up to 1000 tokens of each trace
OUTPUTS = ["traces.jsonl", "sentences.jsonl", "summary.json", "summary.md"]  # and layer*/
GRID_HEADER = (
    "| layer | latents | val loss | reconstruction loss | mean abs cos | max abs cos | dead "
    "| largest cluster | epochs |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
)


@dataclasses.dataclass(frozen=True)
class SAERunConfig(RunDir):
    """The SAE stage: which traces (`traces`, else generated for the questions of `data`), which
    layers and latent counts, and how each SAE trains (`sae`: its `n_latents` comes from
    `latents`)."""

    run_dir: str = "runs/sae"
    model: str = ""  # the thinking model's checkpoint directory
    traces: str = ""  # a JSONL traces file; empty: generate them for `data`'s questions
    data: DataSource = DataSource(levels=(1, 2, 3, 4, 5, 6), count=200)
    max_new_tokens: int = DEFAULT_TRACE_TOKENS
    max_trace_tokens: int = DEFAULT_TRACE_TOKENS  # sentences past this token are left out
    batch_size: int = 32
    layers: tuple[int, ...] = ()
    latents: tuple[int, ...] = DEFAULT_LATENTS
    min_words: int = 3  # shorter sentences are dropped (the arithmetic demo needs 1)
    sae: SAEConfig = SAEConfig()

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("model: give the thinking model's checkpoint directory")
        if not self.layers:
            raise ValueError("layers: give the blocks to read, e.g. layers=[2] or layers=1,2,3")
        if not self.latents or min(self.latents) < self.sae.k:
            raise ValueError(f"latents {self.latents}: each must be at least sae.k={self.sae.k}")
        for name in ("max_new_tokens", "max_trace_tokens", "batch_size", "min_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def run_dir_files(run_dir, layer: int, n: int) -> dict[str, Path]:
    """Where one (layer, latents) SAE of a run lives."""
    base = Path(run_dir) / f"layer{layer}"
    return {
        "vectors": base / "vectors.npz",
        "sae": base / f"n{n}" / "sae.npz",
        "taxonomy": base / f"n{n}",
    }


def read_traces(path, tokenizer):
    """Traces from a JSONL file, prompts formatted for `tokenizer` (see the module doc)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"traces {path}: no such file")
    opening = thinking_opening(tokenizer)
    traces = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            question = record.get("question", record.get("prompt"))
            thinking = record.get("thinking", record.get("think"))
            if question is None or thinking is None:
                raise ValueError(
                    f"{path}:{number}: keys {sorted(record)}; expected 'question' (or 'prompt') "
                    "and 'thinking' (or 'think')"
                )
            prompt = format_prompt(tokenizer, question) + opening
            traces.append(Trace(prompt, thinking, question))
    if not traces:
        raise ValueError(f"traces {path}: no records")
    return traces


def generate_traces(cfg: SAERunConfig, model, tokenizer, log=print):
    """Greedy thinking traces of the config's questions (mode think)."""

    questions = [question_of(r) for r in read_records(cfg.data)][: cfg.data.count]
    log(f"generating {len(questions)} thinking traces (greedy, up to {cfg.max_new_tokens} tokens)")
    out = jaxthink.generate(
        model,
        tokenizer,
        questions,
        "think",
        max_new_tokens=cfg.max_new_tokens,
        slots=cfg.batch_size,
    )
    opening = thinking_opening(tokenizer)
    return [Trace(format_prompt(tokenizer, g.prompt) + opening, g.thinking, g.prompt) for g in out]


def train_sae_run(cfg: SAERunConfig, log=print) -> dict:
    """Runs the stage; returns the grid summary (also written as summary.json / summary.md)."""

    run_dir = Path(cfg.run_dir)
    kept = run_dir / "traces.jsonl"
    held = "its traces" if kept.is_file() else None
    if claim_run_dir(cfg, held, OUTPUTS):  # starting over: the grid's SAEs go too
        held = None
        for layer_dir in run_dir.glob("layer*"):
            shutil.rmtree(layer_dir)
    model, tokenizer, model_cfg = jaxthink.load(cfg.model)
    for layer in cfg.layers:
        if not 0 <= layer < model_cfg.num_layers:
            raise ValueError(
                f"layers: {layer} is not a block of the model (0..{model_cfg.num_layers - 1})"
            )
    if held:
        traces = [Trace(**row) for row in _read_jsonl(kept)]
        log(f"resumed: {len(traces)} traces from {kept}")
    elif cfg.traces:
        traces = read_traces(cfg.traces, tokenizer)
    else:
        traces = generate_traces(cfg, model, tokenizer, log)
    if not held:
        _write_jsonl(kept, [dataclasses.asdict(t) for t in traces])
    sentences = trace_sentences(traces, cfg.min_words)
    sentences = sentences_within(tokenizer, traces, sentences, cfg.max_trace_tokens)
    if len(sentences) < 4:
        raise ValueError(
            f"only {len(sentences)} sentences in {len(traces)} traces (min_words={cfg.min_words}); "
            "give more traces or a smaller min_words"
        )
    _write_jsonl(run_dir / "sentences.jsonl", [dataclasses.asdict(s) for s in sentences])
    log(f"{len(sentences)} sentences from {len(traces)} traces; reading layers {list(cfg.layers)}")
    raw = sentence_activations(
        model,
        tokenizer,
        traces,
        sentences,
        cfg.layers,
        batch_size=cfg.batch_size,
        max_tokens=cfg.max_trace_tokens,
    )
    rows = []
    log("\n".join(GRID_HEADER))
    for layer in cfg.layers:
        x, mean = center_and_normalize(raw[layer])
        x, mean = np.asarray(x), np.asarray(mean)
        files = run_dir_files(run_dir, layer, 0)
        files["vectors"].parent.mkdir(parents=True, exist_ok=True)
        np.savez(files["vectors"], x=x, mean=mean, raw=raw[layer])
        for n in cfg.latents:
            files = run_dir_files(run_dir, layer, n)
            done = files["taxonomy"] / "taxonomy.json"
            if files["sae"].is_file() and done.is_file():  # trained by an earlier run
                report = json.loads(done.read_text())
                meta = report["meta"]
                history = {"best_loss": meta["best_loss"], "epochs": meta["epochs"]}
            else:
                options = dataclasses.asdict(cfg.sae)
                del options["n_latents"], options["k"], options["seed"]
                params, history = train_sae(x, n, cfg.sae.k, seed=cfg.sae.seed, **options)
                meta = {
                    "layer": layer,
                    "n_latents": n,
                    "k": cfg.sae.k,
                    "model": cfg.model,
                    "best_loss": history["best_loss"],
                    "epochs": history["epochs"],
                }
                save_sae(files["sae"], params, mean=mean, meta=meta)
                texts = [s.text for s in sentences]
                report = taxonomy_report(params, x, texts, k=cfg.sae.k, meta=meta)
                write_report(report, files["taxonomy"], "taxonomy")
            row = {
                "layer": layer,
                "n_latents": n,
                "val_loss": history["best_loss"],
                "reconstruction_loss": report["reconstruction_loss"],
                **report["orthogonality"],
                "dead_latents": sum(c["size"] == 0 for c in report["clusters"]),
                "largest_cluster_share": max(c["share"] for c in report["clusters"]),
                "epochs": history["epochs"],
            }
            rows.append(row)
            log(_row_line(row))
    summary = {"model": cfg.model, "sentences": len(sentences), "traces": len(traces), "grid": rows}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "summary.md").write_text(_summary_markdown(summary))
    return summary


def _row_line(r: dict) -> str:
    return (
        f"| {r['layer']} | {r['n_latents']} | {r['val_loss']:.4f} | {r['reconstruction_loss']:.4f} "
        f"| {r['mean_abs_cosine']:.3f} | {r['max_abs_cosine']:.3f} | {r['dead_latents']} "
        f"| {r['largest_cluster_share']:.1%} | {r['epochs']} |"
    )


def _summary_markdown(summary: dict) -> str:
    lines = [
        f"# SAE grid: {summary['model']}",
        "",
        f"{summary['sentences']} sentences from {summary['traces']} traces. Per run: "
        "layer{L}/n{n}/taxonomy.md.",
        "",
        *GRID_HEADER,
    ]
    lines += [_row_line(r) for r in summary["grid"]]
    return "\n".join(lines) + "\n"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
