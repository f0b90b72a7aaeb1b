"""On-policy reinforcement learning of when to think: DeGRPO (and vanilla GRPO beside it).

One step:
    prompts --rollout (G samples each, compiled sampler)--> graded, rewarded responses
      --group_advantages--> A_i (and, with response_baseline "mode", the response tokens' own)
      --response_logprobs under the rollout params (old) and the frozen start (ref)-->
      --shuffle rows, split into `mini_batches`; each: accumulate policy-loss gradients over
        micro-batches, one AdamW update--> params

Old log-probs are computed only for the rows of the second and later mini-batches: the first
update runs on the rollout's own parameters, so its old log-probs are the current ones (held
constant, as `micro_batch_terms` does without "old_logp"); with one update per step and no KL
there is no log-prob pass at all. The update fuses the head's forward and backward passes over
the loss's per-token shares (`fused_micro_batch_loss`): the same loss and gradient as autodiff
of `micro_batch_terms`, in three head products per chunk of logits instead of four.

`make_rl_update(graphdef, tx, loss_cfg, temperature)` is a pure function of
(params, opt_state, batch) whose batch leaves carry a leading micro-batch axis [M, m, ...].
The loss of a mini-batch is assembled from (sum, denominator) terms (jaxthink.rl.losses): the
denominators come from the whole mini-batch's mask first, so the micro-batch losses and
gradients add up to exactly the full mini-batch's.

On a mesh (`cfg.mesh`) the update and the log-probs are jitted with explicit shardings
(jaxthink.runs.mesh.Layout), micro-batch rows over data x fsdp. The rollout samples with the
parameters resharded by the sampling rules (no FSDP) as one program over the whole mesh, so every
process holds all of a step's samples on host; each then feeds its own rows to the log-probs and
the update (jaxthink.distributed.local_rows / global_batch).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from contextlib import closing

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxthink import distributed
from jaxthink.data.records import prompt_batches, read_records
from jaxthink.distributed import batch_spec
from jaxthink.rl import (
    combine_terms,
    group_advantages,
    loss_denominators,
    loss_terms,
    merge_terms,
    mode_advantages,
    summarize_terms,
    with_denominators,
)
from jaxthink.rl.config import RLConfig
from jaxthink.rl.losses import LossConfig, token_coefficients, token_loss
from jaxthink.rl.rollout import Rollout, collect, rollout_metrics
from jaxthink.runs import run as runlib
from jaxthink.runs.config import OptimConfig
from jaxthink.runs.logprobs import (
    head_gradients,
    head_surrogate,
    response_hidden,
    response_logprobs,
)
from jaxthink.runs.logs import MetricsLog, plot_metric
from jaxthink.runs.mesh import Layout, run_mesh
from jaxthink.runs.model import build_model
from jaxthink.runs.optim import apply_gradients, make_optimizer
from jaxthink.sharding import SAMPLE_RULES

CONSOLE_KEYS = ("reward", "think_ratio", "accuracy_short", "accuracy_think", "kl_mean", "seconds")
SEQUENCE_KEYS = ("prompt_tokens", "prompt_valid", "response_tokens", "response_mask")


def micro_batch_terms(
    graphdef, params, micro: dict, cfg: LossConfig, temperature: float, remat: bool = False
):
    """`loss_terms` of one micro-batch, its log-probs and entropies recomputed from `params`.
    Without "old_logp" the rows are on-policy: the old log-probs are the current ones, held
    constant (the first update after a rollout)."""
    logp, entropy = response_logprobs(
        nnx.merge(graphdef, params),
        *(micro[k] for k in SEQUENCE_KEYS),
        temperature,
        remat=remat,
    )
    old = micro.get("old_logp")
    return loss_terms(
        logp,
        jax.lax.stop_gradient(logp) if old is None else old,
        micro["advantages"],
        micro["response_mask"],
        cfg,
        micro.get("ref_logp"),
        entropy,
    )


def fused_micro_batch_loss(
    graphdef, params, micro: dict, cfg: LossConfig, temperature: float, den, remat: bool = False
):
    """(loss, terms) of one micro-batch with the batch's denominators `den`: the same value and
    gradient as `combine_terms` of `micro_batch_terms`, the head's forward and backward passes
    fused (jaxthink.runs.logprobs.head_gradients over the loss's per-token shares)."""
    sg = jax.lax.stop_gradient
    model = nnx.merge(graphdef, params)
    hidden = response_hidden(model, *(micro[k] for k in SEQUENCE_KEYS), remat=remat)
    mask = micro["response_mask"]
    adv = micro["advantages"]
    data = {
        **token_coefficients(mask, cfg, den),
        "mask": mask,
        "advantages": jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, mask.shape),
        **{k: micro[k] for k in ("old_logp", "ref_logp") if k in micro},
    }

    def token_grads(logp, entropy, d):
        def shares(logp, entropy):
            old = d.get("old_logp", sg(logp))
            ref = d.get("ref_logp")
            return token_loss(logp, old, d["advantages"], d["mask"], d, cfg, ref, entropy).sum()

        return jax.grad(shares, argnums=(0, 1))(logp, entropy)

    frozen = nnx.merge(graphdef, sg(params))
    valid = mask > 0
    logp, entropy, d_hidden, d_head = head_gradients(
        frozen, sg(hidden), micro["response_tokens"], temperature, token_grads, data, None, valid
    )
    logp, entropy = jnp.where(valid, logp, 0.0), jnp.where(valid, entropy, 0.0)
    old = micro.get("old_logp", logp)
    terms = loss_terms(logp, old, adv, mask, cfg, micro.get("ref_logp"), entropy)
    loss = combine_terms(with_denominators(terms, den), cfg)
    return loss + head_surrogate(model, hidden, d_hidden, d_head), terms


