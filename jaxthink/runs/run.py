"""What every training run shares: its directory, resuming, saving, and stopping on NaN.

`start_run` joins the multi-host run the config asks for (before any device is used) and
gives the run's logger (silent off the main process). `prepare_run_dir` prepares `run_dir`
(local or gs://; the resolved config is written to `run_dir/config.yaml`, a fingerprint of the
start checkpoint's files to `run_dir/start.json`) and refuses to continue a run whose settings or
start checkpoint changed, unless `on_change` says what to do; `start_state` restores the latest
checkpoint when `resume` allows it. `TrainState` is the bundle of what a
checkpoint holds; on a mesh it is created and restored directly on its shardings (a `Layout`).
`check_finite` turns a non-finite step into `TrainingStopped` with a message that names the
step, the numbers and the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import yaml
from tqdm import tqdm

from jaxthink import distributed
from jaxthink.runs.checkpoints import Checkpointer, export_model, run_path
from jaxthink.runs.config_file import to_dict
from jaxthink.runs.logs import console_line


class TrainingStopped(RuntimeError):
    """The run stopped before its last step (a non-finite loss or update)."""


class RunChanged(ValueError):
    """A rerun into a run directory whose settings or start checkpoint differ from its own."""


class Interrupted(RuntimeError):
    """Ctrl-C during a run; the message says what was kept and how to resume."""


# Settings a resumed run may change: where and how often it saves and logs, and how it is laid
# out over devices. Every other key changes what the run computes (the schedule over `steps`
# included), so a change is refused unless `on_change` says otherwise.
RESUMABLE_CHANGES = {
    "run_dir",
    "resume",
    "on_change",
    "save_every",
    "keep_checkpoints",
    "log_every",
    "export",
    "mesh",
    "distributed",
    "remat",
}


@dataclasses.dataclass
class TrainState:
    """The optimizer step count, parameters (an nnx.State), optimizer state and PRNG key data."""

    step: int
    params: object
    opt_state: object
    rng: jax.Array  # uint32 key data (jax.random.key_data), so it saves like any array

    def tree(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state, "rng": self.rng}


def commit(tree):
    """Every array placed (committed) on its current sharding, as restored checkpoints are.

    jit compiles separately for committed and uncommitted inputs; committing fresh state too
    lets a fresh and a resumed run in one process share their compiled programs.
    """
    return jax.tree.map(lambda x: jax.device_put(x, x.sharding), tree)


def start_run(cfg, log=print):
    """Joins the multi-host run of `cfg.distributed`, if any; returns the run's logger: `log`
    on the main process, silent on the others."""
    distributed.join(cfg.distributed)
    return distributed.main_only(log)


def prepare_run_dir(cfg):
    """`claim_run_dir` for a run that saves orbax checkpoints in run_dir/checkpoints. Returns
    (run_dir as an etils.epath.Path, checkpointer)."""
    run_dir = run_path(cfg.run_dir)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.save_every, cfg.keep_checkpoints)
    latest = ckpt.latest_step()
    held = None if latest is None else f"checkpoints (latest step {latest})"
    if claim_run_dir(cfg, held, ["checkpoints", "metrics.jsonl"]):
        ckpt = Checkpointer(run_dir / "checkpoints", cfg.save_every, cfg.keep_checkpoints)
    return run_dir, ckpt


def claim_run_dir(cfg, held: str | None, outputs: list[str]) -> bool:
    """Every run's start in its directory, `cfg.run_dir`. `held` says what an earlier run left
    there (None: nothing), `outputs` are its files and folders. Refuses to continue it when
    `cfg.resume` is off, and when its settings or start checkpoint changed unless
    `cfg.on_change` is "resume" (continue with the new settings) or "restart" (its outputs
    removed); then records the config (config.yaml) and the start checkpoint's fingerprint
    (start.json). Returns whether the run starts over."""
    run_dir = run_path(cfg.run_dir)
    on_change = cfg.on_change
    start = start_fingerprint(cfg)
    restart = False
    if held is not None and not cfg.resume:
        raise FileExistsError(
            f"{run_dir} already holds {held}; "
            "pass resume=true to continue that run, or choose another run_dir"
        )
    if held is not None and (changes := changed_settings(run_dir, cfg, start)):
        if on_change == "refuse":
            raise RunChanged(
                f"{run_dir} holds a run ({held}) started with other settings: "
                + "; ".join(changes)
                + ". Rerun with its settings (its config.yaml), choose another run_dir, or pass "
                "on_change=resume (continue with these settings) or on_change=restart (start "
                "over, removing what it wrote)"
            )
        restart = on_change == "restart"
    if distributed.is_main():
        for name in outputs if restart else ():
            path = run_dir / name
            if path.is_dir():
                path.rmtree()
            elif path.exists():
                path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        (run_dir / "start.json").write_text(json.dumps(start, indent=1) + "\n")
    return restart


def start_checkpoint(cfg) -> str:
    """The directory of the checkpoint a run starts from ("" for a fresh model)."""
    model = getattr(cfg, "model", "")
    return getattr(model, "checkpoint", model) or ""


def start_fingerprint(cfg) -> dict:
    """{"checkpoint": its directory, "sha256": of its files' names and bytes} ({} for none)."""
    path = start_checkpoint(cfg)
    if not path or not Path(path).is_dir():
        return {}
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return {"checkpoint": str(Path(path).absolute()), "sha256": digest.hexdigest()}


def changed_settings(run_dir, cfg, start: dict) -> list[str]:
    """What differs between the run in `run_dir` (its config.yaml and start.json) and `cfg`
    with start checkpoint `start`, as "key: old -> new" lines (RESUMABLE_CHANGES left out)."""
    changes = []
    saved = run_dir / "config.yaml"
    if saved.exists():
        old, new = _flat(yaml.safe_load(saved.read_text())), _flat(to_dict(cfg))
        for key in sorted(old.keys() | new.keys()):
            if key.split(".")[0] not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
                changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    recorded = run_dir / "start.json"
    if recorded.exists() and start:
        before = json.loads(recorded.read_text())
        if before.get("sha256") not in (None, start["sha256"]):
            changes.append(
                f"the start checkpoint {start['checkpoint']} has changed since the run began "
                "(its files differ)"
            )
    return changes


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def start_state(cfg, ckpt: Checkpointer, params, tx, data_iter, log=print, layout=None):
    """Step 0 from `params` and `cfg.seed`, or with `cfg.resume` the latest checkpoint (the
    data iterator then moves to where that checkpoint left it). With a `layout` (a mesh) the
    optimizer state is created on its shardings and the PRNG key replicated."""
    rng = jax.random.key_data(jax.random.key(cfg.seed))
    if layout is None:
        state = TrainState(0, *commit((params, tx.init(params), rng)))
    else:
        opt_state = layout.init_opt_state(tx, params)
        state = TrainState(0, params, opt_state, jax.device_put(rng, layout.replicated))
    return restore_latest(ckpt, state, data_iter, log) if cfg.resume else state


def restore_latest(ckpt: Checkpointer, state: TrainState, data_iter, log=print) -> TrainState:
    """`state` replaced by the latest checkpoint (and the data iterator moved to it), if any."""
    step = ckpt.latest_step()
    if step is None:
        return state
    tree, data_state = ckpt.restore(step, state.tree())
    log(f"resumed from {ckpt.directory / str(step)}")
    if data_state is None:
        log(
            "the checkpoint was written by a different number of processes: the data stream "
            "starts again from its beginning"
        )
    else:
        data_iter.set_state(data_state)
    return TrainState(step, tree["params"], tree["opt_state"], tree["rng"])


def save(ckpt: Checkpointer, state: TrainState, data_iter, *, force: bool = False) -> bool:
    return ckpt.save(state.step, state.tree(), data_iter.get_state(), force=force)


def train_steps(
    cfg, ckpt, state: TrainState, data_iter, one_step, metrics_log, log, keys, on_save=None
):
    """The loop every step-wise run shares: `one_step(state)` -> (next state, metrics record)
    until `cfg.steps`, then save (every `save_every`), record (with `seconds_checkpoint`), call
    `on_save()` after a step that saved (e.g. a plot rewritten), and log every `log_every`. On a terminal a progress bar shows the steps,
    their ETA and the record's `keys`.

    Ctrl-C saves the last finished step (unless its arrays were already handed to the next
    step, which donates them: then the last checkpoint stands) and raises `Interrupted`, whose
    message says where the run resumes."""
    shown = distributed.is_main() and sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=state.step, unit="step", disable=not shown)
    try:
        while state.step < cfg.steps:
            state, record = one_step(state)
            t0 = time.perf_counter()
            saved = save(ckpt, state, data_iter)
            record["seconds_checkpoint"] = time.perf_counter() - t0
            metrics_log.write(record)
            if saved and on_save is not None:
                on_save()
            bar.set_postfix({k: f"{record[k]:.3g}" for k in keys if k in record}, refresh=False)
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                log(console_line(record, keys))
    except KeyboardInterrupt:
        alive = not any(x.is_deleted() for x in jax.tree.leaves(state.tree()))
        if alive and state.step > (ckpt.latest_step() or 0):
            save(ckpt, state, data_iter, force=True)
        ckpt.wait()
        kept = ckpt.latest_step()
        where = f"step {kept} is saved" if kept is not None else "no step was saved yet"
        raise Interrupted(
            f"interrupted at step {state.step}; {where}: rerun the same command to resume"
        ) from None
    finally:
        bar.close()
    return state


def check_finite(metrics: dict, step: int, ckpt: Checkpointer) -> None:
    """Raises TrainingStopped if the step was not finite; the last good checkpoint stays as is."""
    if bool(metrics["finite"]):
        return
    ckpt.wait()
    last = ckpt.latest_step()
    where = f"{ckpt.directory / str(last)} (step {last})" if last is not None else "none saved"
    numbers = ", ".join(
        f"{k}={float(metrics[k]):.4g}" for k in ("loss", "grad_norm", "update_norm") if k in metrics
    )
    raise TrainingStopped(
        f"step {step}: non-finite loss or update ({numbers}); the update was not applied and "
        f"training stopped. Last good checkpoint: {where}. Lower optim.lr or check the data, "
        "then run again with resume=true."
    )


def finish(cfg, ckpt: Checkpointer, state: TrainState, data_iter, graphdef, tokenizer, log=print):
    """The final checkpoint (waited for) and, with `cfg.export`, the Hugging Face export."""
    save(ckpt, state, data_iter, force=True)
    ckpt.wait()
    if cfg.export:
        out = export_model(graphdef, state.params, tokenizer, run_path(cfg.run_dir) / "hf")
        if out is not None:
            log(f"exported the final model to {out}")
