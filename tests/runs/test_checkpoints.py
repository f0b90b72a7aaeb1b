"""Training checkpoints: the per-process data state, checkpoints from before it, run paths."""

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxthink.runs.checkpoints import Checkpointer, is_remote, run_path

STATE = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "rng": jnp.zeros(2, jnp.uint32)}


def test_each_process_saves_its_own_data_state(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", save_every=1)
    assert ckpt.save(1, STATE, {"next_index": 5})
    ckpt.wait()
    files = [p.name for p in (tmp_path / "checkpoints" / "1" / "data_per_process").glob("*.json")]
    assert files == ["process_0-of-1.json"]
    state, data = ckpt.restore(1, STATE)
    np.testing.assert_array_equal(state["params"]["w"], STATE["params"]["w"])
    assert data == {"next_index": 5}


def test_a_checkpoint_with_one_json_data_state_still_restores(tmp_path):
    """Checkpoints written before data states were per process keep theirs in `data`."""
    manager = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True))
    old = ocp.args.Composite(
        state=ocp.args.StandardSave(STATE), data=ocp.args.JsonSave({"next_index": 7})
    )
    manager.save(3, args=old)
    manager.wait_until_finished()
    manager.close()
    state, data = Checkpointer(tmp_path, save_every=1).restore(3, STATE)
    np.testing.assert_array_equal(state["params"]["w"], STATE["params"]["w"])
    assert data == {"next_index": 7}


def test_gs_run_directories_stay_uris_and_local_ones_become_absolute():
    path = run_path("gs://bucket/runs/rl") / "checkpoints"
    assert str(path) == "gs://bucket/runs/rl/checkpoints" and is_remote(path)
    local = run_path("runs/rl")
    assert not is_remote(local) and local.is_absolute() and str(local).endswith("/runs/rl")