def accumulate_gradients(
    graphdef,
    params,
    batch: dict,
    cfg: LossConfig,
    temperature: float,
    remat: bool = False,
    fused: bool = True,
):
    """(loss, grads, terms) of a mini-batch whose leaves are [M, m, ...], summed over the M
    micro-batches; equal to the loss and gradient of the M*m rows at once. `fused`: the head's
    passes fused (`fused_micro_batch_loss`); otherwise plain autodiff of `micro_batch_terms`."""
    mask = batch["response_mask"]
    den = loss_denominators(mask.reshape(-1, mask.shape[-1]), cfg)

    def loss_fn(p, micro):
        if fused:
            return fused_micro_batch_loss(graphdef, p, micro, cfg, temperature, den, remat)
        terms = micro_batch_terms(graphdef, p, micro, cfg, temperature, remat)
        return combine_terms(with_denominators(terms, den), cfg), terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    first = jax.tree.map(lambda x: x[0], batch)
    zero_terms = jax.tree.map(jnp.zeros_like, jax.eval_shape(loss_fn, params, first)[1])

    def body(carry, micro):
        grads, loss, terms = carry
        (micro_loss, micro_terms), micro_grads = grad_fn(params, micro)
        grads = jax.tree.map(jnp.add, grads, micro_grads)
        return (grads, loss + micro_loss, merge_terms(terms, micro_terms)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, terms), _ = jax.lax.scan(body, (zeros, jnp.float32(0.0), zero_terms), batch)
    return loss, grads, with_denominators(terms, den)


def make_rl_update(graphdef, tx, cfg: LossConfig, temperature: float, remat: bool = False):
    """update(params, opt_state, batch) -> (params, opt_state, metrics); pure, jit it."""

    def update(params, opt_state, batch):
        loss, grads, terms = accumulate_gradients(graphdef, params, batch, cfg, temperature, remat)
        params, opt_state, stats = apply_gradients(tx, params, opt_state, grads, loss)
        return params, opt_state, {**summarize_terms(terms, cfg), **stats}

    return update


def make_logprobs(graphdef, temperature: float):
    """logprobs(params, prompt_tokens, prompt_valid, response_tokens, response_mask) -> [B, R];
    jit it (the old and reference log-probs)."""

    def logprobs(params, *sequences):
        return response_logprobs(nnx.merge(graphdef, params), *sequences, temperature)[0]

    return logprobs


@dataclasses.dataclass
class RLSetup:
    """The fixed parts of an RL run: config, model structure, tokenizer, compiled functions."""

    cfg: RLConfig
    graphdef: object
    tokenizer: object
    ref_params: object  # the frozen reference (the starting parameters); None without KL
    update: object  # jitted make_rl_update
    logprobs: object  # jitted make_logprobs
    layout: Layout | None = None  # the training state's shardings on a mesh; None: one device

    @classmethod
    def create(
        cls, cfg: RLConfig, graphdef, tokenizer, start_params, layout: Layout | None = None
    ) -> tuple[RLSetup, object]:
        """(setup, optimizer); the reference is a copy of `start_params` (those get donated)."""
        if layout is not None:
            _check_micro_rows(cfg, layout)
        total = cfg.steps * cfg.mini_batches
        tx, update, logprobs = compiled_rl_functions(
            graphdef, cfg.optim, total, cfg.loss, cfg.rollout.temperature, layout, cfg.remat
        )
        ref = None
        if cfg.loss.kl_coef > 0:
            copy = lambda p: jax.tree.map(jnp.copy, p)
            if layout is None:
                ref = runlib.commit(copy(start_params))
            else:
                ref = jax.jit(copy, out_shardings=layout.params())(start_params)
        return cls(cfg, graphdef, tokenizer, ref, update, logprobs, layout), tx

    @property
    def mesh(self):
        return None if self.layout is None else self.layout.mesh


