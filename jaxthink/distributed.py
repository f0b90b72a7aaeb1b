"""Multi-host runs: JAX's own multi-controller runtime, and the rows each process feeds.

Every process runs the same program on its own devices; `join` calls
`jax.distributed.initialize` (once, before any device is used) when the run asks for it. Then:
- a batch split over the mesh's data x fsdp axes is assembled from each process's own rows
  (`global_batch`, with `jax.make_array_from_process_local_data`): `process_rows` says which rows
  of the global batch a process's devices hold, and `data_shard` which share of the data stream
  it reads - the split is a function of the mesh alone, so it is the same on every run;
- `to_host` copies arrays to host memory, gathering from the other processes what lives on
  their devices (a collective: every process calls it together);
- only the main process (0) writes logs, plots and exported models (`is_main`).
One process without a mesh is the ordinary single-device run: every function here is then a no-op.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxthink.sharding import BATCH, MeshError, batch_size_multiple

JOIN = ("auto", "yes", "no")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """When and how this process joins a multi-host run.

    `initialize`: "auto" joins when `coordinator` is set here, or the environment names one
    (JAX_COORDINATOR_ADDRESS, JAX's own variable; or a multi-host TPU slice's
    TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS); "yes" always joins, leaving what is
    not given here to JAX's cluster detection (Cloud TPU pod slices, Slurm, Open MPI,
    Kubernetes); "no" never joins. `coordinator` is "host:port" of process 0, and then
    `num_processes` and `process_id` (0 .. num_processes - 1) say who this process is.
    """

    initialize: str = "auto"
    coordinator: str = ""
    num_processes: int = 0  # 0: from the cluster
    process_id: int = -1  # -1: from the cluster

    def __post_init__(self):
        if self.initialize not in JOIN:
            raise ValueError(
                f"distributed.initialize {self.initialize!r}; accepted: {', '.join(JOIN)}"
            )
        if self.num_processes < 0 or self.process_id < -1:
            raise ValueError(
                f"distributed.num_processes={self.num_processes}, process_id={self.process_id}: "
                "num_processes must be >= 1 (0: from the cluster), process_id in "
                "0 .. num_processes - 1 (-1: from the cluster)"
            )
        if self.num_processes and self.process_id >= self.num_processes:
            raise ValueError(
                f"distributed.process_id={self.process_id} is not below "
                f"num_processes={self.num_processes}; accepted: 0 .. {self.num_processes - 1}"
            )
        if self.coordinator:
            self._check_coordinator()
        elif (self.num_processes or self.process_id >= 0) and self.initialize != "yes":
            raise ValueError(
                "distributed.num_processes / process_id are set without distributed.coordinator; "
                "give the coordinator's host:port too, or initialize: yes to let JAX's cluster "
                "detection find it"
            )

    def _check_coordinator(self) -> None:
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"distributed.coordinator {self.coordinator!r}: expected host:port of process 0 "
                "(e.g. 10.0.0.2:8476), port 1 .. 65535"
            )
        if self.initialize == "no":
            raise ValueError(
                "distributed.initialize is 'no' but distributed.coordinator is set; drop one"
            )
        if self.num_processes < 1 or self.process_id < 0:
            raise ValueError(
                "distributed.coordinator is set, so distributed.num_processes (>= 1) and "
                "distributed.process_id (0 .. num_processes - 1) are needed too; got "
                f"num_processes={self.num_processes}, process_id={self.process_id}"
            )


def _environment_asks() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return bool(
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS")
        or "," in hosts
    )


def join(cfg: DistributedConfig) -> bool:
    """Joins the multi-host run `cfg` asks for; True if this process is part of one.

    Call it first: `jax.distributed.initialize` refuses once any device has been used.
    Joining twice is harmless (the second call finds the runtime up).
    """
    if jax.distributed.is_initialized():
        return True
    wanted = cfg.initialize == "yes" or (
        cfg.initialize == "auto" and (bool(cfg.coordinator) or _environment_asks())
    )
    if not wanted:
        return False
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator or None,
        num_processes=cfg.num_processes or None,
        process_id=cfg.process_id if cfg.process_id >= 0 else None,
    )
    return True


def is_main() -> bool:
    """Process 0: the one that writes logs, plots and exports."""
    return jax.process_index() == 0


def main_only(log):
    """`log` on the main process, a no-op on the others."""
    return log if is_main() else (lambda *args, **kwargs: None)


def process_rows(mesh: Mesh, rows: int) -> slice:
    """Rows [start, stop) of a global batch of `rows`, split over data x fsdp, that this
    process's devices hold (all of them when every process spans the whole batch axes)."""
    multiple = batch_size_multiple(mesh)
    if rows % multiple:
        raise MeshError(
            f"a batch of {rows} rows does not split over the mesh's data x fsdp = {multiple} "
            f"devices; use a multiple of {multiple}"
        )
    held = NamedSharding(mesh, PartitionSpec(BATCH)).addressable_devices_indices_map((rows,))
    spans = sorted(
        {(s[0].start or 0, rows if s[0].stop is None else s[0].stop) for s in held.values()}
    )
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise MeshError(
            f"process {jax.process_index()} holds rows {spans} of the batch, not one block; "
            "build the mesh over jax.devices() in order (make_mesh does) so each process's "
            "devices are neighbours on data x fsdp"
        )
    return slice(start, stop)


def data_shard(mesh: Mesh | None, rows: int) -> tuple[int, int]:
    """(index, count): this process reads share `index` of `count` equal shares of the data.

    Processes whose devices hold the same rows read the same share; with no mesh, or one
    process, it is (0, 1): the whole stream."""
    if mesh is None:
        return 0, 1
    held = process_rows(mesh, rows)
    size = held.stop - held.start
    return held.start // size, rows // size


def batch_spec(ndim: int, axis: int = 0) -> PartitionSpec:
    """Axis `axis` over data x fsdp, the rest replicated."""
    return PartitionSpec(*([None] * axis), BATCH, *([None] * (ndim - axis - 1)))


def global_batch(mesh: Mesh, local, rows: int, axis: int = 0):
    """The global batch (jax.Arrays over data x fsdp on `axis`) of `rows` rows, assembled from
    this process's rows `local` (a pytree of arrays: the `process_rows` of the batch)."""

    def one(x):
        x = np.asarray(x)
        shape = (*x.shape[:axis], rows, *x.shape[axis + 1 :])
        sharding = NamedSharding(mesh, batch_spec(x.ndim, axis))
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(one, local)


def local_rows(mesh: Mesh, arrays, axis: int = 0):
    """This process's rows of host arrays that every process holds whole."""

    def one(x):
        held = process_rows(mesh, x.shape[axis])
        return x[(slice(None),) * axis + (held,)]

    return jax.tree.map(one, arrays)


def _spans_processes(x) -> bool:
    return isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)


def to_host(tree):
    """Host (numpy) copies of `tree`'s arrays on this process. An array that spans other
    processes' devices is gathered from them: every process must call this together."""
    if not any(_spans_processes(x) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)  # one batched transfer

    def one(x):
        if _spans_processes(x):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)
