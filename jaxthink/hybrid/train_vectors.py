"""Steering vectors for the base model: the optimised objective, and the difference of means.

Optimised (docs/methods.md section 3). An example is a sentence of a thinking trace in the base
model's tokenization: its row holds the prompt and the trace up to the sentence's end, and the
"target" positions are [start - 1, end - 1), whose next-token predictions are the sentence's
tokens. A vector v is added after block L at the target positions only and trained to minimise
the mean cross-entropy of the sentence tokens under logits x 0.7 (the base model stays frozen):

    bias      first, on whole traces (target = the entire thinking text), then frozen;
    category  one per SAE cluster, on that cluster's sentences, with the bias added alongside;
              the training sentences are the `max_examples` of highest perplexity under the
              unsteered base model.

Adam with cosine decay over `max_epochs`, early stopping on a held-out share (patience), the
best epoch kept. Difference of means (the earlier paper's vectors): the mean base-model sentence
vector of a cluster minus that of all sentences; no bias.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxthink.hybrid.early_stopping import EarlyStopping
from jaxthink.models.qwen import Steering, forward

_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class Example:
    """One training row: `ids` (context + target), target token positions [start, end)."""

    ids: list[int]
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class VectorTraining:
    """How one steering vector is optimised; the defaults are the paper's."""

    lr: float = 1e-2
    max_epochs: int = 50
    patience: int = 5
    batch_size: int = 16
    logit_scale: float = 0.7
    val_fraction: float = 0.1
    max_len: int = 1024  # a row keeps the last max_len tokens of its context + target
    seed: int = 0

    def __post_init__(self):
        for name in ("lr", "max_epochs", "patience", "batch_size", "logit_scale", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def example(ids: Sequence[int], start: int, end: int, max_len: int) -> Example:
    """The row for target tokens ids[start:end] after ids[:start], cut to its last max_len."""
    if not 1 <= start < end <= len(ids):
        raise ValueError(f"target [{start}, {end}) must lie in [1, {len(ids)}] after a context")
    first = max(0, end - max_len)
    if start - first < 1:
        raise ValueError(f"target of {end - start} tokens does not fit max_len={max_len}")
    return Example(list(ids[first:end]), start - first, end - first)


def pack(examples: Sequence[Example], rows: int | None = None) -> dict[str, np.ndarray]:
    """Right-padded arrays: tokens, valid, and `target` marking the positions whose next-token
    predictions are targets (steered and scored). `rows` pads the batch with empty rows (no
    target) to that many, so every batch of a run has one shape."""
    rows = max(rows or 0, len(examples))
    width = -(-max(len(e.ids) for e in examples) // _BUCKET) * _BUCKET
    tokens = np.zeros((rows, width), np.int32)
    valid = np.zeros((rows, width), bool)
    target = np.zeros((rows, width), bool)
    for r, e in enumerate(examples):
        tokens[r, : len(e.ids)], valid[r, : len(e.ids)] = e.ids, True
        target[r, e.start - 1 : e.end - 1] = True
    return {"tokens": tokens, "valid": valid, "target": target}


def _batch_loss(model, vector, batch, layer: int, logit_scale: float) -> jax.Array:
    """Mean of the per-row losses over the rows that have a target (not the padding rows)."""
    real = batch["target"].any(axis=1).astype(jnp.float32)
    losses = row_losses(model, vector, batch, layer, logit_scale)
    return (losses * real).sum() / jnp.maximum(real.sum(), 1.0)


def row_losses(model, vector, batch, layer: int, logit_scale: float) -> jax.Array:
    """[B] mean cross-entropy of each row's target tokens with `vector` added after block
    `layer` at the target positions (logits scaled by `logit_scale`)."""
    target = batch["target"]
    steer = Steering(vector, target, layer)
    logits = forward(model, batch["tokens"], batch["valid"], steer=steer)
    logp = jax.nn.log_softmax(logit_scale * logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    weight = target[:, :-1].astype(jnp.float32)
    return (nll * weight).sum(axis=1) / jnp.maximum(weight.sum(axis=1), 1.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "logit_scale"))
def _row_losses(graphdef, params, vector, batch, layer: int, logit_scale: float):
    return row_losses(nnx.merge(graphdef, params), vector, batch, layer, logit_scale)


def perplexities(model, examples: Sequence[Example], batch_size: int = 16) -> np.ndarray:
    """Perplexity of each example's target tokens under the unsteered model."""
    graphdef, params = nnx.split(model)
    zero = jnp.zeros(model.cfg.hidden_size, jnp.float32)
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        losses = _row_losses(graphdef, params, zero, pack(chunk, batch_size), 0, 1.0)
        out.append(np.asarray(losses)[: len(chunk)])
    return np.exp(np.concatenate(out)) if out else np.zeros(0)


def hardest(model, examples: Sequence[Example], count: int, batch_size: int = 16):
    """The `count` examples of highest perplexity under the unsteered model (all if fewer)."""
    if len(examples) <= count:
        return list(examples)
    order = np.argsort(-perplexities(model, examples, batch_size), kind="stable")
    return [examples[i] for i in sorted(order[:count])]


_ADAM = optax.inject_hyperparams(optax.adam)(learning_rate=0.0)  # the rate is set every step


@functools.lru_cache(maxsize=16)
def _step(graphdef, layer: int, logit_scale: float):
    """A jitted Adam update of the vector at a given learning rate, shared by every vector
    trained on one model (the model's parameters are an input, never trained)."""

    def loss(vector, params, fixed, batch):
        model = nnx.merge(graphdef, params)
        return _batch_loss(model, vector + fixed, batch, layer, logit_scale)

    @jax.jit
    def step(vector, opt_state, lr, params, fixed, batch):
        value, grad = jax.value_and_grad(loss)(vector, params, fixed, batch)
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = _ADAM.update(grad, opt_state, vector)
        return optax.apply_updates(vector, updates), opt_state, value

    return step


def cosine_lr(lr: float, step: int, total: int) -> float:
    """Cosine decay from lr to 0 over `total` updates."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train_vector(
    model,
    examples: Sequence[Example],
    layer: int,
    config: VectorTraining = VectorTraining(),
    *,
    fixed=None,
) -> tuple[np.ndarray, dict]:
    """Optimises one vector added after block `layer` (with the frozen `fixed` vector, e.g. the
    bias, added alongside) on `examples`; returns (vector [E], history)."""
    if not examples:
        raise ValueError("no examples to train a steering vector on")
    graphdef, params = nnx.split(model)
    e = model.cfg.hidden_size
    fixed = jnp.zeros(e, jnp.float32) if fixed is None else jnp.asarray(fixed, jnp.float32)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(examples))
    n_val = round(len(examples) * config.val_fraction)
    n_val = n_val if len(examples) - n_val >= 1 and n_val >= 1 else 0
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.max_epochs * batches_per_epoch
    step = _step(graphdef, layer, config.logit_scale)
    vector = jnp.zeros(e, jnp.float32)
    opt_state = _ADAM.init(vector)
    evaluate = lambda v, rows: _mean_loss(graphdef, params, v + fixed, rows, layer, config)
    history = {"train_loss": [], "val_loss": []}
    stopping = EarlyStopping(config.patience, best=vector)
    for epoch in range(config.max_epochs):
        shuffled = rng.permutation(len(train))
        losses = []
        for b in range(batches_per_epoch):
            rows = [train[i] for i in shuffled[b * config.batch_size : (b + 1) * config.batch_size]]
            lr = cosine_lr(config.lr, epoch * batches_per_epoch + b, total)
            batch = pack(rows, config.batch_size)
            vector, opt_state, value = step(vector, opt_state, lr, params, fixed, batch)
            losses.append(float(value))
        history["train_loss"].append(float(np.mean(losses)))
        monitored = evaluate(vector, val) if val else history["train_loss"][-1]
        if val:
            history["val_loss"].append(monitored)
        if stopping.update(epoch, monitored, vector):
            break
    best = stopping.best
    history.update(
        best_epoch=stopping.best_epoch,
        best_loss=stopping.best_loss,
        epochs=len(history["train_loss"]),
        n_train=len(train),
        n_val=len(val),
        initial_loss=evaluate(jnp.zeros(e, jnp.float32), val or train),  # fixed vector only
        norm=float(jnp.linalg.norm(best)),
    )
    return np.asarray(best), history


def _mean_loss(graphdef, params, vector, rows, layer, config) -> float:
    """Mean per-row loss over `rows` with `vector` (the total steering) added."""
    losses = []
    for i in range(0, len(rows), config.batch_size):
        chunk = rows[i : i + config.batch_size]
        batch = pack(chunk, config.batch_size)
        values = _row_losses(graphdef, params, vector, batch, layer, config.logit_scale)
        losses.append(np.asarray(values)[: len(chunk)])
    return float(np.concatenate(losses).mean())


def mean_difference(vectors: np.ndarray, clusters: np.ndarray, n_latents: int) -> np.ndarray:
    """[n, E]: mean of each cluster's sentence vectors minus the mean of all (zero if empty)."""
    vectors = np.asarray(vectors, np.float32)
    overall = vectors.mean(axis=0)
    out = np.zeros((n_latents, vectors.shape[1]), np.float32)
    for k in range(n_latents):
        members = vectors[clusters == k]
        if len(members):
            out[k] = members.mean(axis=0) - overall
    return out
