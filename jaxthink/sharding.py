"""Meshes and the rules that map the parameters' logical axes onto them.

A mesh has three axes: `data` (batch), `fsdp` (batch, and parameters while training) and `tensor`
(heads, kv heads, MLP and vocabulary). Training shards weights with FSDP + tensor parallelism;
sampling drops FSDP on weights - decoding is memory-bound, so it moves activations, not weights -
and shards the KV cache over kv heads on `tensor`, then batch on `data` x `fsdp`.
A single CPU device is the 1x1x1 mesh: every function here then changes nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxthink.models.config import ModelConfig

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the mesh axes a batch is split over

# logical axis -> mesh axis (None: replicated)
TRAIN_RULES = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
}
SAMPLE_RULES = {**TRAIN_RULES, "embed": None}


class MeshError(ValueError):
    """A mesh that does not fit the devices or the model."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Axis sizes; -1 (at most one) takes whatever the devices leave."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise MeshError(f"mesh {self}: sizes must be positive, with at most one -1 (inferred)")


def _factorizations(n: int) -> list[tuple[int, int, int]]:
    return [
        (d, f, n // (d * f))
        for d, f in itertools.product(range(1, n + 1), repeat=2)
        if n % (d * f) == 0
    ]


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all), sizes checked."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise MeshError(_mismatch(cfg, known, n))
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise MeshError(_mismatch(cfg, math.prod(sizes), n))
    return Mesh(np.array(devices).reshape(sizes), AXES)


def _mismatch(cfg: MeshConfig, product: int, n: int) -> str:
    wanted = (cfg.data, cfg.fsdp, cfg.tensor)
    near = sorted(
        _factorizations(n), key=lambda f: sum(abs(a - b) for a, b in zip(f, wanted) if b != -1)
    )[:3]
    choices = ", ".join(f"data={d} fsdp={f} tensor={t}" for d, f, t in near)
    return (
        f"mesh data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} needs {product} devices "
        f"(or a divisor of {n}), but there are {n}; nearest valid: {choices}"
    )


def check_model_fits(mesh: Mesh, cfg: ModelConfig) -> None:
    """The tensor axis must divide the kv heads (and so the heads): refuse, naming valid sizes."""
    tensor = mesh.shape["tensor"]
    if cfg.num_kv_heads % tensor:
        valid = [t for t in range(1, cfg.num_kv_heads + 1) if cfg.num_kv_heads % t == 0]
        raise MeshError(
            f"tensor={tensor} does not divide num_key_value_heads={cfg.num_kv_heads}; "
            f"valid tensor sizes for this model: {', '.join(map(str, valid))}"
        )


def spec_for(names: tuple, shape: tuple, mesh: Mesh, rules: dict) -> PartitionSpec:
    """PartitionSpec of one parameter; a dimension its mesh axis does not divide is replicated."""
    axes = []
    for name, size in zip(names, shape, strict=True):
        axis = rules.get(name)
        axes.append(axis if axis is not None and size % mesh.shape[axis] == 0 else None)
    return PartitionSpec(*axes)


def param_sharding(param: nnx.Variable, mesh: Mesh, rules: dict) -> NamedSharding:
    names = param.get_metadata().get("out_sharding") or (None,) * len(param.shape)
    return NamedSharding(mesh, spec_for(tuple(names), tuple(param.shape), mesh, rules))


def param_shardings(model, mesh: Mesh, rules: dict):
    """A pytree like `nnx.split(model)[1]` holding each parameter's NamedSharding."""
    _, state = nnx.split(model)
    return jax.tree.map(
        lambda v: param_sharding(v, mesh, rules),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def placer(mesh: Mesh, rules: dict):
    """A `place(path, array)` for `load_params`: each tensor straight onto its sharding."""

    def place(array: np.ndarray, param: nnx.Variable) -> jax.Array:
        return jax.device_put(array, param_sharding(param, mesh, rules))

    return place


def mesh_of(params) -> Mesh | None:
    """The mesh the parameters live on (None on a single device): generation follows the weights."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    return mesh if isinstance(mesh, Mesh) and mesh.size > 1 else None


def batch_size_multiple(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading axis over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH, *([None] * (ndim - 1))))


def constrain_cache(cache, mesh: Mesh | None):
    """KV cache: its (row, kv head) axis on data x fsdp x tensor (rows on data x fsdp, each row's
    kv heads on tensor); per-row bookkeeping on batch."""
    if mesh is None:
        return cache
    kv = NamedSharding(mesh, PartitionSpec((*BATCH, "tensor"), None, None))
    return cache.replace(
        k=tuple(jax.lax.with_sharding_constraint(x, kv) for x in cache.k),
        v=tuple(jax.lax.with_sharding_constraint(x, kv) for x in cache.v),
        valid=jax.lax.with_sharding_constraint(cache.valid, batch_sharding(mesh, 2)),
        index=jax.lax.with_sharding_constraint(cache.index, batch_sharding(mesh, 1)),
        pos=jax.lax.with_sharding_constraint(cache.pos, batch_sharding(mesh, 1)),
    )