def _check_micro_rows(cfg: RLConfig, layout: Layout) -> None:
    devices = layout.mesh.shape["data"] * layout.mesh.shape["fsdp"]
    if cfg.micro_rows % devices:
        raise ValueError(
            f"a micro-batch of {cfg.micro_rows} rows does not split over the mesh's "
            f"data x fsdp = {devices} devices; set micro_batch_size to a multiple of {devices}"
        )


@functools.lru_cache(maxsize=8)
def compiled_rl_functions(
    graphdef,
    optim: OptimConfig,
    total: int,
    loss: LossConfig,
    temp: float,
    layout=None,
    remat: bool = False,
):
    """(optimizer, jitted update, jitted log-probs), cached so that runs of one model shape and
    settings in a process share the compiled programs. With a `layout` both have explicit
    shardings: state as the layout says, rows over data x fsdp (axis 1 of the update's
    [micro-batches, rows, ...] leaves, axis 0 of the log-probs' inputs)."""
    tx = make_optimizer(optim, total)
    update = make_rl_update(graphdef, tx, loss, temp, remat)
    logprobs = make_logprobs(graphdef, temp)
    if layout is None:
        return tx, jax.jit(update, donate_argnums=(0, 1)), jax.jit(logprobs)
    state = (layout.params(), layout.opt_state(tx))
    micro_rows = NamedSharding(layout.mesh, batch_spec(2, axis=1))
    rows = NamedSharding(layout.mesh, batch_spec(1))
    update = jax.jit(
        update,
        in_shardings=(*state, micro_rows),
        out_shardings=(*state, layout.replicated),
        donate_argnums=(0, 1),
    )
    logprobs = jax.jit(
        logprobs, in_shardings=(state[0], *[rows] * len(SEQUENCE_KEYS)), out_shardings=rows
    )
    return tx, update, logprobs


def sampling_params(setup: RLSetup, params):
    """The parameters the rollout samples with: on a mesh with FSDP, a copy resharded by the
    sampling rules (decoding moves activations, not weights); otherwise `params` themselves."""
    layout = setup.layout
    if layout is None or layout.mesh.shape["fsdp"] == 1:
        return params
    return resharding(layout.with_rules(SAMPLE_RULES))(params)


@functools.lru_cache(maxsize=8)
def resharding(layout: Layout):
    """A jitted copy of parameters onto `layout`'s shardings, one per layout (Layouts are
    hashable): a new jit of a new function would trace and compile again on every step."""
    return jax.jit(lambda params: params, out_shardings=layout.params())


def on_mesh(setup: RLSetup, arrays: dict, axis: int = 0):
    """Host arrays (whole on every process) as global arrays over the mesh, each process
    giving its own rows; unchanged without a mesh."""
    mesh = setup.mesh
    if mesh is None:
        return arrays
    rows = next(iter(arrays.values())).shape[axis]
    return distributed.global_batch(mesh, distributed.local_rows(mesh, arrays, axis), rows, axis)


def batch_logprobs(setup: RLSetup, params, arrays: dict, chunk: int) -> np.ndarray:
    """Log-probs [B, R] of all rows, `chunk` rows per call."""
    rows = arrays["response_tokens"].shape[0]
    parts = []
    for i in range(0, rows, chunk):
        part = on_mesh(setup, {k: arrays[k][i : i + chunk] for k in SEQUENCE_KEYS})
        parts.append(setup.logprobs(params, *(part[k] for k in SEQUENCE_KEYS)))
    return np.concatenate(distributed.to_host(parts), axis=0)


def training_arrays(rollout: Rollout, cfg: RLConfig) -> dict[str, np.ndarray]:
    """The update's per-row inputs. Advantages are [B], or [B, R] per token when the response
    tokens have their own baseline: the group's at t = 0 (the control token), the mode's after."""
    group_size = cfg.rollout.group_size
    advantages = np.asarray(group_advantages(rollout.rewards, group_size, cfg.normalize_std))
    if cfg.response_baseline == "mode":
        within = mode_advantages(rollout.rewards, rollout.think, group_size, cfg.normalize_std)
        per_token = np.repeat(np.asarray(within)[:, None], rollout.response_tokens.shape[1], 1)
        per_token[:, 0] = advantages
        advantages = per_token
    return {
        "prompt_tokens": rollout.prompt_tokens,
        "prompt_valid": rollout.prompt_valid,
        "response_tokens": rollout.response_tokens,
        "response_mask": rollout.response_mask,
        "advantages": advantages,
    }


def mini_batches(arrays: dict, order: np.ndarray, count: int, micro_rows: int) -> list[dict]:
    """Rows in `order`, cut into `count` mini-batches with leaves [M, micro_rows, ...]."""
    size = len(order) // count
    out = []
    for k in range(count):
        rows = order[k * size : (k + 1) * size]
        out.append({n: a[rows].reshape(-1, micro_rows, *a.shape[1:]) for n, a in arrays.items()})
    return out


