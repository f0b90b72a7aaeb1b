"""The taxonomy report: what each SAE cluster holds, without an LLM judge.

Owns `taxonomy_report` (per cluster: size, share, mean activation, top example sentences and
examples spread over the cluster's activation deciles, the nearest other latent; overall:
normalised reconstruction loss and decoder-direction orthogonality) and `write_report` (JSON for
programs, Markdown for people). The paper titles and scores clusters with an LLM; here a title is
optional and comes from a caller-supplied `titler` (e.g. a local jaxthink model).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxthink.hybrid.sae import SAEParams, normalized_loss, preactivations
from jaxthink.hybrid.sentences import Sentence

DECILES = 10


def decoder_orthogonality(params: SAEParams) -> dict[str, float]:
    """Mean and max |cosine| over pairs of distinct decoder rows, in [0, 1] (0 = orthogonal)."""
    cosines = _abs_cosines(params)
    n = cosines.shape[0]
    if n < 2:
        return {"mean_abs_cosine": 0.0, "max_abs_cosine": 0.0}
    off_diagonal = cosines[~np.eye(n, dtype=bool)]
    return {
        "mean_abs_cosine": float(off_diagonal.mean()),
        "max_abs_cosine": float(off_diagonal.max()),
    }


def taxonomy_report(
    params: SAEParams,
    x,
    sentences_text: Sequence[str | Sentence],
    *,
    k: int = 3,
    examples_per_decile: int = 2,
    max_examples: int = 20,
    top_examples: int = 5,
    titler: Callable[[list[str]], str] | None = None,
    meta: dict | None = None,
) -> dict[str, Any]:
    """A JSON-able description of the clusters of the sentence vectors `x` [N, E].

    `sentences_text[i]` is the sentence (text or `Sentence`) of row i; `k` is the SAE's top-k
    (parameters do not record it) and only matters for the reconstruction loss. A sentence's cluster is the argmax of `pre` and
    its activation is that maximum. Per cluster, the examples are picked deterministically: sort
    the members by activation, cut them into ten equal-count deciles, take `examples_per_decile`
    evenly spaced members from each, filling from the top decile down until `max_examples`.
    `titler`, if given, receives those example texts and returns the cluster's title.
    """
    x = jnp.asarray(x, jnp.float32)
    texts = [s.text if isinstance(s, Sentence) else str(s) for s in sentences_text]
    if x.ndim != 2 or x.shape[0] != len(texts):
        raise ValueError(
            f"x has shape {x.shape} but there are {len(texts)} sentences; expected [N, E] with "
            "one row per sentence"
        )
    pre = np.asarray(preactivations(params, x))
    clusters = pre.argmax(axis=1)
    activations = pre[np.arange(len(texts)), clusters]
    cosines = _abs_cosines(params)
    np.fill_diagonal(cosines, -1.0)
    report_clusters = []
    for latent in range(pre.shape[1]):
        members = np.flatnonzero(clusters == latent)
        entry = _cluster_entry(members, activations, texts, examples_per_decile, max_examples)
        entry["top_examples"] = _top_examples(members, activations, texts, top_examples)
        if cosines.shape[0] > 1:
            nearest = int(cosines[latent].argmax())
            entry.update(nearest_latent=nearest, nearest_abs_cosine=float(cosines[latent, nearest]))
        entry["title"] = (
            titler([e["text"] for e in entry["examples"]]) if titler and members.size else None
        )
        report_clusters.append({"latent": latent, **entry})
    return {
        "n_sentences": len(texts),
        "dim": int(x.shape[1]),
        "n_latents": int(pre.shape[1]),
        "k": k,
        "reconstruction_loss": float(normalized_loss(params, x, k)),
        "orthogonality": decoder_orthogonality(params),
        "clusters": report_clusters,
        "meta": dict(meta or {}),
    }


def write_report(report: dict[str, Any], out_dir, name: str) -> tuple[Path, Path]:
    """Writes `<out_dir>/<name>.json` and `<out_dir>/<name>.md`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, name), encoding="utf-8")
    return json_path, md_path


