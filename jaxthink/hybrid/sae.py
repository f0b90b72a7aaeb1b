"""Top-k sparse autoencoder over sentence vectors: the clustering behind the reasoning taxonomy.

Owns the SAE of docs/methods.md section 3 (Venhoff et al. 2025), as pure JAX functions of a
parameter pytree plus an optax training loop:

    pre   = (x - b_dec) @ W_enc + b_enc                      [N, n]
    codes = pre at its top k entries per row, 0 elsewhere     (no ReLU: kept values may be < 0)
    x_hat = codes @ W_dec + b_dec                            (W_dec rows have unit norm)
    loss  = sum (x_hat - x)^2 / sum (x - batch mean)^2        (normalised, per batch)
    cluster of x = argmax of pre

Training: Adam at lr = 2e-4 / sqrt(n / 16384), batches of 512, up to 300 epochs, early stopping
with patience 10 on a held-out validation split, decoder rows renormalised after every step.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxthink.hybrid.early_stopping import EarlyStopping

DEFAULT_LATENTS = tuple(range(5, 55, 5))  # the paper's grid n in {5, 10, ..., 50}
B_DEC_INITS = ("zeros", "mean")


class SAEParams(NamedTuple):
    """The SAE's parameters (a pytree). E = input width, n = number of latents."""

    W_enc: jax.Array  # [E, n]
    b_enc: jax.Array  # [n]
    W_dec: jax.Array  # [n, E], unit-norm rows: the latents' directions
    b_dec: jax.Array  # [E]


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """How `train_sae` trains one SAE; the defaults are the paper's.

    lr: None means the paper's scaling `sae_learning_rate(n_latents)`.
    val_fraction: share of the rows held out for early stopping (0 monitors the training loss).
    min_delta: a validation loss counts as an improvement only if below best - min_delta.
    b_dec_init: "zeros" (the data are centred, so their mean is ~0 anyway) or "mean" (the
        training rows' mean, which helps on data that were not centred).
    """

    n_latents: int = 0  # 0 in a run config: each SAE of its grid sets it
    k: int = 3
    batch_size: int = 512
    max_epochs: int = 300
    patience: int = 10
    min_delta: float = 0.0
    val_fraction: float = 0.1
    lr: float | None = None
    b_dec_init: str = "zeros"
    seed: int = 0

    def __post_init__(self):
        if self.n_latents < 0:
            raise ValueError(f"n_latents must be >= 1, got {self.n_latents}")
        if self.n_latents and not 1 <= self.k <= self.n_latents:
            raise ValueError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (loss / batch variance), got {self.batch_size}"
            )
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(
                f"max_epochs and patience must be >= 1, got {self.max_epochs}, {self.patience}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")

    @property
    def learning_rate(self) -> float:
        return sae_learning_rate(self.n_latents) if self.lr is None else self.lr


def sae_learning_rate(n_latents: int) -> float:
    """The paper's Adam learning rate for n latents: 2e-4 / sqrt(n / 16384)."""
    return 2e-4 / math.sqrt(n_latents / 16384)


def init_sae(rng: int | np.random.Generator, n_latents: int, dim: int, b_dec=None) -> SAEParams:
    """Random unit decoder rows, the encoder tied to their transpose, zero biases.

    `rng` is a seed or a numpy Generator (host-side randomness: nothing to compile). `b_dec`
    (default zeros) sets the decoder bias, e.g. to the data mean.
    """
    gaussian = np.random.default_rng(rng).standard_normal((n_latents, dim))
    directions = gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)
    b_dec = np.zeros(dim) if b_dec is None else np.asarray(b_dec)
    return SAEParams(
        jnp.asarray(directions.T, jnp.float32),
        jnp.zeros(n_latents, jnp.float32),
        jnp.asarray(directions, jnp.float32),
        jnp.asarray(b_dec, jnp.float32),
    )


def preactivations(params: SAEParams, x: jax.Array) -> jax.Array:
    """pre = (x - b_dec) @ W_enc + b_enc, [..., n]."""
    return (x - params.b_dec) @ params.W_enc + params.b_enc


def top_k_codes(pre: jax.Array, k: int) -> jax.Array:
    """`pre` at its k largest entries per row and 0 elsewhere (values kept even if negative)."""
    _, indices = jax.lax.top_k(pre, k)
    kept = jax.nn.one_hot(indices, pre.shape[-1], dtype=jnp.bool_).any(axis=-2)
    return jnp.where(kept, pre, 0.0)


