"""Devices, mesh and shardings.

Data parallel by default: the batch is sharded over the `data` axis of a 1-D mesh of
every device of every process, parameters are replicated. Under `jax.jit`, reductions over
the batch (the loss, BatchNorm statistics, metrics) are over the global batch.
"""
import os

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from imgrec.errors import UserError


def initialize(cfg):
  """Starts multi-process JAX when configured (cfg = config.parallel), or on a TPU pod slice."""
  if cfg.coordinator_address:
    if cfg.num_processes <= 0 or cfg.process_id < 0:
      raise UserError("parallel.coordinator_address needs parallel.num_processes and parallel.process_id")
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                               num_processes=cfg.num_processes, process_id=cfg.process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()  # multi-host TPU VM: everything is discovered


def make_mesh():
  # Auto axes: jit places the computation from the in/out shardings we give it.
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_batch(global_batch, what="batch_size"):
  n = jax.device_count()
  if global_batch % n:
    raise UserError(f"{what} {global_batch} is not divisible by the {n} devices; "
                    f"use a multiple of {n}, e.g. {max(n, global_batch // n * n)}")
