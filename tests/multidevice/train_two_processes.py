"""Two JAX processes on one machine (2 CPU devices each) joined by `jax.distributed`, and a
third, single-process check of what they wrote.

    python -m tests.multidevice.train_two_processes worker I PORT DIR   (I = 0, 1, together)
    python -m tests.multidevice.train_two_processes check DIR           (afterwards)

The workers train on the mesh data=1 x fsdp=2 x tensor=2: FSDP across the two processes,
tensor parallelism inside each. Each reads only its own share of the SFT data (`data_shard`),
takes one SFT step on the global batch assembled from both shares, saves a checkpoint (each
process writes its shards and its data state), exports the model (process 0 writes it), and
runs one on-policy round (rollout on the mesh, log-probs, DeGRPO update). The check repeats
both in one process on one device - the SFT step on the two shares concatenated - restores the
checkpoint and reads the export, and prints one JSON object of the differences.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

import jaxthink
from jaxthink import distributed
from jaxthink.data.arithmetic import generate_problems
from jaxthink.distributed import DistributedConfig, data_shard, global_batch, to_host
from jaxthink.rl.loop import RLSetup, rl_step
from jaxthink.runs.checkpoints import Checkpointer, export_model
from jaxthink.runs.mesh import Layout
from jaxthink.sft.loop import compiled_sft_step
from jaxthink.sharding import MeshConfig, make_mesh
from tests.multidevice.tiny_training import (
    OPTIM,
    RL,
    SFT_ROWS,
    flat,
    max_diff,
    sft_batch,
    tiny_model,
)


def sft_step(graphdef, params, batch, layout=None):
    tx, step = compiled_sft_step(graphdef, OPTIM, 10, layout)
    opt = layout.init_opt_state(tx, params) if layout else tx.init(params)
    return step(params, opt, batch)


def rl_round(graphdef, tokenizer, place, host_params, layout=None):
    """(parameters, metrics) after one on-policy round from `host_params`: rollout (one sampler
    program over the whole mesh), log-probs, one DeGRPO update."""
    setup, tx = RLSetup.create(RL, graphdef, tokenizer, place(host_params), layout)
    params = place(host_params)
    opt = layout.init_opt_state(tx, params) if layout else tx.init(params)
    records = generate_problems(RL.rollout.prompts_per_step, (1,), seed=5)
    params, _, metrics = rl_step(setup, params, opt, records, jax.random.key(3))
    return params, metrics


def worker(process_id: int, port: int, directory: Path) -> None:
    cfg = DistributedConfig(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert distributed.join(cfg)
    assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))
    graphdef, params, tokenizer = tiny_model(directory / f"model{process_id}", mesh)
    layout = Layout.of(params, mesh)
    host_params = to_host(params)

    shard = data_shard(mesh, SFT_ROWS)
    local = sft_batch(tokenizer, shard)
    np.savez(directory / f"batch{shard[0]}-of-{shard[1]}.npz", **local)
    sft_params, sft_opt, _ = sft_step(graphdef, params, global_batch(mesh, local, SFT_ROWS), layout)

    key = jax.device_put(jax.random.key_data(jax.random.key(7)), layout.replicated)
    ckpt = Checkpointer(directory / "checkpoints", save_every=1)
    ckpt.save(1, {"params": sft_params, "opt_state": sft_opt, "rng": key}, {"shard": shard})
    ckpt.wait()
    ckpt.close()
    export_model(graphdef, sft_params, tokenizer, directory / "hf")

    rl_params, rl_metrics = rl_round(graphdef, tokenizer, layout.place, host_params, layout)
    q = sft_params["layers"][0]["attn"]["q"][...]
    results = to_host({"sft": sft_params, "sft_mu": optax.tree.get(sft_opt, "mu"), "rl": rl_params})
    if distributed.is_main():
        np.savez(directory / "results.npz", **flat(results))
        (directory / "rl_metrics.json").write_text(json.dumps(rl_metrics))
        shards = sorted({tuple(s.data.shape) for s in q.addressable_shards})
        (directory / "shards.json").write_text(json.dumps({"q": shards, "q_global": q.shape}))


def check(directory: Path) -> None:
    assert jax.process_count() == 1 and len(jax.devices()) == 1
    graphdef, params, tokenizer = tiny_model(directory / "model_check")
    host_params = to_host(params)
    shares = [dict(np.load(directory / f"batch{i}-of-2.npz")) for i in range(2)]
    batch = {k: np.concatenate([s[k] for s in shares]) for k in shares[0]}
    sft_params, sft_opt, _ = sft_step(graphdef, jax.device_put(host_params), batch)
    rl_params, rl_metrics = rl_round(graphdef, tokenizer, jax.device_put, host_params)
    ours = flat(to_host({"sft": sft_params, "sft_mu": optax.tree.get(sft_opt, "mu")}))
    ours.update(flat({"rl": to_host(rl_params)}))
    theirs = dict(np.load(directory / "results.npz"))
    their_metrics = json.loads((directory / "rl_metrics.json").read_text())

    like = {
        "params": sft_params,
        "opt_state": sft_opt,
        "rng": jax.random.key_data(jax.random.key(0)),
    }
    restored, data_state = Checkpointer(directory / "checkpoints", save_every=1).restore(1, like)
    restored = flat(
        to_host({"sft": restored["params"], "sft_mu": optax.tree.get(restored["opt_state"], "mu")})
    )
    data_dir = directory / "checkpoints" / "1" / "data_per_process"
    data_states = {p.name: json.loads(p.read_text()) for p in sorted(data_dir.glob("*.json"))}
    exported, _, _ = jaxthink.load(directory / "hf", tokenizer=False)
    exported = flat({"sft": to_host(nnx.split(exported)[1])})
    pick = lambda d, prefix: {k: v for k, v in d.items() if k.startswith(prefix)}
    print(
        json.dumps(
            {
                "sft": max_diff(pick(ours, "['sft']"), pick(theirs, "['sft']")),
                "sft_mu": max_diff(pick(ours, "['sft_mu']"), pick(theirs, "['sft_mu']")),
                "rl": max_diff(pick(ours, "['rl']"), pick(theirs, "['rl']")),
                "rl_metrics": {
                    k: [rl_metrics[k], their_metrics[k]] for k in ("reward", "think_ratio", "loss")
                },
                "moved": max_diff(pick(ours, "['sft']"), flat({"sft": host_params})),
                "rl_moved": max_diff(pick(ours, "['rl']"), flat({"rl": host_params})),
                "restored": max_diff(restored, {k: theirs[k] for k in restored}),
                "data_state": data_state,
                "data_states": data_states,
                "exported": max_diff(exported, pick(theirs, "['sft']")),
                "shares_differ": bool((shares[0]["tokens"] != shares[1]["tokens"]).any()),
                **json.loads((directory / "shards.json").read_text()),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        check(Path(sys.argv[2]))
