"""`python -m train steer`: steering vectors on the base model for the clusters of one SAE run.

    SAE run (traces.jsonl, sentences.jsonl, layer{S}/vectors.npz, layer{S}/n{n}/sae.npz)
      --clusters = argmax of the SAE's `pre` per sentence-->
    base model over the same traces (its own chat prompt, the thinking text right after it)
      --optimized: bias on whole traces, then one vector per cluster (train_vectors.py)
        mean_diff: cluster mean minus overall mean of the base model's sentence vectors-->
    run_dir/steering.npz (vectors, their layer and norms, and the SAE that picks them)
    + run_dir/report.json (per vector: examples, losses before and after, norm, epochs)

The steering file is what `python -m infer --mode hybrid --steering FILE` reads. A rerun into the
same run_dir (the same settings) keeps the vectors already trained (run_dir/progress.npz) and
trains the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import jaxthink
from jaxthink.hybrid.activations import (
    Trace,
    TraceSentence,
    sentence_activations,
    tokenize_trace,
)
from jaxthink.hybrid.sae import assign_clusters, load_sae
from jaxthink.hybrid.sae_run import run_dir_files
from jaxthink.hybrid.train_vectors import (
    VectorTraining,
    example,
    hardest,
    mean_difference,
    train_vector,
)
from jaxthink.hybrid.vectors import SteeringVectors, save_steering
from jaxthink.runs.config import RunDir
from jaxthink.runs.run import claim_run_dir
from jaxthink.tokenizer import format_prompt

METHODS = ("optimized", "mean_diff")
OUTPUTS = ["progress.npz", "progress.json", "steering.npz", "report.json"]


@dataclasses.dataclass(frozen=True)
class SteerRunConfig(RunDir):
    """The steering stage; `training` is how each vector is optimised (the paper's defaults)."""

    run_dir: str = "runs/steer"
    model: str = ""  # the base model's checkpoint directory
    sae_run: str = ""  # run_dir of `python -m train sae`
    sae_layer: int = -1  # which SAE of that run: its layer ...
    latents: int = 0  # ... and number of latents
    layer: int = -1  # the base model's block after which the vectors are added
    method: str = "optimized"
    max_examples: int = 2048  # per cluster: the highest-perplexity sentences
    bias_examples: int = 2048  # whole traces for the bias vector
    training: VectorTraining = VectorTraining()

    def __post_init__(self):
        super().__post_init__()
        if not self.model or not self.sae_run:
            raise ValueError("model and sae_run: give the base checkpoint and the SAE run_dir")
        if self.sae_layer < 0 or self.latents < 1 or self.layer < 0:
            raise ValueError(
                "sae_layer, latents and layer: pick the SAE (its layer and number of latents in "
                "the SAE run) and the base model's block to steer, e.g. sae_layer=2 latents=10 "
                "layer=2"
            )
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}; accepted: {', '.join(METHODS)}")
        if self.max_examples < 1 or self.bias_examples < 1:
            raise ValueError("max_examples and bias_examples must be positive")


def load_sae_run(cfg: SteerRunConfig):
    """(trace records, sentences, SAE params, centring mean, clusters) of the chosen SAE."""

    run = Path(cfg.sae_run)
    files = run_dir_files(run, cfg.sae_layer, cfg.latents)
    for path in (run / "traces.jsonl", run / "sentences.jsonl", files["vectors"], files["sae"]):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; is {run} an SAE run with layer {cfg.sae_layer} and "
                f"{cfg.latents} latents (python -m train sae)?"
            )
    read = lambda p: [json.loads(line) for line in p.open(encoding="utf-8") if line.strip()]
    traces = read(run / "traces.jsonl")
    sentences = [TraceSentence(**s) for s in read(run / "sentences.jsonl")]
    params, mean, _ = load_sae(files["sae"])
    with np.load(files["vectors"]) as data:
        clusters = np.asarray(assign_clusters(params, data["x"]))
    return traces, sentences, params, mean, clusters