def _mean_metrics(updates: list[dict]) -> dict[str, float]:
    keys = [k for k in updates[0] if k != "finite"]
    out = {k: float(np.mean([u[k] for u in updates])) for k in keys}
    out["finite"] = all(bool(u["finite"]) for u in updates)
    return out


def rl_step(setup: RLSetup, params, opt_state, records: list[dict], key: jax.Array):
    """One on-policy round; (params, opt_state, metrics). Stops updating at a non-finite one."""
    cfg = setup.cfg
    rollout_key, order_key = jax.random.split(key)
    seed = int(jax.random.randint(rollout_key, (), 0, 2**31 - 1))
    t0 = time.perf_counter()
    model = nnx.merge(setup.graphdef, sampling_params(setup, params))
    rollout = collect(model, setup.tokenizer, records, cfg.rollout, cfg.reward, seed)
    del model  # the sampling copy of the parameters is not needed past the rollout
    t1 = time.perf_counter()
    arrays = training_arrays(rollout, cfg)
    order = np.asarray(jax.random.permutation(order_key, rollout.rows))
    later = order[rollout.rows // cfg.mini_batches :]  # rows updated after the first update
    if later.size:  # their old log-probs: the first update moves the parameters
        rows = {k: arrays[k][later] for k in SEQUENCE_KEYS}
        arrays["old_logp"] = np.zeros(arrays["response_mask"].shape, np.float32)
        arrays["old_logp"][later] = batch_logprobs(setup, params, rows, cfg.micro_rows)
    if setup.ref_params is not None:
        arrays["ref_logp"] = batch_logprobs(setup, setup.ref_params, arrays, cfg.micro_rows)
    t2 = time.perf_counter()
    updates = []
    batches = mini_batches(arrays, order, cfg.mini_batches, cfg.micro_rows)
    batches[0].pop("old_logp", None)  # on-policy: its old log-probs are the current ones
    for mini in batches:
        params, opt_state, metrics = setup.update(params, opt_state, on_mesh(setup, mini, axis=1))
        updates.append(distributed.to_host(metrics))
        if not updates[-1]["finite"]:
            break
    t3 = time.perf_counter()
    generated = int(rollout.lengths.sum())
    metrics = {
        **rollout_metrics(rollout),
        **_mean_metrics(updates),
        "seconds_rollout": t1 - t0,
        "seconds_logprobs": t2 - t1,
        "seconds_update": t3 - t2,
        "seconds": t3 - t0,
        "generated_tokens": generated,
        "rollout_tokens_per_s": generated / max(t1 - t0, 1e-9),
        "tokens_per_s": (rollout.prompt_tokens.size + rollout.response_tokens.size) / (t3 - t0),
    }
    return params, opt_state, metrics


def train_rl(cfg: RLConfig, log=print) -> runlib.TrainState:
    """Runs (or resumes) RL to `cfg.steps`; returns the final state. See the module doc."""
    log = runlib.start_run(cfg, log)
    mesh = run_mesh(cfg.mesh)
    run_dir, ckpt = runlib.prepare_run_dir(cfg)
    model, tokenizer, _ = build_model(cfg.model, run_dir, mesh)
    graphdef, params = nnx.split(model)
    layout = None if mesh is None else Layout.of(params, mesh)
    setup, tx = RLSetup.create(cfg, graphdef, tokenizer, params, layout)
    prompts = prompt_batches(read_records(cfg.data), cfg.rollout.prompts_per_step, cfg.data.seed)
    with closing(iter(prompts)) as data_iter:
        state = runlib.start_state(cfg, ckpt, params, tx, data_iter, log, layout)
        metrics_log = MetricsLog(
            run_dir / "metrics.jsonl", resume_step=state.step, enabled=distributed.is_main()
        )

        def one_step(state: runlib.TrainState):
            key, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
            records = next(data_iter)
            params, opt_state, metrics = rl_step(
                setup, state.params, state.opt_state, records, step_key
            )
            runlib.check_finite(metrics, state.step + 1, ckpt)
            state = runlib.TrainState(state.step + 1, params, opt_state, jax.random.key_data(key))
            return state, {
                "step": state.step,
                **{k: v for k, v in metrics.items() if k != "finite"},
            }

        def plot():  # the think-ratio plot, current at every checkpoint
            if distributed.is_main():
                plot_metric(run_dir / "metrics.jsonl", run_dir / "think_ratio.png")

        state = runlib.train_steps(
            cfg, ckpt, state, data_iter, one_step, metrics_log, log, CONSOLE_KEYS, on_save=plot
        )
        runlib.finish(cfg, ckpt, state, data_iter, graphdef, tokenizer, log)
    plot()
    return state
