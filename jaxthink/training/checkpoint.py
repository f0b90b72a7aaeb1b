"""Training checkpoints with orbax's `CheckpointManager`, and the final Hugging Face export.

A checkpoint at step s holds everything needed to continue exactly as if never stopped:
    state: {"params", "opt_state", "rng"} (one pytree, saved with StandardSave)
    data:  the grain iterator's state after the batch of step s (JSON)
Saves are asynchronous and atomic: a run killed mid-save leaves a temporary directory that
orbax ignores, so the latest *finished* checkpoint is what `restore` finds.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxthink.models import export_hf


class Checkpointer:
    """Saves every `save_every` steps (and when forced), keeping the newest `keep`."""

    def __init__(self, directory: str | Path, save_every: int, keep: int = 3):
        self.directory = Path(directory).absolute()
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
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        return self.manager.save(step, args=args, force=True)

    def restore(self, step: int, like: dict) -> tuple[dict, dict]:
        """(state, data state) of `step`; `like` gives the state's structure, shapes and dtypes."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        )
        restored = self.manager.restore(step, args=args)
        return restored.state, restored.data

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def export_model(graphdef, params, tokenizer, directory: str | Path) -> Path:
    """The model as a Hugging Face directory (config.json, safetensors, tokenizer files) that
    `jaxthink.load` and `python -m infer --model` read."""
    return export_hf(nnx.merge(graphdef, params), directory, tokenizer=tokenizer)
