"""Training checkpoints with orbax's `CheckpointManager`, and the final Hugging Face export.

A checkpoint at step s holds everything needed to continue exactly as if never stopped:
    state: {"params", "opt_state", "rng"} (one pytree, saved with StandardSave; on a mesh each
           process writes the shards its devices hold, and a restore places every array on the
           sharding of the `like` tree it is given - any mesh, any number of processes)
    data_per_process: each process's grain iterator state after the batch of step s, one JSON
           file per process (`process_{i}-of-{n}.json`, grain's own checkpoint handler)
Checkpoints from before per-process data state keep theirs in `data` (one JSON), still read.
Saves are asynchronous and atomic: a run killed mid-save leaves a temporary directory that
orbax ignores, so the latest *finished* checkpoint is what `restore` finds. The directory may
be local or gs:// (etils.epath; gs:// needs gcsfs).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jaxthink.distributed import is_main, to_host
from jaxthink.models import export_hf

DATA = "data_per_process"


def is_remote(path) -> bool:
    """A gs:// (or other URI) path rather than a local one."""
    return "://" in str(path)


def run_path(path) -> epath.Path:
    """`path` as an epath.Path, local ones made absolute."""
    path = epath.Path(path)
    return path if is_remote(path) else epath.Path(Path(path).absolute())


class _DataState:
    """One iterator state in the shape grain's checkpoint handler reads and writes."""

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, raw: bytes) -> None:
        self.state = json.loads(raw)

    def start_prefetch(self) -> None:
        pass


class Checkpointer:
    """Saves every `save_every` steps (and when forced), keeping the newest `keep`."""

    def __init__(self, directory: str | Path, save_every: int, keep: int = 3):
        self.directory = run_path(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data_state: dict, *, force: bool = False) -> bool:
        """Saves at multiples of `save_every` (any step with `force`); True if it saved."""
        if not force and step % self.save_every:
            return False
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            **{DATA: grain.checkpoint.CheckpointSave(_DataState(data_state))},
        )
        return self.manager.save(step, args=args, force=True)

    def restore(self, step: int, like: dict) -> tuple[dict, dict | None]:
        """(state, data state) of `step`. `like` gives the state's structure, shapes, dtypes and
        shardings. The data state is None when the checkpoint was written by a different
        number of processes (their data positions do not carry over)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = {"state": ocp.args.StandardRestore(abstract)}
        step_dir = self.directory / str(step)
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if (step_dir / DATA / mine).exists():
            args[DATA] = grain.checkpoint.CheckpointRestore(_DataState())
        elif (step_dir / "data").exists() and jax.process_count() == 1:
            args["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        if DATA in args:
            return restored.state, restored[DATA].state
        return restored.state, restored.data if "data" in args else None

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def export_model(graphdef, params, tokenizer, directory) -> epath.Path | None:
    """The model as a Hugging Face directory (config.json, safetensors, tokenizer files) that
    `jaxthink.load` and `python -m infer --model` read.

    Every process takes part (parameters spread over processes are gathered to host, one at a
    time); the main process writes the directory - through a local temporary one when it is
    remote - and returns it, the others return None."""
    host = to_host(params)
    if not is_main():
        return None
    directory = run_path(directory)
    model = nnx.merge(graphdef, host)
    if not is_remote(directory):
        export_hf(model, directory, tokenizer=tokenizer)
        return directory
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp, tokenizer=tokenizer)
        directory.mkdir(parents=True, exist_ok=True)
        for file in Path(tmp).iterdir():
            with file.open("rb") as src, (directory / file.name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return directory
