"""Training on a mesh: where a run's parameters, optimizer state and batches live.

    layout = Layout.of(params, make_mesh(cfg.mesh))       # params already on TRAIN_RULES
    step = jax.jit(fn, in_shardings=(layout.params(), layout.opt_state(tx), layout.batch(...)),
                   out_shardings=(layout.params(), layout.opt_state(tx), layout.replicated))

Parameters follow `TRAIN_RULES` (FSDP over `embed`, tensor parallelism over heads, kv heads, MLP
and vocabulary). Every optimizer-state leaf that mirrors a parameter (Adam's moments) takes that
parameter's sharding; the rest (step counts, schedule state) is replicated. Batch rows are split
over data x fsdp. A `Layout` is hashable, so compiled steps are cached by it. A run whose mesh
is a single device has no layout (None): it runs exactly as before meshes existed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxthink.distributed import batch_spec
from jaxthink.sharding import TRAIN_RULES, MeshConfig, make_mesh, spec_for


def run_mesh(cfg: MeshConfig) -> Mesh | None:
    """The run's mesh over all devices (of all processes); None for a single device."""
    mesh = make_mesh(cfg)
    return None if mesh.size == 1 else mesh


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shardings of one model's training state on `mesh` under logical-axis `rules`."""

    mesh: Mesh
    treedef: Any  # structure of the parameter pytree (an nnx.State)
    leaves: tuple  # per parameter: (shape, dtype, logical axis names)
    rules: tuple  # sorted (logical axis, mesh axis) pairs

    @classmethod
    def of(cls, params, mesh: Mesh, rules: dict = TRAIN_RULES) -> Layout:
        variables = jax.tree.leaves(params, is_leaf=_is_variable)
        leaves = tuple(
            (
                tuple(v.shape),
                str(v.dtype),
                tuple(v.get_metadata().get("out_sharding") or (None,) * len(v.shape)),
            )
            for v in variables
        )
        return cls(mesh, jax.tree.structure(params), leaves, tuple(sorted(rules.items())))

    def with_rules(self, rules: dict) -> Layout:
        return dataclasses.replace(self, rules=tuple(sorted(rules.items())))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def params(self):
        """A pytree like the parameters holding each one's NamedSharding."""
        rules = dict(self.rules)
        specs = [spec_for(names, shape, self.mesh, rules) for shape, _, names in self.leaves]
        return self.treedef.unflatten([NamedSharding(self.mesh, s) for s in specs])

    def abstract_params(self):
        shardings = jax.tree.leaves(self.params())
        return self.treedef.unflatten(
            [
                jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
                for (shape, dtype, _), sharding in zip(self.leaves, shardings)
            ]
        )

    def opt_state(self, tx: optax.GradientTransformation):
        """Shardings of `tx`'s state: a parameter's moments like the parameter, the rest
        replicated."""
        abstract = jax.eval_shape(tx.init, self.abstract_params())
        return optax.tree_map_params(
            tx,
            lambda _, sharding: sharding,
            abstract,
            self.params(),
            transform_non_params=lambda _: self.replicated,
        )

    def batch(self, tree, axis: int = 0):
        """Shardings of a batch pytree (arrays or shape structs), `axis` over data x fsdp."""
        return jax.tree.map(lambda x: NamedSharding(self.mesh, batch_spec(x.ndim, axis)), tree)

    def place(self, params):
        """`params` moved onto this layout (each to its sharding)."""
        return jax.device_put(params, self.params())

    def init_opt_state(self, tx: optax.GradientTransformation, params):
        """`tx.init(params)` created directly on its shardings."""
        return jax.jit(tx.init, out_shardings=self.opt_state(tx))(params)
