"""Run with 8 simulated CPU devices: greedy generation on several meshes vs one device.

Prints one JSON object: per mesh, whether the tokens match and the per-device shard shapes.
Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice.sample_on_meshes DIR
"""

import json
import sys

import jax
import numpy as np

import jaxthink
from jaxthink.sharding import MeshConfig, MeshError, check_model_fits, make_mesh

MESHES = [(8, 1, 1), (2, 2, 2), (1, 1, 8), (1, 4, 2)]
QUESTIONS = ["12+7", "4821+967", "347*26"]


def main(path: str) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    model, tokenizer, cfg = jaxthink.load(path)
    gen = lambda m: jaxthink.generate(m, tokenizer, QUESTIONS, "think_budget=6", max_new_tokens=24)
    reference = [g.token_ids for g in gen(model)]
    out = {"reference": reference, "meshes": {}}
    for sizes in MESHES:
        mesh = make_mesh(MeshConfig(*sizes))
        sharded, _, _ = jaxthink.load(path, mesh=mesh)
        k = sharded.layers[0].attn.k[...]
        up = sharded.layers[0].mlp.up[...]
        out["meshes"]["x".join(map(str, sizes))] = {
            "tokens": [g.token_ids for g in gen(sharded)],
            "k_global": list(k.shape),
            "k_shards": sorted({tuple(s.data.shape) for s in k.addressable_shards}),
            "up_shards": sorted({tuple(s.data.shape) for s in up.addressable_shards}),
            "num_devices": len(k.sharding.device_set),
        }
    # more samples than slots: rows that end take staged samples inside the sharded loop
    many, slots = QUESTIONS * 3, jaxthink.GenerateConfig(max_new_tokens=24, slots=4)
    stop = [tokenizer.convert_tokens_to_ids("J")]  # ends these rows at 24, 14 and 6 tokens
    flowing = lambda m, cfg: jaxthink.generate(
        m, tokenizer, many, "think_budget=6", cfg, stop_tokens=stop
    )
    sharded, _, _ = jaxthink.load(path, mesh=make_mesh(MeshConfig(2, 2, 2)))
    out["staged"] = {
        "alone": [g.token_ids for g in flowing(model, slots.replace(slots=len(many)))],
        "mesh": [g.token_ids for g in flowing(sharded, slots)],
    }
    errors = {}
    for sizes in [(3, 1, 1), (2, 2, 3), (-1, -1, 2)]:
        try:
            make_mesh(MeshConfig(*sizes))
        except MeshError as e:
            errors["x".join(map(str, sizes))] = str(e)
    try:
        check_model_fits(
            make_mesh(MeshConfig(1, 1, 8)), cfg.__class__(**{**cfg.__dict__, "num_kv_heads": 2})
        )
    except MeshError as e:
        errors["kv_heads"] = str(e)
    out["errors"] = errors
    print(json.dumps(out, default=lambda x: np.asarray(x).tolist()))


if __name__ == "__main__":
    main(sys.argv[1])
