"""Supervised warm-up: next-token cross-entropy on the response tokens of packed rows.

    records --(sft_data: chat template, control token, EOS, truncate, pack)--> batches
      --(the step: forward over packed rows -> token-mean cross-entropy, logits a chunk of
         positions at a time (jaxthink.runs.logprobs) -> AdamW)--> params
      --> orbax checkpoints, metrics.jsonl, run_dir/hf

`make_sft_step(graphdef, tx)` is a pure function of (params, opt_state, batch): the run jits it
with donated parameters; on a mesh (`cfg.mesh`) with explicit in/out shardings too, the batch
assembled from every process's own rows of it (jaxthink.distributed).
"""

from __future__ import annotations

import functools
import time
from contextlib import closing

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from jaxthink import distributed
from jaxthink.data.records import read_records
from jaxthink.distributed import batch_spec
from jaxthink.models import forward
from jaxthink.runs import run as runlib
from jaxthink.runs.config import OptimConfig
from jaxthink.runs.logprobs import token_logprobs
from jaxthink.runs.logs import MetricsLog
from jaxthink.runs.mesh import Layout, run_mesh
from jaxthink.runs.model import build_model
from jaxthink.runs.optim import apply_gradients, learning_rate, make_optimizer
from jaxthink.sft.config import SFTConfig
from jaxthink.sft.data import sft_batches

CONSOLE_KEYS = ("loss", "accuracy", "grad_norm", "lr", "tokens_per_s")


def sft_loss(model, batch: dict, remat: bool = False) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over the batch's loss tokens (each predicted from its predecessor).
    `remat`: recompute each block in the backward pass."""
    hidden = forward(
        model,
        batch["tokens"],
        segment_ids=batch["segment_ids"],
        positions=batch["positions"],
        return_hidden=True,
        remat=remat,
    )
    token_logp, _, top = token_logprobs(model, hidden[:, :-1], batch["tokens"][:, 1:])
    seg = batch["segment_ids"]
    weight = (batch["loss"][:, 1:] > 0) & (seg[:, 1:] == seg[:, :-1])
    weight = weight.astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0)
    correct = top * weight
    return -(token_logp * weight).sum() / count, {
        "loss_tokens": weight.sum(),
        "accuracy": correct.sum() / count,
    }


def make_sft_step(graphdef, tx, remat: bool = False):
    """step(params, opt_state, batch) -> (params, opt_state, metrics); pure, jit it."""

    def step(params, opt_state, batch):
        loss_fn = lambda p: sft_loss(nnx.merge(graphdef, p), batch, remat)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params, opt_state, stats = apply_gradients(tx, params, opt_state, grads, loss)
        return params, opt_state, {"loss": loss, **aux, **stats}

    return step


@functools.lru_cache(maxsize=8)
def compiled_sft_step(
    graphdef, optim: OptimConfig, total: int, layout: Layout | None = None, remat: bool = False
):
    """(optimizer, jitted step with donated params and optimizer state), cached so that runs of
    one model shape and optimizer in a process share the compiled program. With a `layout` the
    step has explicit shardings: state as the layout says, batch rows over data x fsdp."""
    tx = make_optimizer(optim, total)
    step = make_sft_step(graphdef, tx, remat)
    if layout is None:
        return tx, jax.jit(step, donate_argnums=(0, 1))
    state = (layout.params(), layout.opt_state(tx))
    batch = NamedSharding(layout.mesh, batch_spec(2))
    return tx, jax.jit(
        step,
        in_shardings=(*state, batch),
        out_shardings=(*state, layout.replicated),
        donate_argnums=(0, 1),
    )


def train_sft(cfg: SFTConfig, log=print) -> runlib.TrainState:
    """Runs (or resumes) SFT to `cfg.steps`; returns the final state. See the module doc."""
    log = runlib.start_run(cfg, log)
    mesh = run_mesh(cfg.mesh)
    run_dir, ckpt = runlib.prepare_run_dir(cfg)
    model, tokenizer, _ = build_model(cfg.model, run_dir, mesh)
    graphdef, params = nnx.split(model)
    layout = None if mesh is None else Layout.of(params, mesh)
    tx, step_fn = compiled_sft_step(graphdef, cfg.optim, cfg.steps, layout, cfg.remat)
    lr = learning_rate(cfg.optim, cfg.steps)
    batches = sft_batches(
        tokenizer,
        read_records(cfg.data),
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        seed=cfg.data.seed,
        which=cfg.responses,
        short_repeats=cfg.short_repeats,
        worked_share=cfg.worked_share,
        shard=distributed.data_shard(mesh, cfg.batch_size),
    )
    with closing(iter(batches)) as data_iter:
        state = runlib.start_state(cfg, ckpt, params, tx, data_iter, log, layout)
        metrics_log = MetricsLog(
            run_dir / "metrics.jsonl", resume_step=state.step, enabled=distributed.is_main()
        )

        def one_step(state: runlib.TrainState):
            t0 = time.perf_counter()
            batch = next(data_iter)  # this process's rows of the global batch
            t_data = time.perf_counter() - t0
            rows = batch if mesh is None else distributed.global_batch(mesh, batch, cfg.batch_size)
            params, opt_state, metrics = step_fn(state.params, state.opt_state, rows)
            metrics = distributed.to_host(metrics)
            runlib.check_finite(metrics, state.step + 1, ckpt)
            state = runlib.TrainState(state.step + 1, params, opt_state, state.rng)
            seconds = time.perf_counter() - t0
            return state, {
                "step": state.step,
                **{k: float(v) for k, v in metrics.items() if k != "finite"},
                "lr": float(lr(state.step - 1)),
                "padding": float((batch["segment_ids"] == 0).mean()),
                "seconds_data": t_data,
                "seconds_step": seconds,
                "tokens_per_s": cfg.batch_size * cfg.seq_len / seconds,
            }

        state = runlib.train_steps(
            cfg, ckpt, state, data_iter, one_step, metrics_log, log, CONSOLE_KEYS
        )
        runlib.finish(cfg, ckpt, state, data_iter, graphdef, tokenizer, log)
    return state