def train_steer_run(cfg: SteerRunConfig, log=print):
    """Runs the stage; returns the `SteeringVectors` (also written to run_dir/steering.npz)."""
    run_dir = Path(cfg.run_dir)
    progress = Progress(run_dir)
    held = "trained vectors" if progress.report["vectors"] or "bias" in progress.report else None
    if claim_run_dir(cfg, held, OUTPUTS):
        progress = Progress(run_dir)
    records, sentences, sae, sae_mean, clusters = load_sae_run(cfg)
    model, tokenizer, model_cfg = jaxthink.load(cfg.model)
    if not 0 <= cfg.layer < model_cfg.num_layers:
        raise ValueError(
            f"layer {cfg.layer}: the base model has blocks 0..{model_cfg.num_layers - 1}"
        )
    # The base model reads the traces as hybrid decoding prompts it: its plain chat prompt, the
    # thinking text right after it (no thinking block opened).
    traces = [
        Trace(format_prompt(tokenizer, r["question"]), r["thinking"], r["question"])
        for r in records
    ]
    n = cfg.latents
    report = progress.report
    report.update(method=cfg.method, layer=cfg.layer)
    if cfg.method == "mean_diff":
        raw = sentence_activations(model, tokenizer, traces, sentences, [cfg.layer])[cfg.layer]
        bias, vectors = (
            np.zeros(model_cfg.hidden_size, np.float32),
            mean_difference(raw, clusters, n),
        )
        for k in range(n):
            report["vectors"][str(k)] = {"sentences": int((clusters == k).sum())}
    else:
        training, max_len = cfg.training, cfg.training.max_len
        by_trace: dict[int, list[int]] = {}
        for j, s in enumerate(sentences):
            by_trace.setdefault(s.trace, []).append(j)
        per_sentence: dict[int, object] = {}
        whole = []
        for t, trace in enumerate(traces):
            own = by_trace.get(t, [])
            tok = tokenize_trace(tokenizer, trace, [sentences[j] for j in own])
            end = min(len(tok.ids), tok.thinking_start + max_len - 1)  # fits one row
            if 1 <= tok.thinking_start < end:
                whole.append(example(tok.ids, tok.thinking_start, end, max_len))
            for j, (start, end) in zip(own, tok.spans, strict=True):
                if start >= 1 and end - start < max_len:
                    per_sentence[j] = example(tok.ids, start, end, max_len)
        bias, vectors = progress.arrays(n, model_cfg.hidden_size)
        if "bias" in report:
            log(f"resumed: the bias and {len(report['vectors'])} vectors from {progress.npz}")
        else:
            log(f"bias vector: {len(whole)} traces")
            bias_rows = hardest(model, whole, cfg.bias_examples, training.batch_size)
            bias, history = train_vector(model, bias_rows, cfg.layer, training)
            report["bias"] = _entry(history, len(bias_rows))
            log(_line("bias", report["bias"]))
            progress.save(bias, vectors)
        for k in range(n):
            if str(k) in report["vectors"]:
                continue
            members = [per_sentence[j] for j in np.flatnonzero(clusters == k) if j in per_sentence]
            if not members:
                report["vectors"][str(k)] = {"examples": 0, "note": "no sentences in this cluster"}
                continue
            rows = hardest(model, members, cfg.max_examples, training.batch_size)
            vectors[k], history = train_vector(model, rows, cfg.layer, training, fixed=bias)
            report["vectors"][str(k)] = _entry(history, len(rows))
            log(_line(f"latent {k}", report["vectors"][str(k)]))
            progress.save(bias, vectors)
    meta = {
        "base_model": cfg.model,
        "sae_run": cfg.sae_run,
        "n_latents": n,
        "report": str(run_dir / "report.json"),
    }
    steering = SteeringVectors(
        layer=cfg.layer,
        bias=bias,
        vectors=vectors,
        sae=sae,
        sae_mean=np.asarray(sae_mean),
        sae_layer=cfg.sae_layer,
        method=cfg.method,
        meta=meta,
    )
    report["norms"] = steering.norms
    path = save_steering(run_dir / "steering.npz", steering)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(
        f"wrote {path}: bias norm {steering.norms['bias']:.2f}, vector norms "
        + ", ".join(f"{x:.2f}" for x in steering.norms["vectors"])
    )
    return steering


class Progress:
    """The optimized method's vectors so far (run_dir/progress.npz) and their report entries
    (run_dir/progress.json), saved after each vector, so a rerun trains only the rest."""

    def __init__(self, run_dir: Path):
        self.npz, self.json = run_dir / "progress.npz", run_dir / "progress.json"
        self.report: dict = {"vectors": {}}
        if self.json.is_file() and self.npz.is_file():
            self.report = json.loads(self.json.read_text())

    def arrays(self, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(bias [E], vectors [n, E]) saved so far, zeros where none were."""
        if not self.npz.is_file():
            return np.zeros(width, np.float32), np.zeros((n, width), np.float32)
        with np.load(self.npz) as data:
            return data["bias"], data["vectors"].copy()

    def save(self, bias: np.ndarray, vectors: np.ndarray) -> None:
        self.npz.parent.mkdir(parents=True, exist_ok=True)
        with self.npz.open("wb") as f:
            np.savez(f, bias=bias, vectors=vectors)
        self.json.write_text(json.dumps(self.report, indent=2) + "\n")


def _entry(history: dict, examples: int) -> dict:
    keep = ("best_loss", "initial_loss", "best_epoch", "epochs", "n_train", "n_val", "norm")
    return {"examples": examples, **{k: history[k] for k in keep}}


def _line(name: str, e: dict) -> str:
    return (
        f"{name}: {e['examples']} examples, loss {e['initial_loss']:.4f} -> {e['best_loss']:.4f}"
        f" (epoch {e['best_epoch'] + 1} of {e['epochs']}), norm {e['norm']:.2f}"
    )
