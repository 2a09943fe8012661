"""Data parallelism: the ('data',) mesh, shardings, multi-host start-up and global batches.

Every device holds a full copy of the parameters (replicated NamedSharding); the global batch is split
over all devices of all hosts along its first axis. `jax.jit` inserts the gradient all-reduce because the
updated parameters are pinned to the replicated sharding. Each host feeds only its own rows
(`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def multi_process(coordinator: str | None) -> bool:
    """Whether this run is one of several processes: an explicit coordinator or a multi-task SLURM job."""
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    return coordinator is not None or slurm


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start multi-host JAX when asked to (explicit coordinator) or under a multi-task SLURM job.

    Returns True when jax.distributed was initialised. CPU collectives use gloo, so two processes on
    one machine (or CPU-only hosts) can train together; GPU collectives are unaffected by that setting.
    """
    if not multi_process(coordinator):
        if num_processes not in (None, 1):
            raise ValueError("--num_processes > 1 needs --coordinator host:port (or a SLURM job)")
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None:
        jax.distributed.initialize()  # SLURM: coordinator, process count and id come from the environment
    else:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator needs --num_processes and --process_id")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    return True


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def default_cpu_devices(batch_size: int, cores: int) -> int:
    """How many XLA devices a CPU-only training run splits the host into when --cpu_devices is not given:
    the largest divisor of the batch that is at most the number of cores.

    One XLA CPU device keeps about 1.3 of 2 cores busy on the conv-heavy train step; two devices, each
    running its half of the batch, make the demo's step 1.5-1.7x faster on 2 cores (0.46-0.50 -> 0.28-0.30 s,
    benchmarks/train_step.py, docs/training.md). More devices than cores measured slower.
    """
    if batch_size < 1 or cores < 1:
        raise ValueError(f"batch_size and cores must be >= 1, got {batch_size} and {cores}")
    return max(n for n in range(1, min(batch_size, cores) + 1) if batch_size % n == 0)


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Split the leading (batch) axis over the 'data' axis."""
    return NamedSharding(mesh, P("data"))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f"data.batch_size {global_batch} is not divisible by the {n} devices of the data mesh; "
            f"use a multiple of {n}"
        )


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (identical on every host) -> global arrays with `sharding` (replicated)."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's rows of the batch -> global arrays split over the mesh (host order = row order)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def local_copy(tree: Any) -> Any:
    """One addressable copy of replicated global arrays, on this host's first device (for host-local
    evaluation and for saving)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def host_tree(tree: Any) -> Any:
    """Replicated global arrays -> numpy copies on this host."""
    return jax.tree.map(np.asarray, local_copy(tree))
