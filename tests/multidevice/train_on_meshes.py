"""Run with 8 simulated CPU devices: one SFT step and one DeGRPO update on several meshes vs one
device, with explicit in/out shardings (the trainers' own compiled steps).

Prints one JSON object: per mesh, the largest differences from one device (parameters, Adam's
first moment, loss, gradient norm, log-probs) and the per-device shard shapes of a parameter and
of its optimizer moment; and the refusals of batches that do not split over a mesh.
Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python -m tests.multidevice.train_on_meshes DIR
"""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax

from jaxthink.distributed import global_batch, process_rows, to_host
from jaxthink.rl.loop import RLSetup, batch_logprobs, mini_batches, on_mesh
from jaxthink.runs.mesh import Layout
from jaxthink.sft.loop import compiled_sft_step
from jaxthink.sharding import MeshConfig, MeshError, make_mesh
from tests.multidevice.tiny_training import (
    OPTIM,
    RL,
    SFT_ROWS,
    max_diff,
    rl_arrays,
    sft_batch,
    tiny_model,
    with_old_and_ref,
)

MESHES = [(8, 1, 1), (2, 2, 2), (1, 1, 8), (1, 4, 2)]


def shard_shapes(x) -> list:
    return sorted({tuple(s.data.shape) for s in x.addressable_shards})


def run(graphdef, host_params, tokenizer, layout):
    """(sft params, sft mu, sft metrics, rl params, rl mu, rl metrics, log-probs, state) of one
    SFT step and one RL update from `host_params`, on `layout` (None: one device)."""
    place = (lambda p: layout.place(p)) if layout else (lambda p: jax.device_put(p))
    tx, sft_step = compiled_sft_step(graphdef, OPTIM, 10, layout)
    params = place(host_params)
    opt = layout.init_opt_state(tx, params) if layout else tx.init(params)
    batch = sft_batch(tokenizer)
    if layout:
        batch = global_batch(layout.mesh, batch, SFT_ROWS)
    sft_params, sft_opt, sft_metrics = sft_step(params, opt, batch)

    setup, rl_tx = RLSetup.create(RL, graphdef, tokenizer, place(host_params), layout)
    params = place(host_params)
    arrays = rl_arrays(tokenizer)
    logp = batch_logprobs(setup, params, arrays, RL.micro_rows)
    return (sft_params, sft_opt, sft_metrics), (setup, rl_tx, params, arrays, logp)


def rl_update(setup, tx, params, arrays, old_logp):
    layout = setup.layout
    opt = layout.init_opt_state(tx, params) if layout else tx.init(params)
    order = np.arange(arrays["advantages"].shape[0])
    mini = mini_batches(with_old_and_ref(arrays, old_logp), order, 1, RL.micro_rows)[0]
    return setup.update(params, opt, on_mesh(setup, mini, axis=1))


def summary(result) -> tuple:
    params, opt, metrics = result
    return to_host(params), to_host(optax.tree.get(opt, "mu")), to_host(metrics)


def compare(a, b) -> dict:
    return {
        "params": max_diff(a[0], b[0]),
        "mu": max_diff(a[1], b[1]),
        "loss": abs(float(a[2]["loss"]) - float(b[2]["loss"])),
        "grad_norm": abs(float(a[2]["grad_norm"]) - float(b[2]["grad_norm"])),
    }


def main(directory: str) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    graphdef, params, tokenizer = tiny_model(Path(directory))
    host_params = to_host(params)
    sft_ref, (setup, tx, p, arrays, logp_ref) = run(graphdef, host_params, tokenizer, None)
    sft_ref = summary(sft_ref)
    rl_ref = summary(rl_update(setup, tx, p, arrays, logp_ref))
    moved = {"sft": max_diff(sft_ref[0], host_params), "rl": max_diff(rl_ref[0], host_params)}
    out = {"moved": moved, "meshes": {}}
    for sizes in MESHES:
        mesh = make_mesh(MeshConfig(*sizes))
        layout = Layout.of(params, mesh)
        sft, (setup, tx, p, arrays, logp) = run(graphdef, host_params, tokenizer, layout)
        rl = rl_update(setup, tx, p, arrays, logp_ref)
        q = sft[0]["layers"][0]["attn"]["q"][...]
        q_mu = optax.tree.get(sft[1], "mu")["layers"][0]["attn"]["q"][...]
        up = rl[0]["layers"][0]["mlp"]["up"][...]
        out["meshes"]["x".join(map(str, sizes))] = {
            "sft": compare(summary(sft), sft_ref),
            "rl": compare(summary(rl), rl_ref),
            "logprobs": float(np.max(np.abs(logp - logp_ref))),
            "q_global": list(q.shape),
            "q_shards": shard_shapes(q),
            "q_mu_shards": shard_shapes(q_mu),
            "up_shards": shard_shapes(up),
            "num_devices": len(q.sharding.device_set),
        }
    out["errors"] = refusals(graphdef, params, tokenizer)
    print(json.dumps(out))


def refusals(graphdef, params, tokenizer) -> dict[str, str]:
    """The messages of batches that do not split over a mesh's data x fsdp devices."""
    layout = Layout.of(params, make_mesh(MeshConfig(8, 1, 1)))
    errors = {}
    try:
        RLSetup.create(
            dataclasses.replace(RL, micro_batch_size=4), graphdef, tokenizer, params, layout
        )
    except ValueError as e:
        errors["micro_batch"] = str(e)
    try:
        process_rows(layout.mesh, 12)
    except MeshError as e:
        errors["rows"] = str(e)
    return errors


if __name__ == "__main__":
    main(sys.argv[1])