def encode(params: SAEParams, x: jax.Array, k: int = 3) -> jax.Array:
    """Sparse codes [..., n] with exactly k kept entries per row."""
    return top_k_codes(preactivations(params, x), k)


def decode(params: SAEParams, codes: jax.Array) -> jax.Array:
    """x_hat = codes @ W_dec + b_dec."""
    return codes @ params.W_dec + params.b_dec


def assign_clusters(params: SAEParams, x: jax.Array) -> jax.Array:
    """The cluster (latent index) of each row: argmax of `pre`."""
    return jnp.argmax(preactivations(params, x), axis=-1)


def normalized_loss(params: SAEParams, x: jax.Array, k: int = 3, mask=None) -> jax.Array:
    """sum (x_hat - x)^2 / sum (x - mean)^2 over the rows of the batch `x` [B, E].

    `mask` [B] (1 = real row) leaves padding rows out of both sums and of the batch mean.
    """
    weights = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    weights = weights[:, None]
    mean = (weights * x).sum(axis=0) / jnp.maximum(weights.sum(), 1.0)
    x_hat = decode(params, encode(params, x, k))
    error = (weights * (x_hat - x) ** 2).sum()
    variance = (weights * (x - mean) ** 2).sum()
    return error / jnp.maximum(variance, jnp.finfo(jnp.float32).tiny)


def renormalize_decoder(params: SAEParams) -> SAEParams:
    """The same parameters with every decoder row scaled to unit length."""
    return params._replace(W_dec=_unit_rows(params.W_dec))


