"""The steering file: everything the hybrid decode needs besides the two models, in one .npz.

    base side      layer L, bias vector [E], one vector per SAE latent [n, E] (and their norms)
    thinking side  the SAE that names the latent of the current position (its parameters, the
                   centring mean of its sentence vectors, and the layer it reads)

The vectors are added to the base model's residual stream after block `layer`; the SAE reads the
thinking model's residual stream after block `sae_layer`. `method` records how the vectors were
made ("optimized" or "mean_diff", see train_vectors.py) and `meta` anything JSON-able (models,
SAE run, training losses). No pickle: arrays plus one JSON string.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxthink.hybrid.sae import SAEParams

METHODS = ("optimized", "mean_diff")


@dataclasses.dataclass(frozen=True)
class SteeringVectors:
    """Steering vectors for the clusters of one SAE run, with that SAE."""

    layer: int  # base-model block after which the vectors are added
    bias: np.ndarray  # [E] general-thinking vector, added alongside every category's vector
    vectors: np.ndarray  # [n, E] one per SAE latent (cluster)
    sae: SAEParams  # the thinking model's SAE: the latent of a position is argmax of `pre`
    sae_mean: np.ndarray  # [E_thinking] centring mean of the SAE's sentence vectors
    sae_layer: int  # thinking-model block whose residual stream the SAE reads
    method: str = "optimized"
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}; accepted: {', '.join(METHODS)}")
        n, e = np.shape(self.vectors)
        if np.shape(self.bias) != (e,):
            raise ValueError(f"bias has shape {np.shape(self.bias)}, expected ({e},) like vectors")
        latents = np.shape(self.sae.W_dec)[0]
        if latents != n:
            raise ValueError(f"{n} vectors for an SAE of {latents} latents; need one per latent")
        if np.shape(self.sae_mean) != (np.shape(self.sae.W_enc)[0],):
            raise ValueError(
                f"sae_mean has shape {np.shape(self.sae_mean)}, expected the SAE's input width "
                f"({np.shape(self.sae.W_enc)[0]},)"
            )

    @property
    def n_latents(self) -> int:
        return int(np.shape(self.vectors)[0])

    @property
    def norms(self) -> dict:
        """L2 norms of the bias and of each latent's vector."""
        return {
            "bias": float(np.linalg.norm(self.bias)),
            "vectors": [float(x) for x in np.linalg.norm(self.vectors, axis=1)],
        }


def save_steering(path, steering: SteeringVectors) -> Path:
    """Writes the steering file (.npz); returns its path. The norms go into the JSON header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "layer": steering.layer,
        "sae_layer": steering.sae_layer,
        "method": steering.method,
        "norms": steering.norms,
        "meta": steering.meta,
    }
    arrays = {
        "bias": np.asarray(steering.bias, np.float32),
        "vectors": np.asarray(steering.vectors, np.float32),
        "sae_mean": np.asarray(steering.sae_mean, np.float32),
        **{f"sae_{k}": np.asarray(v, np.float32) for k, v in steering.sae._asdict().items()},
        "header": np.array(json.dumps(header)),
    }
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def load_steering(path) -> SteeringVectors:
    """The `SteeringVectors` of a file written by `save_steering`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"steering file {path}: no such file (write one with python -m train steer)"
        )
    needed = ["bias", "vectors", "sae_mean", "header"] + [f"sae_{k}" for k in SAEParams._fields]
    with np.load(path, allow_pickle=False) as data:
        missing = [name for name in needed if name not in data]
        if missing:
            raise ValueError(f"{path}: not a steering file, missing arrays {missing}")
        header = json.loads(str(data["header"]))
        return SteeringVectors(
            layer=int(header["layer"]),
            bias=data["bias"],
            vectors=data["vectors"],
            sae=SAEParams(*(data[f"sae_{k}"] for k in SAEParams._fields)),
            sae_mean=data["sae_mean"],
            sae_layer=int(header["sae_layer"]),
            method=header["method"],
            meta=header.get("meta", {}),
        )
