"""The run directory: a rerun continues only the run it was (same settings, same start
checkpoint), unless asked otherwise."""

import io
import json
from types import SimpleNamespace

import jax.numpy as jnp
import pytest

from jaxthink.runs import run as runlib
from jaxthink.runs.config_file import load_config
from jaxthink.sft.config import SFTConfig


class Saved:
    """A checkpointer standing in for one that holds checkpoints up to step 3."""

    def __init__(self, directory, *_):
        self.directory = directory

    def latest_step(self):
        return 3 if self.directory.exists() else None

    def wait(self):
        pass


@pytest.fixture
def start(tmp_path, monkeypatch):
    """A start checkpoint directory and a run directory that holds a run begun from it."""
    monkeypatch.setattr(runlib, "Checkpointer", Saved)
    checkpoint = tmp_path / "sft" / "hf"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    run_dir = tmp_path / "rl"
    cfg = config(run_dir, checkpoint)
    runlib.prepare_run_dir(cfg)
    (run_dir / "checkpoints").mkdir()
    return checkpoint, run_dir


def config(run_dir, checkpoint, *overrides):
    data = ["data.levels=[1]", f"model.checkpoint={checkpoint}", f"run_dir={run_dir}"]
    return load_config(SFTConfig, None, [*data, *overrides])


def test_the_same_settings_resume(start):
    checkpoint, run_dir = start
    runlib.prepare_run_dir(config(run_dir, checkpoint, "log_every=1", "save_every=2"))
    saved = json.loads((run_dir / "start.json").read_text())
    assert saved["checkpoint"] == str(checkpoint) and len(saved["sha256"]) == 64


def test_changed_settings_are_refused_naming_them(start):
    checkpoint, run_dir = start
    with pytest.raises(runlib.RunChanged) as refused:
        runlib.prepare_run_dir(config(run_dir, checkpoint, "optim.lr=3e-4", "steps=800"))
    message = str(refused.value)
    assert "optim.lr: 1e-05 -> 0.0003" in message and "steps: 1000 -> 800" in message
    assert "on_change=resume" in message and "log_every" not in message


def test_a_start_checkpoint_retrained_in_place_is_refused(start):
    checkpoint, run_dir = start
    (checkpoint / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(runlib.RunChanged, match=f"the start checkpoint {checkpoint} has changed"):
        runlib.prepare_run_dir(config(run_dir, checkpoint))


def test_on_change_resume_continues_and_restart_starts_over(start):
    checkpoint, run_dir = start
    (checkpoint / "model.safetensors").write_bytes(b"other weights")
    runlib.prepare_run_dir(config(run_dir, checkpoint, "optim.lr=3e-4", "on_change=resume"))
    assert (run_dir / "checkpoints").exists()  # kept, and the new settings recorded
    assert "0.0003" in (run_dir / "config.yaml").read_text()
    runlib.prepare_run_dir(config(run_dir, checkpoint, "optim.lr=1e-3", "on_change=restart"))
    assert not (run_dir / "checkpoints").exists()


def test_on_change_values_are_checked():
    with pytest.raises(ValueError, match="on_change='always'; accepted: refuse, resume, restart"):
        load_config(SFTConfig, None, ["data.levels=[1]", "on_change=always"])


class Ticks:
    """A checkpointer that saves every second step, for the step loop alone."""

    def __init__(self):
        self.saved = []

    def save(self, step, tree, data_state, force=False):
        if force or step % 2 == 0:
            self.saved.append(step)
            return True
        return False

    def latest_step(self):
        return self.saved[-1] if self.saved else None

    def wait(self):
        pass


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_step_loop_shows_a_bar_on_a_terminal_and_calls_on_save(monkeypatch):
    monkeypatch.setattr("sys.stderr", err := Terminal())
    cfg = SimpleNamespace(steps=4, log_every=100)
    state = runlib.TrainState(0, jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    data = SimpleNamespace(get_state=dict)
    ckpt, saved, logged, records = Ticks(), [], [], []

    def one_step(s):
        return runlib.TrainState(s.step + 1, s.params + 1, s.opt_state, s.rng), {
            "step": s.step + 1,
            "loss": 1.0 / (s.step + 1),
        }

    log = SimpleNamespace(write=records.append)
    final = runlib.train_steps(
        cfg,
        ckpt,
        state,
        data,
        one_step,
        log,
        logged.append,
        ("loss",),
        on_save=lambda: saved.append(ckpt.latest_step()),
    )
    assert final.step == 4 and saved == [2, 4] and [r["step"] for r in records] == [1, 2, 3, 4]
    assert logged == ["step 4 | loss 0.25"]  # the last step is always logged
    assert "4/4" in err.getvalue() and "loss=0.25" in err.getvalue()