def render_markdown(report: dict[str, Any], name: str) -> str:
    """The report as a Markdown page: a summary table, then one section per cluster."""
    ortho = report["orthogonality"]
    lines = [
        f"# Reasoning taxonomy: {name}",
        "",
        f"{report['n_sentences']} sentences, {report['n_latents']} latents (top-{report['k']} SAE). "
        f"Normalised reconstruction loss {report['reconstruction_loss']:.4f}. Decoder directions: "
        f"mean |cos| {ortho['mean_abs_cosine']:.3f}, max |cos| {ortho['max_abs_cosine']:.3f}.",
        "",
        "| latent | title | size | share | mean activation | nearest latent (abs cos) |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for c in report["clusters"]:
        nearest = (
            f"{c['nearest_latent']} ({c['nearest_abs_cosine']:.3f})"
            if "nearest_latent" in c
            else "-"
        )
        lines.append(
            f"| {c['latent']} | {_cell(c['title'] or '')} | {c['size']} | {c['share']:.1%} "
            f"| {_number(c['mean_activation'])} | {nearest} |"
        )
    for c in report["clusters"]:
        title = f": {_inline(c['title'])}" if c["title"] else ""
        lines += ["", f"## Latent {c['latent']}{title}", ""]
        if not c["size"]:
            lines.append("No sentences (a dead latent).")
            continue
        lines.append(f"{c['size']} sentences, mean activation {_number(c['mean_activation'])}.")
        lines += ["", "Top examples:", ""]
        lines += [f"- ({e['activation']:.3f}) {_inline(e['text'])}" for e in c["top_examples"]]
        lines += ["", f"Examples across activation deciles ({DECILES} = highest):", ""]
        lines += [
            f"- d{e['decile']} ({e['activation']:.3f}) {_inline(e['text'])}" for e in c["examples"]
        ]
    return "\n".join(lines) + "\n"


def _abs_cosines(params: SAEParams) -> np.ndarray:
    rows = np.asarray(params.W_dec, np.float64)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    return np.clip(np.abs(rows @ rows.T), 0.0, 1.0)


def _cluster_entry(members, activations, texts, per_decile, cap) -> dict[str, Any]:
    """Size, share, mean activation and decile-spread examples of one cluster."""
    size = int(members.size)
    entry = {
        "size": size,
        "share": size / len(texts) if texts else 0.0,
        "mean_activation": float(activations[members].mean()) if size else None,
    }
    ascending = members[np.argsort(activations[members], kind="stable")]
    deciles = np.array_split(ascending, DECILES)  # deciles[0] = lowest activations
    picks = [_evenly_spaced(d, per_decile) for d in deciles]
    chosen = []
    for rank in range(per_decile):
        for decile in reversed(range(DECILES)):
            if rank < len(picks[decile]) and len(chosen) < cap:
                chosen.append((decile, picks[decile][rank]))
    chosen.sort(key=lambda item: (-item[0], -activations[item[1]]))
    entry["examples"] = [_example(i, activations, texts, decile + 1) for decile, i in chosen]
    return entry


def _top_examples(members, activations, texts, count) -> list[dict[str, Any]]:
    descending = members[np.argsort(-activations[members], kind="stable")]
    return [_example(i, activations, texts) for i in descending[:count]]


def _evenly_spaced(items: np.ndarray, count: int) -> list[int]:
    """`count` members of `items` at evenly spaced positions (all of them if fewer)."""
    if items.size <= count:
        return [int(i) for i in items]
    positions = ((np.arange(count) + 0.5) * items.size / count).astype(int)
    return [int(items[p]) for p in positions]


def _example(index, activations, texts, decile: int | None = None) -> dict[str, Any]:
    example = {"index": int(index), "activation": float(activations[index]), "text": texts[index]}
    return example if decile is None else {"decile": decile, **example}


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _inline(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|")