def make_update_step(optimizer: optax.GradientTransformation, k: int = 3):
    """A jitted pure step (params, opt_state, x [B, E], mask [B]) -> (params, opt_state, loss).

    One optimizer update on the normalised loss, then the decoder rows back to unit norm.
    """

    def step(params, opt_state, x, mask):
        loss, grads = jax.value_and_grad(normalized_loss)(params, x, k, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = renormalize_decoder(optax.apply_updates(params, updates))
        return params, opt_state, loss

    return jax.jit(step)


def train_sae(x, n_latents: int, k: int = 3, *, seed: int = 0, **options) -> tuple[SAEParams, dict]:
    """Trains a top-k SAE with `n_latents` latents on the rows of `x` [N, E].

    `options` are the other fields of `SAEConfig` (batch_size, max_epochs, patience, min_delta,
    val_fraction, lr, b_dec_init). One numpy Generator seeded with `seed` draws the validation
    split (`val_fraction` of the rows), the initial decoder rows and every epoch's shuffle. An
    epoch cuts the shuffled training rows into ceil(N_train / batch_size) batches of (nearly)
    equal size, so every row is used once per epoch and no batch is tiny. Training stops after
    `patience` epochs without a better validation loss (the whole validation split as one batch)
    and returns the parameters of the best epoch. Compiled epochs are cached per
    (k, N_train, batch_size) and shapes, so a grid over layers compiles once per n.

    Returns (params, history): history holds per-epoch "train_loss" (mean over batches) and
    "val_loss", "best_epoch", "best_loss", "epochs", "stopped_early", "lr", "n_train", "n_val"
    and the "config" used.
    """
    if n_latents < 1:
        raise ValueError(f"n_latents must be >= 1, got {n_latents}")
    config = SAEConfig(n_latents=n_latents, k=k, seed=seed, **options)
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be [N, E] sentence vectors, got shape {x.shape}")
    rng = np.random.default_rng(config.seed)
    x_train, x_val = _split(x, config.val_fraction, rng)
    b_dec = x_train.mean(axis=0) if config.b_dec_init == "mean" else None
    params = init_sae(rng, n_latents, x.shape[1], b_dec)
    opt_state = _adam(config.learning_rate).init(params)
    run_epoch = _compiled_epoch(k, len(x_train), config.batch_size)
    x_train = jnp.asarray(x_train)
    x_val = None if x_val is None else jnp.asarray(x_val)

    history: dict[str, Any] = {"train_loss": [], "val_loss": []}
    stopping = EarlyStopping(config.patience, config.min_delta, best=params)
    for epoch in range(config.max_epochs):
        order = rng.permutation(len(x_train))
        params, opt_state, train_loss = run_epoch(params, opt_state, x_train, order)
        history["train_loss"].append(float(train_loss))
        if x_val is None:
            monitored = float(train_loss)
        else:
            monitored = float(_evaluate(params, x_val, k))
            history["val_loss"].append(monitored)
        if stopping.update(epoch, monitored, params):
            break
    history.update(
        best_epoch=stopping.best_epoch,
        best_loss=stopping.best_loss,
        epochs=len(history["train_loss"]),
        stopped_early=len(history["train_loss"]) < config.max_epochs,
        lr=config.learning_rate,
        n_train=int(x_train.shape[0]),
        n_val=0 if x_val is None else int(x_val.shape[0]),
        config=dataclasses.asdict(config),
    )
    return stopping.best, history


def train_grid(
    x, latents=DEFAULT_LATENTS, k: int = 3, *, seed: int = 0, **options
) -> dict[int, tuple[SAEParams, dict]]:
    """`train_sae` for each number of latents (the paper's n in {5, 10, ..., 50}) on one layer's x.

    Returns {n: (params, history)}; every SAE uses the same seed, hence the same validation split.
    """
    return {int(n): train_sae(x, int(n), k, seed=seed, **options) for n in latents}


def save_sae(path, params: SAEParams, *, mean=None, meta: dict | None = None) -> Path:
    """Writes the parameters (and the centring mean, and JSON-able `meta`) to an .npz file."""
    path = Path(path)
    arrays = {name: np.asarray(value) for name, value in params._asdict().items()}
    if mean is not None:
        arrays["mean"] = np.asarray(mean, np.float32)
    arrays["meta"] = np.array(json.dumps(meta or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def load_sae(path) -> tuple[SAEParams, jax.Array | None, dict]:
    """(params, centring mean or None, meta) as written by `save_sae` (no pickle involved)."""
    with np.load(Path(path), allow_pickle=False) as data:
        missing = [name for name in SAEParams._fields if name not in data]
        if missing:
            raise ValueError(f"{path}: not an SAE file, missing arrays {missing}")
        params = SAEParams(*(jnp.asarray(data[name]) for name in SAEParams._fields))
        mean = jnp.asarray(data["mean"]) if "mean" in data else None
        meta = json.loads(str(data["meta"])) if "meta" in data else {}
    return params, mean, meta


def _unit_rows(matrix: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / jnp.maximum(norms, jnp.finfo(matrix.dtype).tiny)


def _split(x: np.ndarray, val_fraction: float, rng: np.random.Generator):
    """(train rows, validation rows or None) from a seeded permutation of the rows of x."""
    n = x.shape[0]
    n_val = round(n * val_fraction)
    if val_fraction > 0 and (n_val < 2 or n - n_val < 2):
        raise ValueError(
            f"{n} rows cannot be split with val_fraction={val_fraction} into >= 2 validation and "
            ">= 2 training rows; give more rows or val_fraction=0"
        )
    if val_fraction == 0 and n < 2:
        raise ValueError(f"need at least 2 rows to train an SAE, got {n}")
    if n_val == 0:
        return x, None
    order = rng.permutation(n)
    return x[np.sort(order[n_val:])], x[np.sort(order[:n_val])]


def _adam(learning_rate: float) -> optax.GradientTransformation:
    """Adam whose learning rate lives in its state, so one compiled epoch serves every rate."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


@functools.lru_cache(maxsize=64)
def _compiled_epoch(k: int, n_train: int, batch_size: int):
    """The jitted epoch for these static settings, shared by every `train_sae` call using them
    (a grid over layers recompiles only per number of latents).

    The optimizer's learning rate here is a placeholder: updates read it from the state.
    """
    return _epoch_runner(make_update_step(_adam(0.0), k), n_train, batch_size)


_evaluate = jax.jit(normalized_loss, static_argnames="k")


def _epoch_runner(step, n_train: int, batch_size: int):
    """A jitted epoch (params, opt_state, x, order) -> (params, opt_state, mean batch loss).

    `order` is a permutation of the n_train rows; it is cut into ceil(n_train / batch_size)
    batches of equal size, and when the rows do not divide evenly the last `padding` batches each
    get one masked slot, so every batch holds at least size - 1 real rows. `step` is scanned over
    the batches.
    """
    n_batches = -(-n_train // batch_size)
    size = -(-n_train // n_batches)
    padding = n_batches * size - n_train
    slots = np.ones((n_batches, size), bool)
    slots[n_batches - padding :, -1] = False
    rank = np.where(slots, np.cumsum(slots).reshape(n_batches, size) - 1, 0)

    @jax.jit
    def run_epoch(params, opt_state, x, order):
        rows = jnp.where(slots, order[rank], 0)

        def body(carry, batch):
            batch_rows, batch_mask = batch
            params, opt_state, loss = step(*carry, x[batch_rows], batch_mask)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (rows, slots))
        return params, opt_state, losses.mean()

    return run_epoch
